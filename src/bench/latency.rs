//! Latency at a fixed offered rate: from each transaction's commit to durable
//! in the log, to listed in the object store, and (with a broker) to in Kafka.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::report::LatencyResult;
use super::{capture_config, current_lsn, percentile, BenchError, Options, Server};
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
use crate::log::committed::{Assembler, Change, TxnInfo, TxnSink};
use crate::telemetry::Progress;

const DB: &str = "tidemark_bench_latency";
/// Offered load per connection at most; more connections for higher rates.
const PER_CONNECTION: u32 = 1000;
const SETTLE_WAIT: Duration = Duration::from_secs(60);

type Timeline = Arc<Mutex<Vec<(PgTimestamp, EndLsn)>>>;

/// Records when each new position was reported.
fn record(sender: &watch::Sender<EndLsn>) -> Timeline {
    let timeline: Timeline = Arc::default();
    let mut positions = sender.subscribe();
    let into = timeline.clone();
    tokio::spawn(async move {
        while positions.changed().await.is_ok() {
            let lsn = *positions.borrow_and_update();
            into.lock()
                .expect("the timeline")
                .push((PgTimestamp::from_system_time(SystemTime::now()), lsn));
        }
    });
    timeline
}

async fn wait_for(sender: &watch::Sender<EndLsn>, end: EndLsn) -> bool {
    let mut positions = sender.subscribe();
    tokio::time::timeout(SETTLE_WAIT, positions.wait_for(|lsn| *lsn >= end))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Each transaction's commit time and end position, from the log.
#[derive(Default)]
struct Commits(Vec<TxnInfo>);

impl TxnSink for Commits {
    type Error = crate::log::LogError;
    fn begin(&mut self, _: &TxnInfo) -> Result<(), Self::Error> {
        Ok(())
    }
    fn change(&mut self, _: &TxnInfo, _: Lsn, _: Change) -> Result<(), Self::Error> {
        Ok(())
    }
    fn commit(&mut self, txn: &TxnInfo) -> Result<(), Self::Error> {
        self.0.push(txn.clone());
        Ok(())
    }
    fn incomplete(&mut self, _: &TxnInfo) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Milliseconds from each commit to the first reported position covering it.
fn latencies(commits: &[TxnInfo], timeline: &Timeline) -> Vec<f64> {
    let timeline = timeline.lock().expect("the timeline");
    commits
        .iter()
        .filter_map(|txn| {
            let at = timeline.iter().find(|(_, lsn)| *lsn >= txn.end_lsn)?.0;
            Some((at.0 - txn.commit_time.0).max(0) as f64 / 1000.0)
        })
        .collect()
}

pub async fn run(
    server: &Server,
    rate: u32,
    options: &Options,
) -> Result<LatencyResult, BenchError> {
    server.fresh_database(DB).await?;
    let client = server.connect(DB).await?;
    client
        .batch_execute("CREATE TABLE lat (id bigserial PRIMARY KEY, note text)")
        .await?;
    let archive_dir = options.work_dir.join(format!("latency-archive-{rate}"));
    let log_dir = options.work_dir.join(format!("latency-log-{rate}"));
    for dir in [&archive_dir, &log_dir] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
    }
    let mut extra = format!("[archive]\nurl = \"file://{}\"\n", archive_dir.display());
    if let Some(brokers) = &options.kafka_brokers {
        extra += &format!(
            "[kafka]\nbrokers = {brokers:?}\ntopic_prefix = \"tidemark_bench_{}_{rate}\"\n",
            std::process::id()
        );
    }
    let checked = capture_config(server, DB, &["public.lat"], "lat", &log_dir, &extra)?;
    let progress = Arc::new(Progress::default());
    let timelines = [
        record(&progress.durable),
        record(&progress.archived),
        record(&progress.published),
    ];
    let (stop, stopped) = watch::channel(false);
    let observed = progress.clone();
    let capture =
        tokio::spawn(
            async move { crate::capture::run_observed(&checked, stopped, observed).await },
        );

    // Warm up: capture streams from its slot, and a first transaction has
    // gone all the way through, before the measured load.
    let started = Instant::now();
    while client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'lat' AND active",
            &[],
        )
        .await?
        .is_none()
    {
        if started.elapsed() > SETTLE_WAIT || capture.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .batch_execute("INSERT INTO lat (note) VALUES ('warm-up')")
        .await?;
    let warm = current_lsn(&client).await?;
    let kafka = options.kafka_brokers.is_some();
    // With Kafka, the producer must be connected too: its first events wait
    // for a producer id, which is start-up, not the feed's latency.
    let ready = wait_for(&progress.durable, warm).await
        && (!kafka || wait_for(&progress.published, warm).await);
    if !ready {
        return Err(BenchError::Tool {
            tool: "tidemark capture".into(),
            detail: "did not start streaming within a minute".into(),
        });
    }
    let measured_from = current_lsn(&client).await?;

    let connections = rate.div_ceil(PER_CONNECTION).max(1);
    let per_connection = f64::from(rate) / f64::from(connections);
    let started = Instant::now();
    let mut loads = Vec::new();
    for _ in 0..connections {
        let load = server.connect(DB).await?;
        let seconds = options.rate_seconds;
        loads.push(tokio::spawn(async move {
            let period = Duration::from_secs_f64(1.0 / per_connection);
            let count = (seconds * per_connection) as u64;
            let begin = tokio::time::Instant::now();
            for i in 0..count {
                // Open loop: a late transaction does not delay the next one's schedule.
                tokio::time::sleep_until(begin + period * i as u32).await;
                load.execute("INSERT INTO lat (note) VALUES ('x')", &[])
                    .await?;
            }
            Ok::<u64, tokio_postgres::Error>(count)
        }));
    }
    let mut sent = 0;
    for load in loads {
        sent += load.await.expect("a load task")?;
    }
    let offered_seconds = started.elapsed().as_secs_f64();
    let end = current_lsn(&client).await?;
    let settled = wait_for(&progress.durable, end).await
        && wait_for(&progress.archived, end).await
        && (!kafka || wait_for(&progress.published, end).await);
    stop.send_replace(true);
    capture.await.expect("the capture task")?;
    if !settled {
        return Err(BenchError::Tool {
            tool: "tidemark capture".into(),
            detail: format!("did not reach {end} within {SETTLE_WAIT:?}"),
        });
    }

    // Every transaction's end and commit time, read back from the archive.
    let store = crate::archive::store::open(
        &format!("file://{}", archive_dir.display()),
        &Default::default(),
    )
    .await
    .map_err(std::io::Error::other)?;
    let (_, manifest) = crate::archive::manifest::load_latest(&*store)
        .await
        .map_err(std::io::Error::other)?
        .ok_or_else(|| std::io::Error::other("the latency archive is empty"))?;
    let segments = tempfile::tempdir_in(&options.work_dir)?;
    crate::replay::load::fetch_segments(
        &*store,
        &manifest.segments,
        segments.path(),
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .map_err(std::io::Error::other)?;
    let mut commits = Commits::default();
    Assembler::run(segments.path(), &mut commits).map_err(std::io::Error::other)?;
    commits
        .0
        .retain(|txn| txn.commit_lsn >= CommitLsn(measured_from.0));

    let mut durable = latencies(&commits.0, &timelines[0]);
    let mut archived = latencies(&commits.0, &timelines[1]);
    let mut published = latencies(&commits.0, &timelines[2]);
    for dir in [&archive_dir, &log_dir] {
        std::fs::remove_dir_all(dir)?;
    }
    drop(client);
    server.drop_database(DB).await?;
    Ok(LatencyResult {
        offered_tx_per_s: rate,
        achieved_tx_per_s: sent as f64 / offered_seconds,
        transactions: commits.0.len() as u64,
        durable_p50_ms: percentile(&mut durable, 50.0),
        durable_p95_ms: percentile(&mut durable, 95.0),
        durable_p99_ms: percentile(&mut durable, 99.0),
        archive_p50_ms: percentile(&mut archived, 50.0),
        archive_p95_ms: percentile(&mut archived, 95.0),
        archive_p99_ms: percentile(&mut archived, 99.0),
        kafka_p50_ms: kafka.then(|| percentile(&mut published, 50.0)),
        kafka_p99_ms: kafka.then(|| percentile(&mut published, 99.0)),
    })
}
