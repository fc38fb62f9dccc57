//! The shared integration-test harness: one throwaway PostgreSQL cluster per
//! test binary, and a fresh database, slot, publication and log dir per test,
//! so tests in one binary run in parallel without seeing each other.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tidemark::replay::scratch::ScratchServer;

mod files;
mod http;
#[cfg(feature = "s3")]
mod kafka;
pub mod ledger;
mod process;
pub mod proxy;
pub mod receivers;
mod s3;
mod wait;

pub use files::*;
pub use http::*;
#[cfg(feature = "s3")]
pub use kafka::*;
pub use process::*;
pub use s3::*;
pub use wait::*;

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

    /// Capture has confirmed everything written to the source so far.
    pub fn caught_up(&self, limit: Duration) -> Event<'_> {
        // Abort records are not flushed, and walsenders send only flushed WAL:
        // committing a transaction with an xid flushes everything before it.
        self.psql("SELECT txid_current()");
        let target = self.current_wal_lsn();
        Event::new(
            "capture to confirm the current WAL position",
            limit,
            move || self.confirmed_flush().is_some_and(|c| c >= target),
        )
    }

    pub fn wait_caught_up(&self, limit: Duration) {
        self.caught_up(limit).wait()
    }

    /// Starts `tidemark capture` and waits until it streams (the slot and publication exist).
    pub fn start_capture(&self, config: &Path) -> Capture {
        let capture = Capture::start(config);
        self.streaming(&capture).wait();
        capture
    }

    /// `start_capture` for async tests.
    pub async fn start_capture_async(&self, config: &Path) -> Capture {
        let capture = Capture::start(config);
        self.streaming(&capture).arrives().await;
        capture
    }

    /// `capture` holds this test's slot and streams from it: a walsender
    /// that started after it did (not a killed predecessor's) is streaming
    /// the slot. Also ends if capture exits, so its exit code can be read.
    pub fn streaming(&self, capture: &Capture) -> Event<'_> {
        let pid = capture.pid();
        let since = capture
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let query = format!(
            "SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = '{}' AND r.state = 'streaming' AND r.backend_start >= to_timestamp({since})",
            self.slot()
        );
        Event::new("capture to stream", Duration::from_secs(60), move || {
            self.psql(&query) == "1" || capture_exited(pid)
        })
    }

    pub fn wait_streaming(&self, capture: &Capture) {
        self.streaming(capture).wait()
    }

    /// The archive at `config` lists a base snapshot (its restore window opens).
    pub fn base_snapshot(&self, config: &Path) -> Event<'static> {
        let config = config.to_path_buf();
        Event::new("the base snapshot", Duration::from_secs(60), move || {
            archive_window_open(&config)
        })
    }

    pub fn wait_base_snapshot(&self, config: &Path) {
        self.base_snapshot(config).wait()
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
    !list(config)["window"].is_null()
}

/// `tidemark list --json` of the archive at `config`; null when it cannot be read.
pub fn list(config: &Path) -> serde_json::Value {
    let out = tidemark(
        &["list", "--config", config.to_str().unwrap(), "--json"],
        &[],
    );
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Whether the archive at `config` restores past `time` (as the tests print
/// times: RFC 3339 in UTC with microseconds, which sort as text).
pub fn window_past(config: &Path, time: &str) -> bool {
    list(config)["window"]["latest"]["time"]
        .as_str()
        .is_some_and(|t| t > time)
}

/// Whether the process `pid` has exited (so a wait for it to stream can stop).
fn capture_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.split_whitespace().nth(2) == Some("Z"))
}

/// A tokio-postgres client to `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test cluster");
    tokio::spawn(connection);
    client
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
