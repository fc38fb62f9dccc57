//! `tidemark bench`: how fast tidemark is, next to the physical limit, in one run.
//!
//! Why the comparisons are fair:
//! - Drain rates: each round creates one slot per consumer at the same
//!   instant, before the backlog is written, so every consumer decodes the
//!   very same WAL. Rounds alternate which consumer goes first (the first
//!   reads WAL from disk, the rest from the page cache), and the reported
//!   ratio is the median of the per-round ratios.
//! - tidemark runs in this process exactly as `tidemark capture` does, and is
//!   timed to the instant its log is fsynced up to the backlog's end (the
//!   writer thread reports it); `pg_recvlogical` is timed until it exits at
//!   the same end position.
//! - Latencies are measured from each transaction's commit timestamp (the
//!   server's clock, the same machine's) to the wall-clock instant tidemark
//!   reported the position covering it.
//! - Peak RSS is this process's high-water mark, reset at the start of each
//!   phase; while capture phases run, the process holds nothing else of size.

pub mod drain;
pub mod latency;
mod markdown;
pub mod report;
pub mod restore;
pub mod spawned;

use std::path::{Path, PathBuf};

use crate::base::exit::ExitCode;
use crate::base::position::EndLsn;
use crate::pg::ConnInfo;
use crate::replay::scratch::{ScratchError, ScratchServer};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    ScratchServer(#[from] ScratchError),
    #[error("the bench database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("cannot connect to the bench's database: {0}")]
    Connect(#[from] crate::pg::ConnectError),
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Restore(#[from] crate::restore::command::RestoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("--source-url: {0}")]
    SourceUrl(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl BenchError {
    pub fn exit_code(&self) -> ExitCode {
        use BenchError::*;
        match self {
            SourceUrl(_) => ExitCode::BadInput,
            Connect(e) => e.exit_code(),
            ScratchServer(e) => e.exit_code(),
            Capture(e) => e.exit_code(),
            Restore(e) => e.exit_code(),
            Config(e) => e.exit_code(),
            Sql(_) | Tool { .. } | Io(_) => ExitCode::Failure,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// pgbench's TPC-B-like transactions: 4 small changes each.
    Pgbench,
    /// Inserts and updates of rows with 4 KB TOASTed values.
    Wide,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pgbench => "pgbench",
            Scenario::Wide => "wide",
        }
    }
}

pub struct Options {
    pub scenarios: Vec<Scenario>,
    pub changes: u64,
    pub rounds: usize,
    pub rates: Vec<u32>,
    pub rate_seconds: f64,
    pub big_txn_mib: u64,
    pub restore_rows: u64,
    pub source_url: Option<String>,
    pub kafka_brokers: Option<String>,
    pub work_dir: PathBuf,
}

/// The PostgreSQL server the bench runs against: a throwaway cluster of its
/// own, or the user's (`--source-url`), where it works in databases it creates.
pub struct Server {
    _cluster: Option<ScratchServer>,
    info: ConnInfo,
    bin: PathBuf,
}

impl Server {
    pub fn start(source_url: Option<&str>) -> Result<Server, BenchError> {
        let bin = crate::replay::scratch::pg_bin_dir()?;
        let Some(url) = source_url else {
            // Over TCP, as a production source is reached.
            let cluster =
                ScratchServer::start_listening(&[("autovacuum", "off"), ("max_wal_size", "4GB")])?;
            let url = cluster.url_as(
                "postgres",
                cluster.password().unwrap_or_default(),
                "postgres",
            );
            let info = ConnInfo::parse_with_env(&url, &|_| None)
                .map_err(|e| BenchError::SourceUrl(e.to_string()))?;
            return Ok(Server {
                _cluster: Some(cluster),
                info,
                bin,
            });
        };
        let info = ConnInfo::parse(url).map_err(|e| BenchError::SourceUrl(e.to_string()))?;
        Ok(Server {
            _cluster: None,
            info,
            bin,
        })
    }

    /// The connection to database `db`, password included (never printed).
    pub fn info(&self, db: &str) -> ConnInfo {
        self.info.with_dbname(db)
    }

    /// A libpq string for `db` without the password, for child processes ([`Self::command`]).
    pub fn conninfo(&self, db: &str) -> String {
        self.info(db).keywords()
    }

    /// A child process that finds the password in PGPASSWORD, never in its arguments.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        if let Some(password) = self.info.password() {
            command.env("PGPASSWORD", String::from_utf8_lossy(password).as_ref());
        }
        command
    }

    pub fn tool(&self, name: &str) -> std::process::Command {
        self.command(self.bin.join(name))
    }

    pub async fn connect(&self, db: &str) -> Result<tokio_postgres::Client, BenchError> {
        Ok(self.info(db).connect().await?)
    }

    /// A fresh database (dropped first if a previous run left it).
    pub async fn fresh_database(&self, name: &str) -> Result<(), BenchError> {
        let admin = self.connect("postgres").await?;
        for slot in admin
            .query(
                "SELECT slot_name FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .await?
        {
            let slot: String = slot.get(0);
            admin
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await?;
        }
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(())
    }

    pub async fn drop_database(&self, name: &str) -> Result<(), BenchError> {
        self.fresh_database(name).await?;
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        Ok(())
    }

    /// Runs a PostgreSQL tool to completion; its stderr goes into the error.
    pub fn run_tool(&self, name: &str, args: &[&str]) -> Result<std::process::Output, BenchError> {
        let output = self.tool(name).args(args).output()?;
        if !output.status.success() {
            return Err(BenchError::Tool {
                tool: name.into(),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(output)
    }
}

/// Runs a pgbench backlog of `changes` changes into `db`: TPC-B-like, 4
/// changes per transaction, 4 clients; `extra` adds pgbench arguments (a
/// script of its own, say).
pub fn pgbench_backlog(
    server: &Server,
    db: &str,
    changes: u64,
    extra: &[&str],
) -> Result<(), BenchError> {
    let per_client = (changes / 4 / 4).max(1).to_string();
    let conninfo = server.conninfo(db);
    let mut args = vec![
        "-n",
        "-c",
        "4",
        "-j",
        "2",
        "-M",
        "prepared",
        "-t",
        &per_client,
    ];
    args.extend_from_slice(extra);
    args.push(&conninfo);
    server.run_tool("pgbench", &args).map(drop)
}

/// The server's WAL insert position. The bench reads it between its own
/// transactions, so it is a position between transactions.
pub async fn current_lsn(client: &tokio_postgres::Client) -> Result<EndLsn, BenchError> {
    let text: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    text.parse()
        .map_err(|e: crate::base::position::ParseLsnError| BenchError::Tool {
            tool: "pg_current_wal_insert_lsn".into(),
            detail: e.to_string(),
        })
}

/// A capture config for the bench, as TOML.
pub fn capture_toml(
    server: &Server,
    db: &str,
    tables: &[&str],
    slot: &str,
    log_dir: &Path,
    extra: &str,
) -> String {
    let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "[source]\nurl = {:?}\ntables = [{}]\npublication = \"tidemark_bench\"\nslot = {slot:?}\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[log]\ndir = {:?}\n{extra}\n",
        server.conninfo(db),
        tables.join(", "),
        log_dir.display().to_string(),
    )
}

/// The same config, checked as `tidemark capture` checks it.
pub fn capture_config(
    server: &Server,
    db: &str,
    tables: &[&str],
    slot: &str,
    log_dir: &Path,
    extra: &str,
) -> Result<crate::config::Checked, BenchError> {
    checked_config(
        server,
        db,
        &capture_toml(server, db, tables, slot, log_dir, extra),
    )
}

/// A capture config's text, checked, with the connection to `db` (password included).
pub fn checked_config(
    server: &Server,
    db: &str,
    text: &str,
) -> Result<crate::config::Checked, BenchError> {
    let mut checked =
        crate::config::Config::from_toml(Path::new("bench.toml"), text, std::iter::empty())?;
    checked.pg = server.info(db);
    Ok(checked)
}

/// This process's peak resident set since the last reset, in MiB.
pub fn peak_rss_mib() -> f64 {
    peak_rss_mib_of("self")
}

/// A process's peak resident set (`pid`, or `self`), in MiB.
pub fn peak_rss_mib_of(pid: &str) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A size `field` of /proc/<pid>/status (`VmHWM:`, `VmRSS:`), in MiB; 0 if unreadable.
pub fn status_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Starts a new peak-RSS measurement.
pub fn reset_peak_rss() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The p-th percentile (0..=100) of `values`, nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    percentile(&mut values, 50.0)
}

/// Runs every phase and returns the results.
pub async fn run(
    options: &Options,
    out: &mut dyn std::io::Write,
) -> Result<report::Results, BenchError> {
    let server = Server::start(options.source_url.as_deref())?;
    let mut results = report::Results::new(options);
    for scenario in &options.scenarios {
        writeln!(out, "capture drain, {} scenario...", scenario.name())?;
        results.add_drain(drain::run(&server, *scenario, options, out).await?);
    }
    writeln!(
        out,
        "capture memory with a {} MiB transaction...",
        options.big_txn_mib
    )?;
    results.memory.capture_peak_rss_mib = drain::big_transaction(&server, options).await?;
    for &rate in &options.rates {
        writeln!(out, "latency at {rate} tx/s...")?;
        results.latency.insert(
            rate.to_string(),
            latency::run(&server, rate, options).await?,
        );
    }
    #[cfg(feature = "kafka")]
    if options.kafka_brokers.is_some() {
        writeln!(out, "Kafka feed drain...")?;
        results.kafka = Some(drain::kafka(&server, options).await?);
    }
    writeln!(out, "restore...")?;
    results.restore = Some(restore::run(&server, options).await?);
    results.finish();
    Ok(results)
}
