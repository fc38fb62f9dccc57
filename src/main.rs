//! The `tidemark` binary: parses arguments, dispatches to `ops`, prints the
//! result, and turns a failure into one line and its exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidemark::base::position::{CommitLsn, PgTimestamp};
use tidemark::base::table::TableName;
use tidemark::ops::{self, OpError};

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
    #[cfg(feature = "bench")]
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
        from: Option<CommitLsn>,
        /// Only changes to this table (schema.name).
        #[arg(long)]
        table: Option<TableName>,
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
    /// Ask the running capture to read tables from the source again (a re-read), and wait
    /// until the archive lists it. Restores to later points read those tables from it.
    Snapshot {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// A watched table (schema.name); repeatable.
        #[arg(long = "table", required = true)]
        tables: Vec<TableName>,
        /// How long to wait for capture to store it.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// One JSON object.
        #[arg(long)]
        json: bool,
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
        tables: Vec<TableName>,
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
        /// Restore past schema changes the stream cannot carry (a rewrite, a column
        /// added without a schema note), naming the tables that may differ.
        #[arg(long)]
        allow_inexact: bool,
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
        table: TableName,
        /// Only this row: its key columns as JSON, e.g. '{"id": 42}'.
        #[arg(long)]
        key: Option<String>,
        /// From this time (RFC 3339 with a zone).
        #[arg(long)]
        from: Option<PgTimestamp>,
        /// Until this time (RFC 3339 with a zone).
        #[arg(long)]
        to: Option<PgTimestamp>,
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
    /// Alert channels: `alerts test` sends one test notification through each.
    Alerts {
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// The audit log of operations (restore, verify, prune, ...), oldest first.
    /// Exits 1 if its hash chain does not hold.
    Audit {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// Only entries at or after this time (RFC 3339 with a zone).
        #[arg(long)]
        since: Option<PgTimestamp>,
        /// A JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Is protection working now: capture, the slot, the archive's RPO, the
    /// newest snapshot; judged against [alerts]. Exit 0 when healthy, 1 otherwise.
    Status {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AlertsAction {
    /// Send one test notification through every configured channel; exit 1
    /// naming the channels that failed.
    Test {
        #[arg(long, env = "TIDEMARK_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // Everything we write (segments, archive objects, configs, positions) is
    // private: 0600 files in 0700 directories, as the postmaster does it.
    // SAFETY: umask only sets this process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print in full; a usage error is one line, like every other.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph says what is wrong (a list of missing
            // arguments runs over a few lines); usage and tips follow it.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{}; see tidemark --help", first.join(" "));
            return ExitCode::from(tidemark::base::exit::ExitCode::BadInput.code());
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
    // Capture is one loop on one socket: on a single thread, a read wakes the
    // loop itself, with no hand-off between worker threads per read, and the
    // CPU it leaves is the server's walsender's (heavy work runs on blocking
    // threads either way).
    let mut builder = match cli.command {
        Command::Capture { .. } => {
            yield_on_wakeup();
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(tidemark::base::exit::ExitCode::Failure.code());
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code().code();
            eprintln!("error: {}", one_line(&anyhow::Error::from(error)));
            ExitCode::from(code)
        }
    }
}

/// Capture's threads (this one and all it starts) run as SCHED_BATCH: the
/// same share of the CPU as before, but a thread that wakes waits for the
/// running one's slice instead of preempting it. The running one is often
/// the walsender feeding capture: on 2 cores, `perf sched` showed capture's
/// writer, sync and loop threads preempting it 140-300 times in a 0.65 s
/// drain, leaving it runnable but waiting. An idle core still runs a woken
/// capture thread at once, so live latency stays as it was. Where the call
/// is refused, capture runs as before.
fn yield_on_wakeup() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` lives across the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "capture keeps the normal scheduling policy");
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

async fn run(command: Command) -> Result<(), OpError> {
    match command {
        #[cfg(feature = "bench")]
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
            use tidemark::bench::{Options, Scenario};
            let options = Options {
                scenarios: if scenarios.is_empty() {
                    vec![Scenario::Pgbench, Scenario::Wide]
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
                work_dir: dir.unwrap_or_else(std::env::temp_dir),
            };
            let outputs = ops::bench::Outputs { json, report };
            let results = ops::bench::run(options, &outputs).await?;
            print!("{}", results.table());
            Ok(())
        }
        Command::Quickstart { dir } => ops::quickstart::run(dir, &mut std::io::stdout()).await,
        Command::Capture { config } => ops::capture::run(&config).await.map(drop),
        Command::Log {
            config,
            from,
            table,
            json,
        } => {
            let filter = tidemark::inspect::Filter { from, table };
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            ops::log::run(&config, filter, json, stdout)
        }
        Command::List { config, json } => {
            print_report(json, &ops::list::run(&config).await?);
            Ok(())
        }
        Command::Compact { config } => {
            match ops::compact::run(&config).await? {
                Some(done) => println!(
                    "New base snapshot at {}: {} transactions, {} changes applied to the previous one.",
                    done.snapshot.lsn, done.transactions, done.changes
                ),
                None => println!("Nothing to compact: no snapshot yet, or no archived change after the newest one."),
            }
            Ok(())
        }
        Command::Snapshot {
            config,
            tables,
            wait,
            json,
        } => {
            let taken = ops::snapshot::run(&config, &tables, wait).await?;
            if json {
                print_json(&taken);
            } else {
                println!(
                    "Re-read {} at {}: restores to later points read {} from it.",
                    tables
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    taken.position(),
                    if tables.len() == 1 { "it" } else { "them" }
                );
            }
            Ok(())
        }
        Command::Prune {
            config,
            dry_run,
            json,
        } => {
            let Some(plan) = ops::prune::run(&config, dry_run).await? else {
                println!("The archive is empty; nothing to prune.");
                return Ok(());
            };
            if json {
                print_json(&plan);
            } else {
                let verb = if dry_run { "Would delete" } else { "Deleted" };
                println!(
                    "{verb} {} snapshots and {} segments ({}), and {} orphans older than a day; {} snapshots kept.",
                    plan.deleted_snapshots.len(),
                    plan.deleted_segments,
                    bytesize::ByteSize(plan.deleted_bytes),
                    plan.deleted_orphans.len(),
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
            allow_inexact,
            jobs,
            json,
        } => {
            use tidemark::restore::command::{parse_target, Request};
            let to = parse_target(&to)?;
            let target = target.as_deref().map(parse_target_url).transpose()?;
            let request = Request {
                to,
                predicate,
                target,
                tables,
                dry_run,
                data_only,
                force,
                into_source: i_know_this_is_the_source,
                allow_inexact,
                jobs: jobs.unwrap_or_else(tidemark::replay::load::default_jobs),
            };
            // With --json, stdout carries only the JSON; progress goes to stderr.
            let summary = ops::restore::run(&config, &request, &mut progress_out(json)).await?;
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
                    summary.tables.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
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
            use tidemark::restore::history::{parse_key, Query};
            let key = key
                .as_deref()
                .map(parse_key)
                .transpose()
                .map_err(OpError::from)?;
            let query = Query {
                table,
                key,
                from,
                to,
            };
            let stdout = std::io::BufWriter::new(std::io::stdout());
            ops::history::run(&config, &query, json, stdout).await
        }
        Command::Drill {
            config,
            target,
            json,
        } => {
            let target = parse_target_url(&target)?;
            let report = ops::drill::run(&config, &target, &mut progress_out(json)).await?;
            print_report(json, &report);
            ops::drill::differences(&report)
        }
        Command::Verify { config, deep, json } => {
            let report = ops::verify::run(&config, deep).await?;
            print_report(json, &report);
            ops::verify::problems(&report)
        }
        Command::Alerts {
            action: AlertsAction::Test { config },
        } => {
            let channels = ops::alerts::test(&config).await?;
            println!("Sent a test notification through: {}.", channels.join(", "));
            Ok(())
        }
        Command::Audit {
            config,
            since,
            json,
        } => {
            let entries = ops::audit::run(&config, since)?;
            if json {
                print_json(&entries);
            } else {
                print!("{}", ops::audit::print(&entries));
            }
            Ok(())
        }
        Command::Status { config, json } => {
            let status = ops::status::run(&config).await?;
            print_report(json, &status);
            ops::status::unhealthy(&status)
        }
    }
}

/// `--target`: a connection string; the password best comes from PGPASSWORD or ~/.pgpass.
fn parse_target_url(url: &str) -> Result<tidemark::pg::ConnInfo, OpError> {
    tidemark::pg::ConnInfo::parse(url).map_err(|e| OpError::Usage(format!("--target: {e}")))
}

/// Where progress goes: stdout, or stderr when stdout carries JSON.
fn progress_out(json: bool) -> Box<dyn Write> {
    if json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
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
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot print the report as JSON: {e}"),
    }
}
