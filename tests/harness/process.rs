//! tidemark as the tests run it: one command to completion, or a `tidemark capture` to stop or kill.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{s3_env, wait_for, Wait};

/// Runs the tidemark binary to completion.
pub fn tidemark(args: &[&str], more: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .args(more)
        .env("RUST_LOG", "warn")
        .envs(s3_env())
        .output()
        .expect("running tidemark")
}

/// A running `tidemark capture`.
pub struct Capture {
    pub child: Child,
    pid: u32,
    /// strace, attached to slow its fsyncs down.
    tracer: Option<Child>,
    /// When it was started, by the wall clock the server shares.
    pub started: std::time::SystemTime,
    pub stderr: PathBuf,
}

impl Capture {
    pub fn start(config: &Path) -> Capture {
        Capture::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Capture {
        Capture::spawn(config, env)
    }

    /// Starts capture with every fdatasync held for `delay` before it runs
    /// (strace's fault injection), so the log's written end runs visibly
    /// ahead of its fsynced end.
    pub fn start_with_slow_fsync(config: &Path, delay: Duration) -> Capture {
        let mut capture = Capture::spawn(config, &[]);
        // strace attaches to the running capture (rather than starting it), so
        // it can let go again before the stop: a SIGTERM that has to pass
        // strace's delay injection was seen lost under load.
        let inject = format!("inject=fdatasync:delay_enter={}", delay.as_micros());
        let tracer = Command::new("strace")
            .args([
                "-f",
                "-e",
                "trace=fdatasync",
                "-e",
                &inject,
                "-o",
                "/dev/null",
                "-p",
            ])
            .arg(capture.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting strace (scripts/setup.sh --dev installs it)");
        let status = format!("/proc/{}/status", capture.pid);
        wait_for(Duration::from_secs(10), "strace to attach", || {
            std::fs::read_to_string(&status)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("TracerPid:"))
                        .map(|v| v.trim() != "0")
                })
                .unwrap_or(false)
        });
        capture.tracer = Some(tracer);
        capture
    }

    fn spawn(config: &Path, env: &[(&str, &str)]) -> Capture {
        let stderr = config.with_extension(format!(
            "capture-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let stderr = unique(stderr);
        let file = std::fs::File::create(&stderr).unwrap();
        let started = std::time::SystemTime::now();
        let child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["capture", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting tidemark capture");
        let pid = child.id();
        Capture {
            child,
            pid,
            tracer: None,
            started,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGTERM and waits for the exit code. Under strace a signal that
    /// lands while a delayed syscall is held can be lost, so it is said again
    /// each second until capture has heard it (a second SIGTERM is harmless).
    pub fn stop(mut self) -> i32 {
        // On a timeout the panic names the event and the capture's own account of it.
        let tail: String = {
            let logs = self.logs();
            let start = logs.len().saturating_sub(3000);
            logs.get(start..).unwrap_or_default().to_string()
        };
        let what = format!(
            "capture (pid {}) to stop; its log when asked:\n{tail}",
            self.pid
        );
        let mut wait = Wait::new(Duration::from_secs(60), &what);
        if let Some(mut tracer) = self.tracer.take() {
            // Attached with -p, strace detaches on SIGINT and leaves capture running.
            signal(tracer.id(), libc::SIGINT);
            let _ = tracer.wait();
        }
        loop {
            signal(self.pid, libc::SIGTERM);
            let resend = Instant::now() + Duration::from_secs(1);
            while Instant::now() < resend {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status.code().unwrap_or(-1);
                }
                std::thread::sleep(wait.next_pause());
            }
        }
    }

    /// SIGKILL: a crash at whatever instant this is.
    pub fn kill(mut self) {
        signal(self.pid, libc::SIGKILL);
        self.child.wait().unwrap();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Peak resident set size so far, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }
}

fn unique(path: PathBuf) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    path.with_extension(format!("{}.log", N.fetch_add(1, Ordering::Relaxed)))
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is a process this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Drop for Capture {
    /// A test that fails midway must not leave its capture running.
    fn drop(&mut self) {
        if let Some(mut tracer) = self.tracer.take() {
            let _ = tracer.kill();
            let _ = tracer.wait();
        }
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid, libc::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
