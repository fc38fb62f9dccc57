//! What capture starts beside its own loop, under the supervisor: the Kafka
//! feed, and for an archive the uploader, the base-snapshot task, the
//! re-reads, the compactor and the sequence sampler. None of them ever holds up the
//! capture loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::supervisor::Supervisor;
use crate::archive::manifest::SourceId;
use crate::archive::store::ObjectStore;
use crate::archive::uploader::{self, Uploader};
use crate::archive::ArchiveError;
use crate::config::{ArchiveConfig, Checked};
use crate::telemetry::Progress;

/// How long a clean stop waits for the last segments to reach the store.
const FINAL_UPLOAD_WAIT: Duration = Duration::from_secs(30);

/// What a session needs of the archive: when to seal, and whom to tell.
#[derive(Clone)]
pub(super) struct SealSchedule {
    pub(super) sealed: Arc<Notify>,
    pub(super) interval: Duration,
    /// Where the stream's own requests for re-reads go.
    pub(super) rereads: crate::archive::reread::Requests,
    /// Where a quiet stretch past the last seal is said, instead of sealing heartbeats.
    pub(super) quiet: Arc<watch::Sender<Option<crate::archive::manifest::Quiet>>>,
}

/// Starts the Kafka feed if `[kafka]` is set. Returns the oldest segment the
/// feed still needs, which the uploader must keep.
#[cfg(feature = "kafka")]
pub(super) fn start_feed(
    checked: &Checked,
    progress: &Arc<Progress>,
    tasks: &mut Supervisor,
) -> Option<watch::Receiver<u64>> {
    let config = checked.config.kafka.as_ref()?;
    let (retain_from, retained) = watch::channel(0);
    let feed = crate::sink::kafka::Feed {
        config: config.clone(),
        log_dir: checked.config.log.dir.clone(),
        tables: checked.tables.clone(),
        database: checked.pg.database().to_string(),
        source: checked.pg.clone(),
        slot: checked.config.source.slot.clone(),
        retain_from,
        progress: progress.clone(),
    };
    tasks.spawn("kafka feed", |stop| crate::sink::kafka::run(feed, stop));
    Some(retained)
}

/// Config refuses `[kafka]` in a build without the feed.
#[cfg(not(feature = "kafka"))]
pub(super) fn start_feed(
    _checked: &Checked,
    _progress: &Arc<Progress>,
    _tasks: &mut Supervisor,
) -> Option<watch::Receiver<u64>> {
    None
}

/// Checks the archive belongs to `source`, then starts the uploader, the
/// base-snapshot task and the compactor. Returns the uploader, for the last
/// pass on a clean stop, and when sessions must seal.
pub(super) async fn start_archive(
    checked: &Checked,
    archive: &ArchiveConfig,
    store: Arc<dyn ObjectStore>,
    source: SourceId,
    retained: Option<watch::Receiver<u64>>,
    progress: &Arc<Progress>,
    tasks: &mut Supervisor,
) -> Result<(Arc<Uploader>, SealSchedule), ArchiveError> {
    let cfg = &checked.config;
    let mut uploader = Uploader::new(store, &cfg.log.dir, source, progress.clone());
    if let Some(retained) = retained {
        uploader = uploader.keep_for(retained);
    }
    let uploader = Arc::new(uploader);
    uploader.check().await?;

    let (pg, tables) = (checked.pg.clone(), checked.tables.clone());
    let snapshotter = uploader.clone();
    tasks.spawn("base snapshot", move |mut stop| async move {
        tokio::select! {
            () = uploader::snapshot_when_missing(snapshotter, pg, tables) => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
    });
    let (rereads, requests) = crate::archive::reread::channel();
    let (rereader, pg, tables) = (uploader.clone(), checked.pg.clone(), checked.tables.clone());
    let publication = cfg.source.publication.clone();
    tasks.spawn("re-reads", move |stop| async move {
        crate::archive::reread::serve(rereader, pg, &publication, tables, requests, stop).await
    });
    let (compactor, interval, retention) = (
        uploader.clone(),
        archive.compact_interval,
        cfg.retention.clone(),
    );
    let asks = rereads.clone();
    tasks.spawn("compactor", move |stop| {
        crate::compact::compact_periodically(compactor, asks, interval, retention, stop)
    });
    let beat = Beat {
        pg: checked.pg.clone(),
        tables: checked.tables.clone(),
        sample_every: archive.upload_interval,
        quiet_after: archive.heartbeat_interval,
        progress: progress.clone(),
    };
    tasks.spawn("heartbeat", move |stop| beat.run(stop));
    let (quiet, said_quiet) = watch::channel(None);
    let seals = SealSchedule {
        sealed: Arc::new(Notify::new()),
        interval: archive.upload_interval,
        rereads,
        quiet: Arc::new(quiet),
    };
    let (runner, sealed, interval) = (uploader.clone(), seals.sealed.clone(), seals.interval);
    tasks.spawn("uploader", move |stop| {
        uploader::run(runner, sealed, said_quiet, interval, stop)
    });
    Ok((uploader, seals))
}

/// What capture writes into the stream itself (`source::sequences`): a
/// sample of the watched tables' sequences when one moved, and a heartbeat
/// when nothing has committed for `quiet_after`. A failure is logged and
/// tried again next time: a missed sample only makes restore rely on the
/// restored rows, and a missed heartbeat only leaves the window where it was.
struct Beat {
    pg: crate::pg::ConnInfo,
    tables: Vec<crate::base::table::TableName>,
    sample_every: Duration,
    quiet_after: Duration,
    progress: Arc<Progress>,
}

impl Beat {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        use crate::source::sequences;
        let mut last = sequences::Sample::new();
        let mut client = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.sample_every) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            if client.is_none() {
                client = self.pg.connect().await.ok();
            }
            let Some(connected) = &client else { continue };
            let wrote = match sequences::sample(connected, &self.tables).await {
                Ok(sample) if sample != last => sequences::emit(connected, &sample)
                    .await
                    .map(|()| last = sample),
                Ok(_) if self.quiet() => sequences::heartbeat(connected).await,
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(error) = wrote {
                tracing::warn!(%error, "writing a sequence sample or heartbeat failed; trying again");
                client = None;
            }
        }
    }

    /// Whether nothing was captured for `quiet_after` (by the server's clock, as commit times are).
    fn quiet(&self) -> bool {
        let since = crate::base::position::PgTimestamp::now().0 - self.progress.captured_at().0;
        since >= self.quiet_after.as_micros() as i64
    }
}

/// One last pass over what capture sealed on its way out.
pub(super) async fn final_upload(uploader: &Uploader) {
    match tokio::time::timeout(FINAL_UPLOAD_WAIT, uploader.archive_sealed()).await {
        Ok(Ok(_)) => match uploader.head().await {
            Some((lsn, _)) => tracing::info!(archived = %lsn, "the archive holds everything captured"),
            None => tracing::info!("nothing to archive"),
        },
        Ok(Err(error)) => tracing::warn!(%error, "the last segments stay in the local log; the next start uploads them"),
        Err(_) => tracing::warn!("the store is slow; the last segments stay in the local log and the next start uploads them"),
    }
}
