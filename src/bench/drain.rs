//! Drain rates: one backlog, drained by tidemark capture, by `pg_recvlogical`
//! (pgoutput to /dev/null: the physical limit of logical decoding), and by
//! `pg_recvlogical` with wal2json writing a file (what many teams run today).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::report::{DrainResult, DrainRound, KafkaResult};
use super::{
    capture_config, capture_toml, current_lsn, median, peak_rss_mib, reset_peak_rss, BenchError,
    Options, Scenario, Server,
};
use crate::base::position::EndLsn;
use crate::telemetry::Progress;

const DB: &str = "tidemark_bench_drain";
pub(super) const PGBENCH_TABLES: [&str; 4] = [
    "public.pgbench_accounts",
    "public.pgbench_branches",
    "public.pgbench_tellers",
    "public.pgbench_history",
];

fn tables(scenario: Scenario) -> Vec<&'static str> {
    match scenario {
        Scenario::Pgbench => PGBENCH_TABLES.to_vec(),
        Scenario::Wide => vec!["public.wide"],
    }
}

/// Changes in a scenario's backlog: wide rows are 4 KB each, so fewer.
fn backlog_changes(scenario: Scenario, options: &Options) -> u64 {
    match scenario {
        Scenario::Pgbench => options.changes,
        Scenario::Wide => (options.changes / 10).max(1000),
    }
}

async fn prepare(server: &Server, scenario: Scenario) -> Result<(), BenchError> {
    server.fresh_database(DB).await?;
    let client = server.connect(DB).await?;
    match scenario {
        Scenario::Pgbench => {
            server.run_tool(
                "pgbench",
                &["-q", "-i", "-s", "10", "-I", "dtgp", &server.conninfo(DB)],
            )?;
            client
                .batch_execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
                .await?;
        }
        Scenario::Wide => {
            client
                .batch_execute("CREATE TABLE wide (id bigint PRIMARY KEY, payload text)")
                .await?;
        }
    }
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION tidemark_bench FOR TABLE {}",
            tables(scenario).join(", ")
        ))
        .await?;
    Ok(())
}

/// Writes `changes` changes in many transactions; returns the end position.
/// Each `round` writes rows of its own.
async fn backlog(
    server: &Server,
    scenario: Scenario,
    changes: u64,
    round: u64,
) -> Result<EndLsn, BenchError> {
    let client = server.connect(DB).await?;
    match scenario {
        Scenario::Pgbench => {
            super::pgbench_backlog(server, DB, changes, &[])?;
        }
        Scenario::Wide => {
            // Half inserts, half updates of the big column, 100 rows a transaction.
            let rows = changes / 2;
            let payload = "(SELECT string_agg(md5(g::text || i::text || random()::text), '') FROM generate_series(1, 128) i)";
            let (first, last) = (round * rows + 1, (round + 1) * rows);
            for start in (first..=last).step_by(100) {
                let end = (start + 99).min(last);
                client
                    .batch_execute(&format!(
                        "INSERT INTO wide SELECT g, {payload} FROM generate_series({start}, {end}) g"
                    ))
                    .await?;
            }
            for start in (first..=last).step_by(100) {
                let end = (start + 99).min(last);
                client
                    .batch_execute(&format!(
                        "UPDATE wide w SET payload = {} WHERE id BETWEEN {start} AND {end}",
                        payload.replace("g::text", "w.id::text")
                    ))
                    .await?;
            }
        }
    }
    client.batch_execute("SELECT txid_current()").await?;
    current_lsn(&client).await
}

pub struct Drained {
    pub seconds: f64,
    pub log_bytes: u64,
    pub stored_bytes: u64,
    pub peak_rss_mib: f64,
}

/// What a measured capture run reads, and which position ends it.
pub struct CaptureRun<'a> {
    pub db: &'a str,
    pub tables: &'a [&'a str],
    pub slot: &'a str,
    /// More config sections, as TOML.
    pub extra: String,
    pub until: fn(&Progress) -> &watch::Sender<EndLsn>,
}

/// Runs capture in this process until `run.until` reaches `end`.
pub async fn tidemark(
    server: &Server,
    run: &CaptureRun<'_>,
    end: EndLsn,
    log_dir: &Path,
) -> Result<Drained, BenchError> {
    if log_dir.exists() {
        std::fs::remove_dir_all(log_dir)?;
    }
    std::fs::create_dir_all(log_dir)?;
    let checked = capture_config(server, run.db, run.tables, run.slot, log_dir, &run.extra)?;
    let progress = Arc::new(Progress::default());
    let mut reached = (run.until)(&progress).subscribe();
    let (stop, stopped) = watch::channel(false);
    reset_peak_rss();
    let started = Instant::now();
    let observed = progress.clone();
    let mut task =
        tokio::spawn(
            async move { crate::capture::run_observed(&checked, stopped, observed).await },
        );
    while *reached.borrow_and_update() < end {
        tokio::select! {
            _ = reached.changed() => {}
            finished = &mut task => {
                finished.expect("the capture task")?;
                return Err(BenchError::Tool {
                    tool: "tidemark capture".into(),
                    detail: format!("stopped at {} before {end}", *reached.borrow()),
                });
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_mib();
    stop.send_replace(true);
    task.await.expect("the capture task")?;
    let (log_bytes, stored_bytes) = log_sizes(log_dir)?;
    Ok(Drained {
        seconds,
        log_bytes,
        stored_bytes,
        peak_rss_mib,
    })
}

/// `pg_recvlogical`'s arguments: read `slot` to `end`, with plugin `options`, into `file`.
fn recvlogical_args(
    conninfo: &str,
    slot: &str,
    end: &str,
    file: &str,
    options: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-d",
        conninfo,
        "--slot",
        slot,
        "--start",
        "-E",
        end,
        "--no-loop",
        "-f",
        file,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for option in options {
        args.extend(["-o".to_string(), option.to_string()]);
    }
    args
}

/// The segment log's bytes in `log_dir`, and the same compressed as the archive stores them.
fn log_sizes(log_dir: &Path) -> Result<(u64, u64), BenchError> {
    let (mut log_bytes, mut stored_bytes) = (0, 0);
    for (_, path) in crate::log::segment::list(log_dir).map_err(std::io::Error::other)? {
        let raw = std::fs::read(&path)?;
        log_bytes += raw.len() as u64;
        stored_bytes +=
            zstd::encode_all(&raw[..], crate::archive::uploader::SEGMENT_ZSTD_LEVEL)?.len() as u64;
    }
    Ok((log_bytes, stored_bytes))
}

pub async fn run(
    server: &Server,
    scenario: Scenario,
    options: &Options,
    out: &mut dyn std::io::Write,
) -> Result<DrainResult, BenchError> {
    prepare(server, scenario).await?;
    let client = server.connect(DB).await?;
    let changes = backlog_changes(scenario, options);
    let tables = tables(scenario);
    let wal2json_tables = tables.join(",");
    let mut rounds = Vec::new();
    let conninfo = server.conninfo(DB);
    for round in 0..options.rounds {
        let slots = [
            format!("tm_{round}"),
            format!("rl_{round}"),
            format!("wj_{round}"),
        ];
        for (slot, plugin) in slots.iter().zip(["pgoutput", "pgoutput", "wal2json"]) {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, $2)",
                    &[slot, &plugin],
                )
                .await?;
        }
        let start = current_lsn(&client).await?;
        let end = backlog(server, scenario, changes, round as u64).await?;
        // As pgbench does before measuring: otherwise a checkpoint comes due
        // every few rounds (each writes up to 190 MB of WAL) and flushes the
        // backlog's pages while a tool is timed, slowing whichever fsyncs.
        client.batch_execute("CHECKPOINT").await?;
        let json_file = options.work_dir.join("wal2json.out");
        let log_dir = options.work_dir.join("drain-log");
        let (mut tidemark_run, mut recvlogical_run, mut wal2json_run) = (None, None, None);
        let end_text = end.to_string();
        // Alternate who reads the WAL first (from disk rather than the page cache).
        for step in 0..3 {
            match (step + round) % 3 {
                0 => {
                    if log_dir.exists() {
                        std::fs::remove_dir_all(&log_dir)?;
                    }
                    std::fs::create_dir_all(&log_dir)?;
                    let config = options.work_dir.join("drain.toml");
                    std::fs::write(
                        &config,
                        capture_toml(server, DB, &tables, &slots[0], &log_dir, ""),
                    )?;
                    tidemark_run =
                        Some(super::spawned::capture(server, DB, &config, &slots[0], end).await?);
                }
                1 => {
                    let args = recvlogical_args(
                        &conninfo,
                        &slots[1],
                        &end_text,
                        "/dev/null",
                        &["proto_version=1", "publication_names=tidemark_bench"],
                    );
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    recvlogical_run =
                        Some(super::spawned::recvlogical(server, DB, &slots[1], &args).await?);
                }
                _ => {
                    let add_tables = format!("add-tables={wal2json_tables}");
                    let args = recvlogical_args(
                        &conninfo,
                        &slots[2],
                        &end_text,
                        &json_file.display().to_string(),
                        &["format-version=2", &add_tables],
                    );
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    wal2json_run =
                        Some(super::spawned::recvlogical(server, DB, &slots[2], &args).await?);
                }
            }
        }
        let (drained, recvlogical_run, wal2json_run) = (
            tidemark_run.expect("tidemark ran"),
            recvlogical_run.expect("pg_recvlogical ran"),
            wal2json_run.expect("wal2json ran"),
        );
        let (log_bytes, stored_bytes) = log_sizes(&log_dir)?;
        let wal2json_bytes = std::fs::metadata(&json_file)?.len();
        std::fs::remove_file(&json_file)?;
        for slot in &slots {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[slot])
                .await?;
        }
        let round = DrainRound {
            changes,
            wal_bytes: end.0.bytes_since(start.0),
            tidemark_seconds: drained.seconds,
            pg_recvlogical_seconds: recvlogical_run.seconds,
            wal2json_seconds: wal2json_run.seconds,
            walsender_busy: drained.walsender_busy,
            pg_recvlogical_walsender_busy: recvlogical_run.walsender_busy,
            log_bytes,
            stored_bytes,
            wal2json_bytes,
            peak_rss_mib: drained.peak_rss_mib,
        };
        let busy = |b: Option<f64>| b.map_or("?".to_string(), |b| format!("{b:.2}"));
        writeln!(
            out,
            "  round {}: tidemark {:.2}s (walsender busy {}), pg_recvlogical {:.2}s (walsender busy {}), wal2json {:.2}s",
            rounds.len() + 1,
            round.tidemark_seconds,
            busy(round.walsender_busy),
            round.pg_recvlogical_seconds,
            busy(round.pg_recvlogical_walsender_busy),
            round.wal2json_seconds
        )?;
        rounds.push(round);
    }
    drop(client);
    server.drop_database(DB).await?;
    Ok(DrainResult::from_rounds(scenario.name(), rounds))
}

/// Peak RSS of a `tidemark capture` process draining one transaction of
/// `big_txn_mib` MiB. A process of its own, so nothing else is counted.
pub async fn big_transaction(server: &Server, options: &Options) -> Result<f64, BenchError> {
    const BIG_DB: &str = "tidemark_bench_big";
    server.fresh_database(BIG_DB).await?;
    let client = server.connect(BIG_DB).await?;
    client
        .batch_execute(
            "CREATE TABLE big (id bigint, payload text); ALTER TABLE big REPLICA IDENTITY FULL;
             CREATE PUBLICATION tidemark_bench FOR TABLE big;",
        )
        .await?;
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('big', 'pgoutput')")
        .await?;
    // Rows of about 1 KiB: 1024 per MiB.
    let rows = options.big_txn_mib * 1024;
    client
        .batch_execute(&format!(
            "INSERT INTO big SELECT g, repeat(md5(g::text), 31) FROM generate_series(1, {rows}) g; SELECT txid_current();"
        ))
        .await?;
    let end = current_lsn(&client).await?;
    let log_dir = options.work_dir.join("big-log");
    std::fs::create_dir_all(&log_dir)?;
    let config = options.work_dir.join("big.toml");
    std::fs::write(
        &config,
        capture_toml(server, BIG_DB, &["public.big"], "big", &log_dir, ""),
    )?;
    let run = super::spawned::capture(server, BIG_DB, &config, "big", end).await?;
    std::fs::remove_dir_all(&log_dir)?;
    drop(client);
    server.drop_database(BIG_DB).await?;
    Ok(run.peak_rss_mib)
}

/// Events per second from a pgbench backlog through capture into Kafka.
#[cfg(feature = "kafka")]
pub async fn kafka(server: &Server, options: &Options) -> Result<KafkaResult, BenchError> {
    let brokers = options.kafka_brokers.clone().expect("called with brokers");
    prepare(server, Scenario::Pgbench).await?;
    let client = server.connect(DB).await?;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('kafka', 'pgoutput')",
            &[],
        )
        .await?;
    let changes = options.changes;
    let end = backlog(server, Scenario::Pgbench, changes, 0).await?;
    let topic_prefix = format!("tidemark_bench_{}", std::process::id());
    let run = CaptureRun {
        db: DB,
        tables: &PGBENCH_TABLES,
        slot: "kafka",
        extra: format!("[kafka]\nbrokers = {brokers:?}\ntopic_prefix = {topic_prefix:?}\n"),
        until: |p| &p.published,
    };
    let drained = tidemark(server, &run, end, &options.work_dir.join("kafka-log")).await?;
    drop(client);
    server.drop_database(DB).await?;
    Ok(KafkaResult {
        events: changes,
        seconds: drained.seconds,
        events_per_s: changes as f64 / drained.seconds,
        peak_rss_mib: drained.peak_rss_mib,
        commit_to_kafka_p99_ms: None,
    })
}

/// The median of per-round values.
pub fn median_of(rounds: &[DrainRound], value: impl Fn(&DrainRound) -> f64) -> f64 {
    median(&rounds.iter().map(value).collect::<Vec<_>>())
}
