//! The scratch server: a throwaway PostgreSQL that rebuilds run in.
//! Compaction loads a snapshot and replays segments into one, and so does a
//! `restore --where` into live tables; the quickstart, the bench and the
//! tests start one as their source. initdb into a temp dir, wal_level = logical.
//!
//! It holds decrypted tables, so by default it is closed: it listens only on
//! a Unix socket in its own 0700 directory, where the local `trust` line lets
//! in only who can enter that directory (its owner, and root). It has no TCP
//! listener and no password. [`ScratchServer::start_listening`] adds a TCP
//! listener on 127.0.0.1 with a password made up for that cluster, for the
//! bench and the tests, which need a source reachable over TCP.
//!
//! PostgreSQL refuses to run as root; as root, initdb and the server run as
//! the `postgres` user on a directory that user owns. The server gets
//! SIGKILL when the process that started it exits, so no run leaves one behind.

use crate::base::exit::ExitCode;
use crate::pg::ConnInfo;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin; run scripts/setup.sh, or set TIDEMARK_PG_BIN")]
    NoBinaries,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ScratchError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ScratchError::NoBinaries => ExitCode::BadInput,
            ScratchError::Command { .. } | ScratchError::Io(_) => ExitCode::Failure,
        }
    }
}

pub struct ScratchServer {
    root: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The superuser's password for TCP connections; `None` when closed to TCP.
    password: Option<String>,
    owner: Option<(u32, u32)>,
    postmaster: Mutex<Option<Child>>,
}

/// How [`ScratchServer::restart`] stops the server, as `pg_ctl stop -m` names it.
#[derive(Clone, Copy, Debug)]
pub enum Shutdown {
    /// SIGINT: roll back sessions, checkpoint, stop.
    Fast,
    /// SIGQUIT: stop at once; the next start recovers from WAL, as after a crash.
    Immediate,
}

/// The PostgreSQL binary directory: `TIDEMARK_PG_BIN`, else the newest under /usr/lib/postgresql.
pub fn pg_bin_dir() -> Result<PathBuf, ScratchError> {
    if let Ok(dir) = std::env::var("TIDEMARK_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ScratchError::NoBinaries)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(ScratchError::NoBinaries)
}

impl ScratchServer {
    /// Starts a closed cluster (Unix socket only) with extra `postgresql.conf` settings.
    pub fn start(settings: &[(&str, &str)]) -> Result<ScratchServer, ScratchError> {
        ScratchServer::start_with(settings, false)
    }

    /// Starts a cluster that also listens on 127.0.0.1, with a made-up superuser password.
    pub fn start_listening(settings: &[(&str, &str)]) -> Result<ScratchServer, ScratchError> {
        ScratchServer::start_with(settings, true)
    }

    fn start_with(settings: &[(&str, &str)], tcp: bool) -> Result<ScratchServer, ScratchError> {
        let bin = pg_bin_dir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_ids()?)
        } else {
            None
        };
        remove_stale_clusters();
        let root = tempfile::Builder::new().prefix("tidemark-pg-").tempdir()?;
        // The socket lives here: only its owner (and root) may enter.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))?;
        }
        let mut cluster = ScratchServer {
            root,
            bin,
            port: 0,
            password: tcp.then(made_up_password).transpose()?,
            owner,
            postmaster: Mutex::new(None),
        };
        let data = cluster.data_dir();
        let mut initdb = Command::new(cluster.bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        // initdb reads the password from a file; it lives only until initdb is done.
        let pwfile = cluster.root.path().join("pwfile");
        if let Some(password) = &cluster.password {
            std::fs::write(&pwfile, password)?;
            cluster.chown(&pwfile)?;
            initdb.arg(format!("--pwfile={}", pwfile.display()));
        }
        let made = cluster.run("initdb", &mut initdb);
        let _ = std::fs::remove_file(&pwfile);
        made?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(conf, "\n# tidemark throwaway cluster")?;
        let listen = if tcp { "127.0.0.1" } else { "" };
        writeln!(conf, "listen_addresses = '{listen}'")?;
        writeln!(conf, "unix_socket_permissions = 0700")?;
        writeln!(
            conf,
            "unix_socket_directories = '{}'",
            cluster.root.path().display()
        )?;
        for (key, value) in [
            ("wal_level", "logical"),
            ("max_wal_senders", "40"),
            ("max_replication_slots", "40"),
            ("fsync", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "200"),
        ]
        .iter()
        .chain(settings)
        {
            writeln!(conf, "{key} = '{value}'")?;
        }
        drop(conf);
        cluster.launch()?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    /// The directory holding the server's Unix socket (0700).
    pub fn socket_dir(&self) -> &Path {
        self.root.path()
    }

    /// The superuser's TCP password, if the server listens on TCP.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A libpq string for the superuser on database `db`, over the Unix socket; no password.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host='{}' port={} user=postgres dbname='{db}'",
            self.socket_dir().display(),
            self.port
        )
    }

    /// The superuser on database `db`, over the Unix socket.
    pub fn conn_info(&self, db: &str) -> Result<ConnInfo, ScratchError> {
        ConnInfo::parse_with_env(&self.conninfo(db), &|_| None).map_err(|e| ScratchError::Command {
            what: "connecting to the scratch server".into(),
            detail: e.to_string(),
        })
    }

    /// A superuser connection string for database `db`: over TCP if the server listens, else the socket.
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(password) => self.url_as("postgres", password, db),
            None => self.conninfo(db),
        }
    }

    /// A TCP URL for `user` (with `password`) on database `db`, for a listening server.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL through psql as the superuser and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ScratchError> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()?;
        if !output.status.success() {
            return Err(ScratchError::Command {
                what: format!("psql -c {sql:?}"),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Adds a line at the top of pg_hba.conf and reloads.
    pub fn prepend_hba(&self, line: &str) -> Result<(), ScratchError> {
        let path = self.data_dir().join("pg_hba.conf");
        let current = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{line}\n{current}"))?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    fn chown(&self, path: &Path) -> Result<(), ScratchError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn as_owner<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command.current_dir(self.root.path())
    }

    fn run(&self, what: &str, command: &mut Command) -> Result<(), ScratchError> {
        let output = self.as_owner(command).output()?;
        if !output.status.success() {
            return Err(ScratchError::Command {
                what: what.to_string(),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Starts the postmaster on a free port, retrying if another process takes the port first.
    fn launch(&mut self) -> Result<(), ScratchError> {
        let mut last_error = String::new();
        for _ in 0..5 {
            self.port = free_port()?;
            match self.start_postmaster() {
                Ok(()) => return Ok(()),
                Err(detail) => last_error = detail,
            }
        }
        Err(ScratchError::Command {
            what: "starting postgres".into(),
            detail: last_error,
        })
    }

    /// Stops the server as `shutdown` says and starts it again on the same
    /// port; returns once it accepts connections (after recovery, if any).
    pub fn restart(&self, shutdown: Shutdown) -> Result<(), ScratchError> {
        let signal = match shutdown {
            Shutdown::Fast => libc::SIGINT,
            Shutdown::Immediate => libc::SIGQUIT,
        };
        if let Some(mut child) = self.child().take() {
            // SAFETY: kill only sends a signal to the postmaster this server started.
            unsafe { libc::kill(child.id() as i32, signal) };
            child.wait()?;
        }
        self.start_postmaster()
            .map_err(|detail| ScratchError::Command {
                what: "restarting postgres".into(),
                detail,
            })
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.postmaster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the postmaster on `self.port` and waits until it is ready; else the log's last line.
    fn start_postmaster(&self) -> Result<(), String> {
        let log_path = self.root.path().join("server.log");
        let spawned = (|| -> Result<Child, ScratchError> {
            let log = std::fs::File::create(&log_path)?;
            self.chown(&log_path)?;
            let mut command = Command::new(self.bin.join("postgres"));
            command
                .arg("-D")
                .arg(self.data_dir())
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            self.as_owner(&mut command);
            Ok(crate::child::spawn_tied_to_process(command)?)
        })()
        .map_err(|e| e.to_string())?;
        *self.child() = Some(spawned);
        if self.wait_ready(Duration::from_secs(60)) {
            return Ok(());
        }
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Err(log.lines().last().unwrap_or("no log").to_string())
    }

    fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child().as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h"])
                .arg(self.socket_dir())
                .arg("-p")
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A password for one cluster's life: 128 random bits.
fn made_up_password() -> Result<String, ScratchError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postgres_ids() -> Result<(u32, u32), ScratchError> {
    let id = |flag: &str| -> Result<u32, ScratchError> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| ScratchError::Command {
                what: "looking up the postgres user".into(),
                detail: "running as root needs a `postgres` user to run the server; run scripts/setup.sh".into(),
            })
    };
    Ok((id("-u")?, id("-g")?))
}

/// Removes throwaway cluster dirs in the temp dir whose server is gone (left by killed runs).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("tidemark-pg-") {
            continue;
        }
        let pid_file = entry.path().join("data").join("postmaster.pid");
        let alive = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
            // SAFETY: signal 0 only asks whether the pid exists; nothing is sent.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        // A dir being set up has no pid file yet; leave young ones alone.
        if !alive && age > Duration::from_secs(600) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
