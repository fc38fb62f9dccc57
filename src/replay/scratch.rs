//! The scratch server: a throwaway PostgreSQL that rebuilds run in.
//! Compaction loads a snapshot and replays segments into one, and so does a
//! `restore --where` into live tables; the quickstart, the bench and the
//! tests start one as their source. initdb into a temp dir,
//! wal_level = logical, a free port on 127.0.0.1.
//!
//! PostgreSQL refuses to run as root; as root, initdb and the server run as
//! the `postgres` user on a directory that user owns. The server gets
//! SIGKILL when the process that started it exits, so no run leaves one behind.

use crate::base::exit::ExitCode;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// The superuser's password in every throwaway cluster (host connections use scram-sha-256).
pub const SUPERUSER_PASSWORD: &str = "tidemark-throwaway-pw";

pub struct ScratchServer {
    root: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    postmaster: Option<Child>,
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
    /// Starts a new cluster with extra `postgresql.conf` settings.
    pub fn start(settings: &[(&str, &str)]) -> Result<ScratchServer, ScratchError> {
        let bin = pg_bin_dir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_ids()?)
        } else {
            None
        };
        remove_stale_clusters();
        let root = tempfile::Builder::new().prefix("tidemark-pg-").tempdir()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))?;
        }
        let mut cluster = ScratchServer {
            root,
            bin,
            port: 0,
            owner,
            postmaster: None,
        };
        let pwfile = cluster.root.path().join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        cluster.chown(&pwfile)?;
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            Command::new(cluster.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--no-locale", "--no-sync"]),
        )?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(conf, "\n# tidemark throwaway cluster")?;
        writeln!(conf, "listen_addresses = '127.0.0.1'")?;
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

    /// A URL for `user` (with `password`) on database `db`, over TCP.
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// A superuser URL on database `db`.
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", SUPERUSER_PASSWORD, db)
    }

    /// Runs SQL through psql as the superuser and returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ScratchError> {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
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
        let log_path = self.root.path().join("server.log");
        let mut last_error = String::new();
        for _ in 0..5 {
            self.port = free_port()?;
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
            let child = crate::child::spawn_tied_to_process(command)?;
            self.postmaster = Some(child);
            if self.wait_ready(Duration::from_secs(60)) {
                return Ok(());
            }
            if let Some(mut child) = self.postmaster.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            last_error = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        Err(ScratchError::Command {
            what: "starting postgres".into(),
            detail: last_error.lines().last().unwrap_or("no log").to_string(),
        })
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.postmaster.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p"])
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
        if let Some(mut child) = self.postmaster.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
