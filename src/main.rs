//! The `tidemark` binary: argument parsing, logging, signals and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tidemark::config::Config;
use tidemark::lsn::Lsn;

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Continuous point-in-time protection for critical PostgreSQL tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole story on embedded defaults: a throwaway PostgreSQL with sample tables and a
    /// workload, capture into a local archive, a simulated disaster, and a checked restore.
    Quickstart {
        /// Keep the config, log and archive here (default: a temporary directory, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measure tidemark against the physical limit on this machine: drain rates next to
    /// pg_recvlogical and wal2json, latencies, restore rates, memory. Starts its own cluster.
    Bench {
        /// Drain scenarios to run (repeatable; default: all).
        #[arg(long = "scenario", value_enum)]
        scenarios: Vec<tidemark::bench::Scenario>,
        /// Changes in the pgbench backlog (the wide one has a tenth as many, of 4 KB each).
        #[arg(long, default_value_t = 400_000)]
        changes: u64,
        /// Rounds per drain scenario; the report gives medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Offered rates for the latency phase, transactions/s.
        #[arg(long, value_delimiter = ',', default_value = "500,2000,5000")]
        rates: Vec<u32>,
        /// Seconds of load at each rate.
        #[arg(long, default_value_t = 5.0)]
        rate_seconds: f64,
        /// Size of the single transaction in the memory phase, MiB.
        #[arg(long, default_value_t = 1024)]
        big_txn_mib: u64,
        /// Rows in the restore phase's table.
        #[arg(long, default_value_t = 1_000_000)]
        restore_rows: u64,
        /// Run against this server instead of a throwaway cluster (needs wal_level=logical
        /// and a role that may create databases and replication slots).
        #[arg(long)]
        source_url: Option<String>,
        /// Also measure the Kafka feed against these brokers.
        #[arg(long)]
        kafka_brokers: Option<String>,
        /// Write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a markdown report here, with SVG charts beside it.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Where the logs and archives go while measuring: put it on the disk
        /// capture would use (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Stream changes of the watched tables into the durable segment log, until SIGINT or SIGTERM.
    Capture {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
    },
    /// Print the committed changes held in the local log, one line each.
    Log {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Only transactions that committed at or after this LSN (X/Y).
        #[arg(long)]
        from: Option<Lsn>,
        /// Only changes to this table (schema.name).
        #[arg(long)]
        table: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show the archive: the restore window, snapshots, segments and any gaps.
    List {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Build a new base snapshot from the newest one plus the archived segments after it,
    /// without reading the source. Capture also does this every [archive] compact_interval.
    Compact {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
    },
    /// Delete what [retention] no longer needs: the manifest first, the objects after.
    /// Capture also prunes after each compaction.
    Prune {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Show what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the watched tables as they were at a point in time, from the archive alone.
    Restore {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// RFC 3339 time with a zone, a time as PostgreSQL prints it, an LSN (X/Y), or latest.
        #[arg(long)]
        to: String,
        /// The database to restore into (a URL); its password is never printed.
        #[arg(long)]
        target: Option<String>,
        /// Restore only this table (schema.name); repeatable.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Restore only the rows satisfying this SQL predicate, e.g. "org_id = 'clx123abc'".
        #[arg(long = "where")]
        predicate: Option<String>,
        /// Print the plan and touch nothing.
        #[arg(long)]
        dry_run: bool,
        /// Load into tables that already exist in the target.
        #[arg(long)]
        data_only: bool,
        /// Replace rows already in target tables (with --data-only).
        #[arg(long)]
        force: bool,
        /// With --force: allow the target to be the live source database.
        #[arg(long)]
        i_know_this_is_the_source: bool,
        /// Connections loading snapshot tables in parallel (default: one per CPU, at most 8).
        #[arg(long)]
        jobs: Option<usize>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Every change of a table, or of one row, between two times, from the archive alone.
    History {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// The table (schema.name).
        #[arg(long)]
        table: String,
        /// Only this row: its key columns as JSON, e.g. '{"id": 42}'.
        #[arg(long)]
        key: Option<String>,
        /// From this time (RFC 3339 with a zone).
        #[arg(long)]
        from: Option<tidemark::lsn::PgTimestamp>,
        /// Until this time (RFC 3339 with a zone).
        #[arg(long)]
        to: Option<tidemark::lsn::PgTimestamp>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Rehearse a restore: restore the latest point into a scratch database and compare every
    /// table with the source at that exact point. Exits 1 on any difference.
    Drill {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// The scratch database to restore into (must not hold the tables).
        #[arg(long)]
        target: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Re-read every archived object and check sizes, SHA-256, the hash chain and LSN continuity.
    /// Exits 1 naming each bad object.
    Verify {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Also decompress and decode every record and every snapshot row.
        #[arg(long)]
        deep: bool,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for input a person must fix: config, arguments, server state, files.
const BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { BAD_INPUT } else { 0 });
        }
    };
    // The quickstart tells its own story; its logs stay quiet unless asked for.
    let default_level = if matches!(cli.command, Command::Quickstart { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", one_line(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

/// The error and its causes on one line, leaving out causes the text already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text.replace('\n', " ")
}

struct Failure {
    error: anyhow::Error,
    code: u8,
}

fn bad_input(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        error: error.into(),
        code: BAD_INPUT,
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Bench {
            scenarios,
            changes,
            rounds,
            rates,
            rate_seconds,
            big_txn_mib,
            restore_rows,
            source_url,
            kafka_brokers,
            json,
            report,
            dir,
        } => {
            use tidemark::bench;
            if rounds == 0 || changes == 0 || rate_seconds <= 0.0 {
                return Err(bad_input(anyhow::anyhow!(
                    "--rounds, --changes and --rate-seconds must be above zero"
                )));
            }
            let work = match &dir {
                Some(dir) => tempfile::tempdir_in(dir),
                None => tempfile::tempdir(),
            }
            .map_err(|e| bad_input(anyhow::anyhow!("cannot make a work directory: {e}")))?;
            let options = bench::Options {
                scenarios: if scenarios.is_empty() {
                    vec![bench::Scenario::Pgbench, bench::Scenario::Wide]
                } else {
                    scenarios
                },
                changes,
                rounds,
                rates,
                rate_seconds,
                big_txn_mib,
                restore_rows,
                source_url,
                kafka_brokers,
                work_dir: work.path().to_path_buf(),
            };
            let results = bench::run(&options, &mut std::io::stderr())
                .await
                .map_err(|e| {
                    let code = match e {
                        bench::BenchError::SourceUrl(_) => BAD_INPUT,
                        _ => 1,
                    };
                    Failure {
                        error: e.into(),
                        code,
                    }
                })?;
            print!("{}", results.table());
            let write = |path: &PathBuf, result: std::io::Result<()>| {
                result
                    .map_err(|e| bad_input(anyhow::anyhow!("cannot write {}: {e}", path.display())))
            };
            if let Some(path) = &json {
                let text = serde_json::to_string_pretty(&results).expect("results serialize");
                write(path, std::fs::write(path, text))?;
            }
            if let Some(path) = &report {
                write(path, results.write_report(path))?;
            }
            Ok(())
        }
        Command::Quickstart { dir } => {
            let temp;
            let kept = dir.is_some();
            let dir = match dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| bad_input(anyhow::anyhow!("--dir {}: {e}", dir.display())))?;
                    dir
                }
                None => {
                    temp = tempfile::tempdir().map_err(|e| Failure {
                        error: e.into(),
                        code: 1,
                    })?;
                    temp.path().to_path_buf()
                }
            };
            let mut stdout = std::io::stdout();
            tidemark::quickstart::run(&dir, kept, &mut stdout)
                .await
                .map_err(|e| Failure {
                    error: e.into(),
                    code: 1,
                })
        }
        Command::Capture { config } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            if let Some(kafka) = &checked.config.kafka {
                tidemark::sink::kafka::broker::producer(kafka)
                    .map(drop)
                    .map_err(|e| {
                        bad_input(anyhow::anyhow!(
                            "[kafka] settings refused by librdkafka: {e}; fix or remove that key"
                        ))
                    })?;
            }
            tidemark::telemetry::install(checked.config.metrics.listen).map_err(bad_input)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_stop_signal().await;
                tracing::info!("stop requested; finishing");
                let _ = stop.send(true);
            });
            tidemark::capture::run(&checked, stopped)
                .await
                .map(|_| ())
                .map_err(bad_input)
        }
        Command::Log {
            config,
            from,
            table,
            json,
        } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            let filter = tidemark::inspect::Filter {
                from,
                table: table
                    .as_deref()
                    .map(tidemark::source::setup::TableName::parse),
            };
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            match tidemark::inspect::print(&checked.config.log.dir, filter, json, stdout) {
                Err(tidemark::inspect::InspectError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(())
                }
                Err(
                    e @ tidemark::inspect::InspectError::Log(tidemark::log::LogError::Missing {
                        ..
                    }),
                ) => Err(bad_input(e)),
                other => other
                    .context("reading the log")
                    .map_err(|error| Failure { error, code: 1 }),
            }
        }
        Command::List { config, json } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            let store = open_archive(&checked.config).await?;
            let latest = tidemark::archive::manifest::load_latest(&*store)
                .await
                .map_err(archive_failure)?;
            let inventory = tidemark::archive::inventory::inventory(
                latest.as_ref().map(|(k, m)| (k.as_str(), m)),
            );
            if json {
                print_json(&inventory);
            } else {
                print!("{inventory}");
            }
            Ok(())
        }
        Command::Compact { config } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            let store = open_archive(&checked.config).await?;
            let log_dir = &checked.config.log.dir;
            std::fs::create_dir_all(log_dir)
                .map_err(|e| bad_input(anyhow::anyhow!("log dir {}: {e}", log_dir.display())))?;
            // One writer per archive: capture compacts by itself while it runs.
            let _lock = tidemark::log::writer::lock_dir(log_dir).map_err(|e| match e {
                tidemark::log::LogError::Locked { path } => bad_input(anyhow::anyhow!(
                    "capture is running on {} and compacts every [archive] compact_interval; stop it first to compact by hand",
                    path.display()
                )),
                other => bad_input(other),
            })?;
            let Some((_, manifest)) = tidemark::archive::manifest::load_latest(&*store)
                .await
                .map_err(archive_failure)?
            else {
                println!("The archive is empty; nothing to compact.");
                return Ok(());
            };
            match tidemark::archive::compact::compact(store.clone(), &manifest, log_dir).await {
                Ok(Some(done)) => {
                    let lsn = done.snapshot.lsn;
                    tidemark::archive::manifest::update(&*store, |m| {
                        m.snapshots.push(done.snapshot)
                    })
                    .await
                    .map_err(archive_failure)?;
                    println!(
                        "New base snapshot at {lsn}: {} transactions, {} changes applied to the previous one.",
                        done.transactions, done.changes
                    );
                    Ok(())
                }
                Ok(None) => {
                    println!("Nothing to compact: no snapshot yet, or no archived change after the newest one.");
                    Ok(())
                }
                Err(error) => Err(Failure {
                    error: error.into(),
                    code: 1,
                }),
            }
        }
        Command::Prune {
            config,
            dry_run,
            json,
        } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            let policy = checked.config.retention.clone().ok_or_else(|| {
                bad_input(anyhow::anyhow!(
                    "the config has no [retention] section; add one, e.g. window = \"7d\", daily = 7, weekly = 4, monthly = 6"
                ))
            })?;
            let store = open_archive(&checked.config).await?;
            let _lock = sole_writer(&checked.config.log.dir, "prunes after every compaction")?;
            let Some((_, manifest)) = tidemark::archive::manifest::load_latest(&*store)
                .await
                .map_err(archive_failure)?
            else {
                println!("The archive is empty; nothing to prune.");
                return Ok(());
            };
            let plan = tidemark::archive::retention::plan(
                &manifest,
                &policy,
                tidemark::lsn::PgTimestamp::now(),
            );
            if !dry_run && !plan.is_empty() {
                tidemark::archive::manifest::update(&*store, |m| plan.apply_to(m))
                    .await
                    .map_err(archive_failure)?;
                tidemark::archive::retention::delete(&*store, &plan)
                    .await
                    .map_err(archive_failure)?;
            }
            if json {
                print_json(&plan);
            } else {
                let verb = if dry_run { "Would delete" } else { "Deleted" };
                println!(
                    "{verb} {} snapshots and {} segments ({}); {} snapshots kept.",
                    plan.deleted_snapshots.len(),
                    plan.deleted_segments,
                    bytesize::ByteSize(plan.deleted_bytes),
                    plan.kept_snapshots.len()
                );
            }
            Ok(())
        }
        Command::Restore {
            config,
            to,
            target,
            tables,
            predicate,
            dry_run,
            data_only,
            force,
            i_know_this_is_the_source,
            jobs,
            json,
        } => {
            use tidemark::restore::command;
            let checked = Config::load(&config).map_err(bad_input)?;
            let store = open_archive(&checked.config).await?;
            let to = command::parse_target(&to).map_err(bad_input)?;
            let target_url = match (target, dry_run) {
                (Some(url), _) => url,
                (None, true) => String::new(),
                (None, false) => return Err(bad_input(anyhow::anyhow!("--target is required: the database to restore into, e.g. postgres://user@host/recovered"))),
            };
            let request = command::Request {
                to,
                predicate,
                target_url,
                tables: tables
                    .iter()
                    .map(|t| tidemark::source::setup::TableName::parse(t))
                    .collect(),
                dry_run,
                data_only,
                force,
                into_source: i_know_this_is_the_source,
                jobs: jobs.unwrap_or_else(command::default_jobs),
            };
            // With --json, stdout carries only the JSON; progress goes to stderr.
            let mut progress: Box<dyn std::io::Write> = if json {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            };
            let phases = tidemark::restore::progress::Phases::on_stderr();
            let summary = command::run(
                &*store,
                &request,
                &checked.config.log.dir,
                &mut progress,
                &phases,
            )
            .await
            .map_err(|e| {
                let code = if e.is_bad_input() { BAD_INPUT } else { 1 };
                Failure {
                    error: e.into(),
                    code,
                }
            })?;
            if json {
                print_json(&summary);
            } else if dry_run {
                println!(
                    "Plan: snapshot at {} ({}) with {} of table data, then {} segments holding {} transactions ({} changes) to apply; {} objects, {} to read; tables: {}. Estimated time: {:.1}s. Nothing was touched.",
                    summary.snapshot_lsn,
                    summary.snapshot_time,
                    bytesize::ByteSize(summary.snapshot_bytes),
                    summary.segments,
                    summary.transactions,
                    summary.changes,
                    summary.objects,
                    bytesize::ByteSize(summary.bytes),
                    summary.tables.join(", "),
                    summary.estimated_seconds.unwrap_or_default()
                );
            } else {
                println!(
                    "Restored {} rows and {} changes ({}) in {:.2}s: {:.0} rows/s.",
                    summary.rows_loaded,
                    summary.changes,
                    bytesize::ByteSize(summary.bytes),
                    summary.seconds,
                    (summary.rows_loaded + summary.changes) as f64 / summary.seconds.max(1e-9)
                );
            }
            Ok(())
        }
        Command::History {
            config,
            table,
            key,
            from,
            to,
            json,
        } => {
            use tidemark::restore::history;
            let checked = Config::load(&config).map_err(bad_input)?;
            let store = open_archive(&checked.config).await?;
            let query = history::Query {
                table: tidemark::source::setup::TableName::parse(&table),
                key: key
                    .as_deref()
                    .map(history::parse_key)
                    .transpose()
                    .map_err(bad_input)?,
                from,
                to,
            };
            let stdout = std::io::BufWriter::new(std::io::stdout());
            match history::run(&*store, &query, json, &checked.config.log.dir, stdout).await {
                Ok(_) => Ok(()),
                Err(history::HistoryError::Output(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    Ok(())
                }
                Err(e) => Err(Failure {
                    error: e.into(),
                    code: 1,
                }),
            }
        }
        Command::Drill {
            config,
            target,
            json,
        } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            let store = open_archive(&checked.config).await?;
            let mut progress: Box<dyn std::io::Write> = if json {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            };
            let report = tidemark::restore::drill::run(
                &*store,
                &checked.pg,
                &target,
                &checked.config.log.dir,
                &mut progress,
                &tidemark::restore::progress::Phases::on_stderr(),
            )
            .await
            .map_err(|e| {
                let code = match &e {
                    tidemark::restore::drill::DrillError::Restore(r) if r.is_bad_input() => {
                        BAD_INPUT
                    }
                    _ => 1,
                };
                Failure {
                    error: e.into(),
                    code,
                }
            })?;
            print_report(json, &report);
            if report.pass {
                Ok(())
            } else {
                Err(Failure {
                    error: anyhow::anyhow!(
                        "the drill found differences between the restore and the source"
                    ),
                    code: 1,
                })
            }
        }
        Command::Verify { config, deep, json } => {
            let checked = Config::load(&config).map_err(bad_input)?;
            let store = open_archive(&checked.config).await?;
            let report = tidemark::archive::verify::verify(&*store, deep, &std::env::temp_dir())
                .await
                .map_err(|e| archive_failure(e.into()))?;
            print_report(json, &report);
            if report.ok {
                Ok(())
            } else {
                Err(Failure {
                    error: anyhow::anyhow!(
                        "the archive failed verification: {}",
                        report
                            .problems
                            .iter()
                            .map(|p| p.key.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    code: 1,
                })
            }
        }
    }
}

/// The archive store a config names; a config without one is bad input.
async fn open_archive(
    config: &Config,
) -> Result<std::sync::Arc<dyn tidemark::archive::store::ObjectStore>, Failure> {
    let archive = config.archive.as_ref().ok_or_else(|| {
        bad_input(anyhow::anyhow!(
            "the config has no [archive] section; add one with url = \"file:///path\" or \"s3://bucket/prefix\""
        ))
    })?;
    archive.open_store().await.map_err(bad_input)
}

/// Takes the log dir's lock, so this command is the archive's only writer;
/// capture holds it while it runs and does `what` by itself.
fn sole_writer(log_dir: &std::path::Path, what: &str) -> Result<std::fs::File, Failure> {
    std::fs::create_dir_all(log_dir)
        .map_err(|e| bad_input(anyhow::anyhow!("log dir {}: {e}", log_dir.display())))?;
    tidemark::log::writer::lock_dir(log_dir).map_err(|e| match e {
        tidemark::log::LogError::Locked { path } => bad_input(anyhow::anyhow!(
            "capture is running on {} and {what}; stop it first to do this by hand",
            path.display()
        )),
        other => bad_input(other),
    })
}

/// Exit 2 for what a person must fix in the config or credentials, 1 for the rest.
fn archive_failure(error: tidemark::archive::ArchiveError) -> Failure {
    use tidemark::archive::{store::StoreError, ArchiveError};
    let code = match &error {
        ArchiveError::Store(StoreError::Refused { .. } | StoreError::BadUrl { .. }) => BAD_INPUT,
        ArchiveError::Store(StoreError::Crypt(e))
            if !matches!(e, tidemark::archive::crypt::CryptError::Damaged { .. }) =>
        {
            BAD_INPUT
        }
        _ => 1,
    };
    Failure {
        error: error.into(),
        code,
    }
}

/// A report as JSON, or as the text its Display gives.
fn print_report(json: bool, report: &(impl serde::Serialize + std::fmt::Display)) {
    if json {
        print_json(report);
    } else {
        print!("{report}");
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialize")
    );
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
