//! The shared integration-test harness: one throwaway PostgreSQL cluster per
//! test binary, and a fresh database, slot, publication and log dir per test,
//! so tests in one binary run in parallel without seeing each other.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tidemark::replay::scratch::ScratchServer;

pub mod ledger;
pub mod proxy;
pub mod receivers;

/// The cluster shared by every test in this binary.
pub fn cluster() -> &'static ScratchServer {
    static CLUSTER: OnceLock<ScratchServer> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        ScratchServer::start_listening(&[("max_prepared_transactions", "10")])
            .expect("starting the throwaway PostgreSQL cluster")
    })
}

/// A test's own database and tidemark setup inside a cluster.
pub struct Fixture {
    pub cluster: &'static ScratchServer,
    pub db: String,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A new database with `schema` applied, in the binary's shared cluster.
    pub fn new(schema: &str) -> Fixture {
        Fixture::in_cluster(cluster(), schema)
    }

    pub fn in_cluster(cluster: &'static ScratchServer, schema: &str) -> Fixture {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let db = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        cluster
            .psql("postgres", &format!("CREATE DATABASE {db}"))
            .expect("creating the test database");
        if !schema.is_empty() {
            cluster.psql(&db, schema).expect("applying the test schema");
        }
        Fixture {
            cluster,
            db,
            dir: tempfile::tempdir().expect("creating the test dir"),
        }
    }

    pub fn url(&self) -> String {
        self.cluster.url(&self.db)
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// A local-directory archive of this test's own.
    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    pub fn archive_url(&self) -> String {
        format!("file://{}", self.archive_dir().display())
    }

    /// Writes a config watching `tables`; `extra` is appended as raw TOML.
    pub fn config(&self, tables: &[&str], extra: &str) -> PathBuf {
        self.config_with_url(&self.url(), tables, extra)
    }

    /// A config watching `tables` that archives into this test's local
    /// directory every 200 ms; `extra` is more of the `[archive]` section.
    pub fn config_with_archive(&self, tables: &[&str], extra: &str) -> PathBuf {
        let archive = format!(
            "\n[archive]\nurl = {:?}\nupload_interval = \"200ms\"\n{extra}",
            self.archive_url()
        );
        self.config(tables, &archive)
    }

    pub fn config_with_url(&self, url: &str, tables: &[&str], extra: &str) -> PathBuf {
        let path = self.dir.path().join("tidemark.toml");
        let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
        std::fs::write(
            &path,
            format!(
                "[source]\nurl = {url:?}\ntables = [{}]\npublication = \"pub_{db}\"\nslot = \"slot_{db}\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[log]\ndir = {:?}\n{extra}\n",
                tables.join(", "),
                self.log_dir().display().to_string(),
                db = self.db,
                port = free_port(),
            ),
        )
        .expect("writing the test config");
        path
    }

    /// The workload's ledger on the source: each committed transaction's xid and change count.
    pub fn ledger(&self) -> std::collections::BTreeMap<u64, u64> {
        self.psql("SELECT xid, changes FROM ledger")
            .lines()
            .map(|l| {
                let (xid, changes) = l.split_once('|').unwrap();
                (xid.parse().unwrap(), changes.parse().unwrap())
            })
            .collect()
    }

    pub fn slot(&self) -> String {
        format!("slot_{}", self.db)
    }

    pub fn psql(&self, sql: &str) -> String {
        self.cluster
            .psql(&self.db, sql)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The slot's confirmed_flush_lsn.
    pub fn confirmed_flush(&self) -> Option<tidemark::base::position::Lsn> {
        self.psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
            self.slot()
        ))
        .parse()
        .ok()
    }

    pub fn current_wal_lsn(&self) -> tidemark::base::position::Lsn {
        self.psql("SELECT pg_current_wal_lsn()")
            .parse()
            .expect("an LSN")
    }

    /// Waits until capture has confirmed everything written to the source so far.
    pub fn wait_caught_up(&self, limit: Duration) {
        // Abort records are not flushed, and walsenders send only flushed WAL:
        // committing a transaction with an xid flushes everything before it.
        self.psql("SELECT txid_current()");
        let target = self.current_wal_lsn();
        wait_for(limit, "capture to confirm the current WAL position", || {
            self.confirmed_flush().is_some_and(|c| c >= target)
        });
    }

    /// Starts `tidemark capture` and waits until it streams (the slot and publication exist).
    pub fn start_capture(&self, config: &Path) -> Capture {
        let capture = Capture::start(config);
        self.wait_streaming(&capture);
        capture
    }

    /// Waits until `capture` holds this test's slot and streams from it: a
    /// walsender that started after it did (not a killed predecessor's) is
    /// streaming the slot.
    pub fn wait_streaming(&self, capture: &Capture) {
        let pid = capture.pid();
        let since = capture
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        wait_for(Duration::from_secs(60), "capture to stream", || {
            self.psql(&format!(
                "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = '{}' AND r.state = 'streaming' AND r.backend_start >= to_timestamp({since})",
                self.slot()
            )) == "1"
                || capture_exited(pid)
        });
    }

    /// Waits until the archive at `config` lists a base snapshot (its restore window opens).
    pub fn wait_base_snapshot(&self, config: &Path) {
        wait_for(Duration::from_secs(60), "the base snapshot", || {
            archive_window_open(config)
        });
    }

    /// The md5 of every row of `table` in this test's database, in a fixed order.
    pub fn md5(&self, table: &str) -> String {
        self.psql(&table_md5_sql(table))
    }

    /// The `id` key of every change `tidemark log` shows, in order.
    pub fn logged_ids(&self, config: &Path) -> Vec<i64> {
        self.log_json(config, &[])
            .iter()
            .map(|l| l["key"]["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Runs `tidemark log --json` and parses each line.
    pub fn log_json(&self, config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
        let out = tidemark(
            &["log", "--config", config.to_str().unwrap(), "--json"],
            args,
        );
        assert!(
            out.status.success(),
            "tidemark log failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

/// SQL for the md5 of every row of `table`, in a fixed order: the one digest
/// the tests compare tables by.
pub fn table_md5_sql(table: &str) -> String {
    rows_md5_sql(table, "true")
}

/// The same digest over the rows of `table` (aliased `t`) that `filter` keeps.
pub fn rows_md5_sql(table: &str, filter: &str) -> String {
    format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t WHERE {filter}")
}

/// Whether `tidemark list` shows a restore window for the archive at `config`.
pub fn archive_window_open(config: &Path) -> bool {
    let out = tidemark(
        &["list", "--config", config.to_str().unwrap(), "--json"],
        &[],
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .is_ok_and(|list| !list["window"].is_null())
}

/// Whether the process `pid` has exited (so a wait for it to stream can stop).
fn capture_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metrics port a config written by `Fixture::config` uses.
pub fn metrics_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// GET /metrics from a capture, as text.
pub fn scrape(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, body)| body)
        .expect("reading /metrics")
}

/// GETs `path` from capture's HTTP server: the status code and the body; `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Every file below `root`, as paths relative to it, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Whether a `verify --json` report names `key` among its problems.
pub fn report_names(report: &serde_json::Value, key: &str) -> bool {
    report["problems"]
        .as_array()
        .is_some_and(|problems| problems.iter().any(|p| p["key"] == key))
}

/// The value of the first sample whose line starts with `series` (name plus labels).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

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

/// A wait for an event outside the test (a slot position, a metric, the
/// archive's window): its deadline, and the pause before the next look,
/// short at first so the event is seen soon after it happens.
struct Wait<'a> {
    deadline: Instant,
    what: &'a str,
    pause: Duration,
}

impl Wait<'_> {
    fn new(limit: Duration, what: &str) -> Wait<'_> {
        Wait {
            deadline: Instant::now() + limit,
            what,
            pause: Duration::from_millis(5),
        }
    }

    /// The pause before the next look; panics naming the event past the deadline.
    fn next_pause(&mut self) -> Duration {
        assert!(
            Instant::now() < self.deadline,
            "timed out waiting for {}",
            self.what
        );
        let pause = self.pause;
        self.pause = (pause * 2).min(Duration::from_millis(100));
        pause
    }
}

/// Asserts that everything under `dir` is private: files 0600 or less, directories 0700.
pub fn assert_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = metadata.permissions().mode() & 0o777;
        if metadata.is_dir() {
            assert_eq!(
                mode,
                0o700,
                "{} is a directory with mode {mode:o}",
                path.display()
            );
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 0, "nothing under {}", dir.display());
}

/// Waits, blocking, until `condition` holds: for tests without a runtime.
pub fn wait_for(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let mut wait = Wait::new(limit, what);
    while !condition() {
        std::thread::sleep(wait.next_pause());
    }
}

/// Awaits `event` without holding up the test's runtime: for async tests.
pub async fn wait_until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut event: impl FnMut() -> F,
) {
    let mut wait = Wait::new(limit, what);
    while !event().await {
        tokio::time::sleep(wait.next_pause()).await;
    }
}

/// A tokio-postgres client to `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test cluster");
    tokio::spawn(connection);
    client
}

/// A real S3-compatible HTTP server (moto), one per test binary.
pub struct S3Server {
    _child: Child,
    pub endpoint: String,
}

pub const S3_KEY_ID: &str = "tidemark-test-key";
pub const S3_SECRET: &str = "tidemark-test-secret";

/// The environment a process needs to reach the test S3 server.
pub fn s3_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", S3_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

pub fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        S3Server::start_on(port)
    })
}

impl S3Server {
    /// Starts a server on `port`; a test may start one late, on a port capture already uses.
    pub fn start_on(port: u16) -> S3Server {
        static ENV: std::sync::Once = std::sync::Once::new();
        // Set once, before this binary's first S3 client reads them.
        ENV.call_once(|| {
            for (key, value) in s3_env() {
                std::env::set_var(key, value);
            }
        });
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = tidemark::child::spawn_tied_to_process(command)
            .expect("starting moto (run scripts/setup.sh)");
        wait_for(Duration::from_secs(60), "the S3 server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        S3Server {
            _child: child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates a fresh bucket and returns its name.
    #[cfg(feature = "s3")]
    pub async fn bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name).await;
        name
    }

    /// Through the AWS SDK, which only a build with the s3 feature links.
    #[cfg(feature = "s3")]
    pub async fn create_bucket(&self, name: &str) {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .endpoint_url(&self.endpoint)
                .force_path_style(true)
                .build(),
        );
        client
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .expect("creating a bucket");
    }

    pub fn options(&self) -> tidemark::archive::store::S3Options {
        tidemark::archive::store::S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
        }
    }
}

/// A Kafka-protocol broker (tansu) that persists to the test S3 server, so a
/// restart keeps its topics.
#[cfg(feature = "s3")]
pub struct Broker {
    child: Option<Child>,
    port: u16,
    bucket: String,
}

#[cfg(feature = "s3")]
impl Broker {
    pub async fn start() -> Broker {
        let mut broker = Broker::reserve().await;
        broker.spawn();
        broker
    }

    /// A broker's address and storage, not started yet (see `spawn`).
    pub async fn reserve() -> Broker {
        Broker {
            child: None,
            port: free_port(),
            bucket: s3().bucket().await,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn spawn(&mut self) {
        let listener = format!("tcp://{}", self.address());
        let mut command = Command::new("tansu");
        command
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &format!("s3://{}/", self.bucket)])
            .env("AWS_ENDPOINT", &s3().endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", S3_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            tidemark::child::spawn_tied_to_process(command)
                .expect("starting tansu (run scripts/setup.sh)"),
        );
        let port = self.port;
        wait_for(Duration::from_secs(30), "the broker to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Every message of `topics`, read by kafka-python.
    pub fn read(&self, topics: &[&str]) -> Vec<serde_json::Value> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/harness/kafka_read.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(self.address())
            .args(topics)
            .output()
            .expect("running kafka-python (run scripts/setup.sh)");
        assert!(
            out.status.success(),
            "kafka-python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[cfg(feature = "s3")]
impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small deterministic generator; tests print their seed so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
