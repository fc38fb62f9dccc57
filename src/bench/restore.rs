//! Restore rates, with the binary users run: a `tidemark restore` process
//! to the base snapshot's point (the snapshot load alone) and to the latest
//! point (the snapshot plus a pgbench backlog of changes), each beside a raw
//! binary `COPY FROM` plus a primary key of as many rows, and pg_restore of a
//! pg_dump of the snapshot's tables.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::report::RestoreResult;
use super::{current_lsn, BenchError, Options, Server};
use crate::telemetry::Progress;

const SOURCE: &str = "tidemark_bench_restore";
const TARGET: &str = "tidemark_bench_restored";

/// pgbench's TPC-B-like transaction over the accounts this bench made (its
/// built-in script reaches 100,000 accounts per branch, whatever exist).
const TPCB: &str = "\\set aid random(1, :accounts)
\\set bid random(1, :branches)
\\set tid random(1, 10 * :branches)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// What one spawned `tidemark restore` reported, and what it cost.
struct Restored {
    rows: u64,
    changes: u64,
    seconds: f64,
    peak_rss_mib: f64,
}

fn restore_to(server: &Server, config: &str, to: &str) -> Result<Restored, BenchError> {
    let target = server.conninfo(TARGET);
    let (cost, printed) = super::spawned::measure_output(
        server,
        &[
            "restore", "--config", config, "--to", to, "--target", &target, "--json",
        ],
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&printed).map_err(|e| BenchError::Tool {
            tool: "tidemark restore".into(),
            detail: format!("its --json output does not parse: {e}"),
        })?;
    let count = |key: &str| report[key].as_u64().unwrap_or_default();
    Ok(Restored {
        rows: count("rows_loaded"),
        changes: count("changes"),
        seconds: cost.seconds,
        peak_rss_mib: cost.peak_rss_mib,
    })
}

pub async fn run(server: &Server, options: &Options) -> Result<RestoreResult, BenchError> {
    let accounts = options.restore_rows.max(1);
    let branches = accounts.div_ceil(100_000);
    server.fresh_database(SOURCE).await?;
    server.run_tool(
        "pgbench",
        &[
            "-q",
            "-i",
            "-s",
            &branches.to_string(),
            "-I",
            "dtgp",
            &server.conninfo(SOURCE),
        ],
    )?;
    let client = server.connect(SOURCE).await?;
    client
        .batch_execute(&format!(
            "DELETE FROM pgbench_accounts WHERE aid > {accounts}; ALTER TABLE pgbench_history REPLICA IDENTITY FULL"
        ))
        .await?;
    let archive_dir = options.work_dir.join("restore-archive");
    let log_dir = options.work_dir.join("restore-log");
    for dir in [&archive_dir, &log_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    let archive_toml = format!(
        "[archive]\nurl = {:?}\n",
        format!("file://{}", archive_dir.display())
    );
    let config_text = super::capture_toml(
        server,
        SOURCE,
        &super::drain::PGBENCH_TABLES,
        "restore",
        &log_dir,
        &archive_toml,
    );
    let checked = super::checked_config(server, SOURCE, &config_text)?;
    let config_path = options.work_dir.join("restore.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = config_path.display().to_string();

    // Capture stores a base snapshot; the pgbench backlog after it is replayed.
    let progress = Arc::new(Progress::default());
    let (stop, stopped) = watch::channel(false);
    let observed = progress.clone();
    let archive = checked.config.archive.as_ref().expect("an archive");
    let store = crate::archive::store::open_configured(archive)
        .await
        .map_err(std::io::Error::other)?;
    let capture =
        tokio::spawn(
            async move { crate::capture::run_observed(&checked, stopped, observed).await },
        );
    let snapshot = loop {
        let latest = crate::archive::manifest::load_latest(&*store)
            .await
            .map_err(std::io::Error::other)?;
        if let Some(first) = latest.and_then(|(_, m)| m.snapshots.first().cloned()) {
            break first;
        }
        if capture.is_finished() {
            capture.await.expect("the capture task")?;
            return Err(std::io::Error::other("capture stopped before its base snapshot").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let script = options.work_dir.join("tpcb.sql");
    std::fs::write(&script, TPCB)?;
    let (accounts_var, branches_var) = (
        format!("accounts={accounts}"),
        format!("branches={branches}"),
    );
    let script_arg = script.display().to_string();
    super::pgbench_backlog(
        server,
        SOURCE,
        options.changes,
        &["-D", &accounts_var, "-D", &branches_var, "-f", &script_arg],
    )?;
    let end = current_lsn(&client).await?;
    let mut archived = progress.archived.subscribe();
    tokio::time::timeout(Duration::from_secs(300), archived.wait_for(|l| *l >= end))
        .await
        .map_err(|_| std::io::Error::other("the archive did not catch up within 5 minutes"))?
        .map_err(std::io::Error::other)?;
    stop.send_replace(true);
    capture.await.expect("the capture task")?;

    server.fresh_database(TARGET).await?;
    let loaded =
        tokio::task::block_in_place(|| restore_to(server, &config, &snapshot.lsn.to_string()))?;
    server.fresh_database(TARGET).await?;
    let latest = tokio::task::block_in_place(|| restore_to(server, &config, "latest"))?;

    // Compaction of the same point, as `tidemark compact` runs it: a new base
    // snapshot built in a scratch server from the archive alone.
    let compaction = tokio::task::block_in_place(|| {
        super::spawned::measure(server, &["compact", "--config", &config])
    })?;

    let copy_snapshot_seconds = copy_rows(server, &client, loaded.rows, options).await?;
    let copy_latest_seconds =
        copy_rows(server, &client, latest.rows + latest.changes, options).await?;

    // pg_restore of a pg_dump of the snapshot's tables (updates since kept their row counts).
    let dump = options.work_dir.join("pgbench.dump");
    let dump_path = dump.display().to_string();
    server.run_tool(
        "pg_dump",
        &[
            "-Fc",
            "-t",
            "pgbench_accounts",
            "-t",
            "pgbench_branches",
            "-t",
            "pgbench_tellers",
            "-f",
            &dump_path,
            &server.conninfo(SOURCE),
        ],
    )?;
    server.fresh_database(TARGET).await?;
    let started = Instant::now();
    server.run_tool("pg_restore", &["-d", &server.conninfo(TARGET), &dump_path])?;
    let pg_restore_seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&dump)?;
    drop(client);
    server.drop_database(TARGET).await?;
    server.drop_database(SOURCE).await?;
    for dir in [&archive_dir, &log_dir] {
        std::fs::remove_dir_all(dir)?;
    }
    let replay_seconds = (latest.seconds - loaded.seconds).max(f64::EPSILON);
    Ok(RestoreResult {
        rows: loaded.rows,
        changes: latest.changes,
        load_seconds: loaded.seconds,
        replay_seconds,
        total_seconds: latest.seconds,
        copy_seconds: copy_snapshot_seconds,
        pg_restore_seconds,
        ratio_vs_copy: copy_snapshot_seconds / loaded.seconds,
        ratio_vs_pg_restore: pg_restore_seconds / loaded.seconds,
        copy_all_seconds: copy_latest_seconds,
        restore_vs_copy: copy_latest_seconds / latest.seconds,
        rows_per_s: loaded.rows as f64 / loaded.seconds,
        changes_per_s: latest.changes as f64 / replay_seconds,
        peak_rss_mib: loaded.peak_rss_mib.max(latest.peak_rss_mib),
        compaction,
    })
}

/// Seconds to load `rows` rows of pgbench_accounts' shape with binary COPY
/// into a table without a key, plus the primary key: the rows are the
/// source's accounts, topped up, exported first (not timed).
async fn copy_rows(
    server: &Server,
    source: &tokio_postgres::Client,
    rows: u64,
    options: &Options,
) -> Result<f64, BenchError> {
    let copy_file = options.work_dir.join("accounts.copy");
    {
        let mut file = tokio::fs::File::create(&copy_file).await?;
        let sql = format!(
            "COPY (SELECT * FROM (SELECT aid, bid, abalance, filler FROM pgbench_accounts \
             UNION ALL SELECT 1000000000 + g, 1, 0, '' FROM generate_series(1, {rows}) g) a LIMIT {rows}) \
             TO STDOUT (FORMAT binary)"
        );
        let stream = source.copy_out(sql.as_str()).await?;
        futures_util::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
    }
    server.fresh_database(TARGET).await?;
    let target = server.connect(TARGET).await?;
    let started = Instant::now();
    target
        .batch_execute("CREATE TABLE a (aid int NOT NULL, bid int, abalance int, filler char(84))")
        .await?;
    {
        let sink = target.copy_in("COPY a FROM STDIN (FORMAT binary)").await?;
        futures_util::pin_mut!(sink);
        let data = tokio::fs::read(&copy_file).await?;
        for chunk in data.chunks(1 << 20) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
        }
        sink.finish().await?;
    }
    target
        .batch_execute("ALTER TABLE a ADD PRIMARY KEY (aid)")
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&copy_file)?;
    Ok(seconds)
}
