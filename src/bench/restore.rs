//! Restore rates: the same rows restored by tidemark (snapshot load, then
//! change replay), by raw binary `COPY FROM` plus a primary key, and by
//! pg_restore of a pg_dump.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::report::RestoreResult;
use super::{current_lsn, peak_rss_mib, reset_peak_rss, BenchError, Options, Server};
use crate::replay::apply::Target;
use crate::restore::command::{self, Request};
use crate::telemetry::Progress;

const SOURCE: &str = "tidemark_bench_restore";
const TARGET: &str = "tidemark_bench_restored";
const TABLE: &str =
    "CREATE TABLE t (id bigint PRIMARY KEY, a numeric(12,2), b text, c timestamptz)";

pub async fn run(server: &Server, options: &Options) -> Result<RestoreResult, BenchError> {
    let rows = options.restore_rows;
    server.fresh_database(SOURCE).await?;
    let client = server.connect(SOURCE).await?;
    client
        .batch_execute(&format!(
            "{TABLE}; INSERT INTO t SELECT g, g / 100.0, md5(g::text) || md5((g + 1)::text), now() FROM generate_series(1, {rows}) g"
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
        &["public.t"],
        "restore",
        &log_dir,
        &archive_toml,
    );
    let checked = super::checked_config(server, SOURCE, &config_text)?;

    // Capture stores a base snapshot; the changes after it are replayed.
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
    loop {
        let latest = crate::archive::manifest::load_latest(&*store)
            .await
            .map_err(std::io::Error::other)?;
        if latest.is_some_and(|(_, m)| !m.snapshots.is_empty()) {
            break;
        }
        if capture.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .batch_execute("UPDATE t SET a = a + 1 WHERE id % 10 = 0")
        .await?;
    let end = current_lsn(&client).await?;
    let mut archived = progress.archived.subscribe();
    tokio::time::timeout(Duration::from_secs(120), archived.wait_for(|l| *l >= end))
        .await
        .map_err(|_| std::io::Error::other("the archive did not catch up within 2 minutes"))?
        .map_err(std::io::Error::other)?;
    stop.send_replace(true);
    capture.await.expect("the capture task")?;

    server.fresh_database(TARGET).await?;
    reset_peak_rss();
    let request = Request::new(Target::Latest, server.info(TARGET));
    let summary = command::run(
        &*store,
        &request,
        &options.work_dir,
        &mut std::io::sink(),
        &crate::replay::progress::Phases::hidden(),
    )
    .await?;
    let restore_rss = peak_rss_mib();

    // Compaction of the same point, as `tidemark compact` runs it: a new base
    // snapshot built in a scratch server from the archive alone.
    let compact_config = options.work_dir.join("compact.toml");
    std::fs::write(&compact_config, &config_text)?;
    let config_arg = compact_config.display().to_string();
    let compaction = tokio::task::block_in_place(|| {
        super::spawned::measure(server, &["compact", "--config", &config_arg])
    })?;

    // Raw COPY of the same rows: exported first (not timed), then loaded.
    let copy_file = options.work_dir.join("t.copy");
    {
        let mut file = tokio::fs::File::create(&copy_file).await?;
        let stream = client.copy_out("COPY t TO STDOUT (FORMAT binary)").await?;
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
        .batch_execute(&TABLE.replace(" PRIMARY KEY", ""))
        .await?;
    {
        let sink = target.copy_in("COPY t FROM STDIN (FORMAT binary)").await?;
        futures_util::pin_mut!(sink);
        let data = tokio::fs::read(&copy_file).await?;
        for chunk in data.chunks(1 << 20) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
        }
        sink.finish().await?;
    }
    target
        .batch_execute("ALTER TABLE t ADD PRIMARY KEY (id)")
        .await?;
    let copy_seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&copy_file)?;

    // pg_restore of a pg_dump of the same table.
    let dump = options.work_dir.join("t.dump");
    let dump_path = dump.display().to_string();
    server.run_tool(
        "pg_dump",
        &["-Fc", "-t", "t", "-f", &dump_path, &server.conninfo(SOURCE)],
    )?;
    server.fresh_database(TARGET).await?;
    let started = Instant::now();
    server.run_tool("pg_restore", &["-d", &server.conninfo(TARGET), &dump_path])?;
    let pg_restore_seconds = started.elapsed().as_secs_f64();
    std::fs::remove_file(&dump)?;
    drop(target);
    drop(client);
    server.drop_database(TARGET).await?;
    server.drop_database(SOURCE).await?;
    for dir in [&archive_dir, &log_dir] {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(RestoreResult {
        rows: summary.rows_loaded,
        changes: summary.changes,
        load_seconds: summary.load_seconds,
        replay_seconds: summary.replay_seconds,
        total_seconds: summary.seconds,
        copy_seconds,
        pg_restore_seconds,
        ratio_vs_copy: copy_seconds / summary.load_seconds,
        ratio_vs_pg_restore: pg_restore_seconds / summary.load_seconds,
        rows_per_s: summary.rows_loaded as f64 / summary.load_seconds,
        changes_per_s: summary.changes as f64 / summary.replay_seconds,
        peak_rss_mib: restore_rss,
        compaction,
    })
}
