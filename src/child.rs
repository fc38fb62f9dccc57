//! Helper processes (test servers) that never outlive tidemark.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;

/// Spawns `command` from a thread that lives as long as the process, with
/// PR_SET_PDEATHSIG: the child is killed when this process exits, however it exits.
/// (The signal fires when the spawning *thread* ends, hence the long-lived thread.)
pub fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: std::sync::OnceLock<
        mpsc::Sender<(Command, mpsc::Sender<std::io::Result<Child>>)>,
    > = std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Command, mpsc::Sender<std::io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("tidemark-cluster-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the cluster spawner thread");
        tx
    });
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed; prctl and errno are.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, result) = mpsc::channel();
    spawner
        .send((command, reply))
        .map_err(|_| std::io::Error::other("cluster spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| std::io::Error::other("cluster spawner thread is gone"))?
}
