//! Capture: stream pgoutput from the slot into the segment log, and confirm to
//! PostgreSQL only what the log holds durably.
//!
//! Why the ack is safe:
//! - Records reach the log in the order the server sent them. The writer
//!   thread publishes a new durable resume LSN only after fsync returns, and
//!   that is the only value ever sent as the flush position. So the slot's
//!   `confirmed_flush_lsn` never passes what is fsynced here.
//! - The resume LSN advances at the end LSN of finished transactions, and at a
//!   keepalive position when no transaction is open and no streamed block is
//!   in progress: the server sends in order, so every transaction finished
//!   before a keepalive's position has already arrived, and is in the log
//!   before the Progress record that carries it. A streamed transaction still
//!   open at that point finishes later, so the server keeps it and resends it
//!   whole after a restart. A quiet table therefore never pins WAL.
//! - On start, replication resumes at the log's own resume LSN. If the slot
//!   has confirmed past it, changes are missing and capture refuses to run.

use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::archive::manifest::SourceId;
use crate::archive::uploader::{self, Uploader};
use crate::archive::ArchiveError;
use crate::base::exit::ExitCode;
use crate::base::position::{EndLsn, PgTimestamp};
use crate::base::retry::Retry;
use crate::base::table::{quote_ident, quote_literal};
use crate::config::Checked;
use crate::log::{Appender, LogError, LogWriter, Record, RecordKind};
use crate::source::conn::{ReplicationConnection, StreamFrame};
use crate::source::pgoutput::TxnState;
use crate::source::setup::{self, SourceSpec};
use crate::source::wire::{self, ServerFrame};
use crate::source::SourceError;
use crate::telemetry::{self, Progress};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the server sent an invalid replication frame: {0}")]
    Frame(#[from] wire::FrameError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl CaptureError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CaptureError::Source(e) => e.exit_code(),
            CaptureError::Log(e) => e.exit_code(),
            CaptureError::Archive(e) => e.exit_code(),
            CaptureError::Frame(_) => ExitCode::Failure,
        }
    }
}

impl CaptureError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CaptureError::Source(e) => e.is_retryable(),
            CaptureError::Log(_) | CaptureError::Frame(_) | CaptureError::Archive(_) => false,
        }
    }
}

/// Send a status update at least this often while durable progress is made,
/// so the slot's lag stays small without a message per fsync.
const MIN_STATUS_GAP: Duration = Duration::from_millis(100);
/// How often capture measures the local log and flushes change counts to metrics.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// Records go to the writer in batches of about this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// How long to wait for a slot still held by a previous, killed capture.
const SLOT_BUSY_WAIT: Duration = Duration::from_secs(60);

/// Runs capture until `shutdown` turns true; then fsyncs, confirms and returns.
/// Errors after streaming has started once are retried with backoff.
pub async fn run(
    checked: &Checked,
    shutdown: watch::Receiver<bool>,
) -> Result<EndLsn, CaptureError> {
    run_observed(checked, shutdown, Arc::default()).await
}

/// Like `run`, reporting positions through `progress` as they advance.
pub async fn run_observed(
    checked: &Checked,
    shutdown: watch::Receiver<bool>,
    progress: Arc<Progress>,
) -> Result<EndLsn, CaptureError> {
    let (retain_from, retained) = watch::channel(0);
    let (stop_feed, feed_stopped) = watch::channel(false);
    #[cfg(not(feature = "kafka"))]
    let feed: Option<tokio::task::JoinHandle<()>> = {
        // Config refuses [kafka] in a build without the feed.
        drop((retain_from, feed_stopped));
        None
    };
    #[cfg(feature = "kafka")]
    let feed = checked.config.kafka.as_ref().map(|config| {
        let feed = crate::sink::kafka::Feed {
            config: config.clone(),
            log_dir: checked.config.log.dir.clone(),
            tables: checked.tables.clone(),
            database: checked
                .pg
                .get_dbname()
                .or(checked.pg.get_user())
                .unwrap_or("postgres")
                .to_string(),
            source: checked.pg.clone(),
            slot: checked.config.source.slot.clone(),
            retain_from,
            progress: progress.clone(),
        };
        tokio::spawn(crate::sink::kafka::run(feed, feed_stopped))
    });
    let result = capture(
        checked,
        shutdown,
        feed.is_some().then_some(retained),
        progress,
    )
    .await;
    // The feed stops after capture's last write, so it publishes all of it.
    stop_feed.send_replace(true);
    if let Some(feed) = feed {
        let _ = feed.await;
    }
    result
}

async fn capture(
    checked: &Checked,
    mut shutdown: watch::Receiver<bool>,
    retained: Option<watch::Receiver<u64>>,
    progress: Arc<Progress>,
) -> Result<EndLsn, CaptureError> {
    let cfg = &checked.config;
    let (mut writer, recovery) = LogWriter::open(&cfg.log.dir, cfg.log.segment_size.as_u64())?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "cut a torn tail from the log"
        );
    }
    tracing::info!(dir = %cfg.log.dir.display(), resume = %recovery.resume_lsn, "opened the segment log");
    let store = match &cfg.archive {
        Some(archive) => Some(
            crate::archive::store::open_configured(archive)
                .await
                .map_err(ArchiveError::from)?,
        ),
        None => None,
    };
    let mut archive: Option<Archive> = None;
    let mut log_empty = recovery.empty;
    let mut streamed_once = false;
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let session = Session::start(checked, writer, log_empty, &progress).await;
        let outcome = match session {
            Ok(mut session) => {
                let streamed_before = streamed_once;
                streamed_once = true;
                retry.reset();
                log_empty = false;
                if store.is_none() && !streamed_before {
                    tracing::warn!("no [archive] configured: changes stay in the local log only");
                }
                if archive.is_none() {
                    if let (Some(store), Some(archive_cfg)) = (&store, &cfg.archive) {
                        let mut uploader = Uploader::new(
                            store.clone(),
                            &cfg.log.dir,
                            session.source.clone(),
                            progress.clone(),
                        );
                        if let Some(retained) = &retained {
                            uploader = uploader.keep_for(retained.clone());
                        }
                        let uploader = Arc::new(uploader);
                        if let Err(e) = uploader.check().await {
                            return Err(session.fail(Some(e.into())).await.0);
                        }
                        tokio::spawn(uploader::snapshot_when_missing(
                            uploader.clone(),
                            checked.pg.clone(),
                            checked.tables.clone(),
                        ));
                        archive = Some(Archive::start(
                            uploader,
                            archive_cfg.upload_interval,
                            archive_cfg.compact_interval,
                            cfg.retention.clone(),
                        ));
                    }
                }
                session.archive = archive.as_ref().map(|a| a.handle());
                let result = session.stream(&mut shutdown).await;
                if let (Ok(_), Some(archive)) = (&result, archive.take()) {
                    archive.finish().await;
                }
                result
            }
            Err((error, returned)) => Err((error, returned)),
        };
        match outcome {
            Ok(lsn) => return Ok(lsn),
            Err((error, Some(returned))) if streamed_once && error.is_retryable() => {
                metrics::counter!(telemetry::ERRORS, "kind" => "source").increment(1);
                let backoff = retry.next_delay();
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "capture interrupted; reconnecting");
                writer = returned;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(writer.durable_ack()),
                }
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The archive side of capture: the uploader task, fed by every seal.
struct Archive {
    uploader: Arc<Uploader>,
    handle: ArchiveHandle,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a session needs of the archive: when to seal, and whom to tell.
#[derive(Clone)]
struct ArchiveHandle {
    sealed: Arc<Notify>,
    interval: Duration,
}

/// How long a clean stop waits for the last segments to reach the store.
const FINAL_UPLOAD_WAIT: Duration = Duration::from_secs(30);

impl Archive {
    fn start(
        uploader: Arc<Uploader>,
        interval: Duration,
        compact_interval: Duration,
        retention: Option<crate::config::RetentionPolicy>,
    ) -> Archive {
        let sealed = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(crate::compact::compact_periodically(
            uploader.clone(),
            compact_interval,
            retention,
            stopped.clone(),
        ));
        let task = tokio::spawn(uploader::run(
            uploader.clone(),
            sealed.clone(),
            interval,
            stopped,
        ));
        Archive {
            uploader,
            handle: ArchiveHandle { sealed, interval },
            stop,
            task,
        }
    }

    fn handle(&self) -> ArchiveHandle {
        self.handle.clone()
    }

    /// Stops the uploader after one last pass over what capture sealed on its way out.
    async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        match tokio::time::timeout(FINAL_UPLOAD_WAIT, self.uploader.archive_sealed()).await {
            Ok(Ok(_)) => match self.uploader.head().await {
                Some((lsn, _)) => tracing::info!(archived = %lsn, "the archive holds everything captured"),
                None => tracing::info!("nothing to archive"),
            },
            Ok(Err(error)) => tracing::warn!(%error, "the last segments stay in the local log; the next start uploads them"),
            Err(_) => tracing::warn!("the store is slow; the last segments stay in the local log and the next start uploads them"),
        }
    }
}

struct Session {
    conn: ReplicationConnection,
    appender: Appender,
    status_interval: Duration,
    start: EndLsn,
    source: SourceId,
    archive: Option<ArchiveHandle>,
    log_dir: std::path::PathBuf,
    max_log_bytes: u64,
    progress: Arc<Progress>,
}

type Failed = (CaptureError, Option<LogWriter>);

impl Session {
    /// Checks the source, creates what is missing, and starts streaming after the log's resume LSN.
    async fn start(
        checked: &Checked,
        writer: LogWriter,
        log_empty: bool,
        progress: &Arc<Progress>,
    ) -> Result<Session, Failed> {
        let source = &checked.config.source;
        let spec = SourceSpec {
            config: &checked.pg,
            tables: &checked.tables,
            publication: &source.publication,
            slot: &source.slot,
        };
        let keep = |writer: LogWriter| move |e: SourceError| (CaptureError::from(e), Some(writer));
        let prepared = match setup::prepare(&spec).await {
            Ok(p) => p,
            Err(e) => return Err(keep(writer)(e)),
        };
        let mut conn = match ReplicationConnection::connect(&checked.pg).await {
            Ok(c) => c,
            Err(e) => return Err(keep(writer)(e)),
        };
        let system = match conn.simple_query("IDENTIFY_SYSTEM").await {
            Ok(rows) => rows.into_iter().next().unwrap_or_default(),
            Err(e) => return Err(keep(writer)(e)),
        };
        let field = |i: usize| system.get(i).cloned().flatten().unwrap_or_default();
        let source_id = SourceId {
            system_identifier: field(0),
            database: field(3),
            slot: source.slot.clone(),
        };
        let resume = writer.durable_ack();
        let slot_position = match prepared.slot {
            Some(slot) => slot.confirmed_flush,
            None => match setup::create_slot(&mut conn, &source.slot, setup::SlotKind::Permanent)
                .await
            {
                Ok(created) => created.consistent_point,
                Err(e) => return Err(keep(writer)(e)),
            },
        };
        if !log_empty && slot_position > resume {
            return Err(keep(writer)(SourceError::SlotAhead {
                slot: source.slot.clone(),
                confirmed: slot_position,
                log: resume,
            }));
        }
        let start = resume.max(slot_position);
        let options = if prepared.server_version_num >= 140000 {
            "proto_version '2', streaming 'on'"
        } else {
            "proto_version '1'"
        };
        let publication_names = quote_literal(&quote_ident(&source.publication));
        let command = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} ({options}, publication_names {publication_names}, messages 'true')",
            quote_ident(&source.slot)
        );
        let waited_since = Instant::now();
        loop {
            match conn.start_replication(&command).await {
                Ok(()) => break,
                // A killed capture's walsender may hold the slot until it notices the dead socket.
                Err(SourceError::Server { code, .. })
                    if code == "55006" && waited_since.elapsed() < SLOT_BUSY_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    conn = match ReplicationConnection::connect(&checked.pg).await {
                        Ok(c) => c,
                        Err(e) => return Err(keep(writer)(e)),
                    };
                }
                Err(e) => return Err(keep(writer)(e)),
            }
        }
        let timeout = Duration::from_millis(prepared.wal_sender_timeout_ms);
        let status_interval = if timeout.is_zero() {
            Duration::from_secs(1)
        } else {
            (timeout / 2).min(Duration::from_secs(1))
        };
        let appender = Appender::start(writer, Some(progress.durable.clone()));
        let session = Session {
            conn,
            appender,
            status_interval,
            start,
            source: source_id,
            archive: None,
            log_dir: checked.config.log.dir.clone(),
            max_log_bytes: checked.config.log.max_size.as_u64(),
            progress: progress.clone(),
        };
        if session
            .appender
            .append(vec![Record::marker(RecordKind::Resume, start)])
            .await
            .is_err()
        {
            return Err(session.fail(None).await);
        }
        tracing::info!(slot = %source.slot, %start, "streaming changes into the log");
        Ok(session)
    }

    /// Stops the writer and pairs its error (if it failed) or `error` with the writer.
    async fn fail(self, error: Option<CaptureError>) -> Failed {
        match self.appender.finish().await {
            Ok(writer) => (
                error.unwrap_or(CaptureError::Source(SourceError::Closed)),
                Some(writer),
            ),
            Err(log_error) => (CaptureError::Log(log_error), None),
        }
    }

    async fn stream(mut self, shutdown: &mut watch::Receiver<bool>) -> Result<EndLsn, Failed> {
        match self.pump(shutdown).await {
            Ok(()) => {}
            Err(e) => return Err(self.fail(Some(e)).await),
        }
        if self.archive.is_some() && self.appender.seal().await.is_err() {
            return Err(self.fail(None).await);
        }
        let writer = match self.appender.finish().await {
            Ok(w) => w,
            Err(e) => return Err((CaptureError::Log(e), None)),
        };
        let durable = writer.durable_ack();
        let confirm = async {
            self.conn
                .send_copy_data(wire::standby_status_update(durable, PgTimestamp::now()))
                .await?;
            self.conn.finish_copy().await
        };
        match tokio::time::timeout(Duration::from_secs(10), confirm).await {
            Ok(Ok(())) => {
                tracing::info!(confirmed = %durable, "stopped; the log is fsynced and confirmed")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, durable = %durable, "stopped; the final confirmation did not reach the server, which will resend from the last one")
            }
            Err(_) => {
                tracing::warn!(durable = %durable, "stopped; the server did not acknowledge the final confirmation in time")
            }
        }
        Ok(durable)
    }

    /// The streaming loop; returns when `shutdown` turns true.
    async fn pump(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), CaptureError> {
        let mut durable = self.appender.durable();
        let mut reported = EndLsn::default();
        let mut last_status = Instant::now() - self.status_interval;
        let mut next_status = Instant::now();
        let mut batch: Vec<Record> = Vec::new();
        let mut batch_bytes = 0usize;
        // The highest resume position appended so far, and what is open at
        // the end of what arrived.
        let mut appended_ack = self.start;
        let mut txn_state = TxnState::default();
        let mut reply_due = false;
        let mut received = 0u64;
        let mut last_report = Instant::now();
        let mut sealed = self.appender.sealed();
        let seal_interval = self.archive.as_ref().map(|a| a.interval);
        let mut next_seal = Instant::now() + seal_interval.unwrap_or(Duration::from_secs(3600));
        let mut unsealed = false;
        // The local log's size: measured once a second (it lists the log dir),
        // plus what was appended since.
        let mut measured_log_bytes = self.local_log_size().0;
        let mut next_measure = Instant::now() + MEASURE_EVERY;
        let mut appended_since_measure = 0u64;
        let mut counts = telemetry::ChangeCounts::default();
        let mut server_end = self.start.0;
        let mut last_full_warning: Option<Instant> = None;
        loop {
            while let Some(frame) = self.conn.try_next_frame()? {
                let data = match frame {
                    StreamFrame::CopyData(data) => data,
                    StreamFrame::CopyDone => return Err(SourceError::Closed.into()),
                };
                match wire::parse_server_frame(data)? {
                    ServerFrame::XLogData {
                        wal_start,
                        wal_end,
                        payload,
                    } => {
                        // What cannot be peeked at is logged as it came; readers name it.
                        if let Ok(peek) = txn_state.observe(&payload) {
                            if let Some(done) = peek.finished {
                                appended_ack = appended_ack.max(done.end_lsn);
                                self.progress.captured(done.time);
                            }
                            counts.observe(&peek, &payload, txn_state.block().is_some());
                        }
                        server_end = server_end.max(wal_end);
                        received += 1;
                        batch_bytes += payload.len();
                        let record = Record::wal(wal_start, payload);
                        appended_since_measure += record.encoded_len() as u64;
                        batch.push(record);
                        if batch_bytes >= BATCH_BYTES {
                            self.send_batch(&mut batch, &mut batch_bytes).await?;
                        }
                    }
                    ServerFrame::Keepalive {
                        wal_end,
                        reply_requested,
                    } => {
                        server_end = server_end.max(wal_end);
                        // With nothing open, the server's position is between transactions.
                        let position = EndLsn(wal_end);
                        if txn_state.between_transactions() && position > appended_ack {
                            batch.push(Record::marker(RecordKind::Progress, position));
                            appended_ack = position;
                        }
                        reply_due |= reply_requested;
                    }
                }
            }
            if !batch.is_empty() {
                self.send_batch(&mut batch, &mut batch_bytes).await?;
                unsealed = true;
            }
            let now = Instant::now();
            if reply_due || now >= next_status {
                let flushed = *durable.borrow_and_update();
                self.conn
                    .send_copy_data(wire::standby_status_update(flushed, PgTimestamp::now()))
                    .await?;
                reported = flushed;
                reply_due = false;
                last_status = now;
                next_status = now + self.status_interval;
                metrics::gauge!(telemetry::CONFIRMED_LSN).set(flushed.as_u64() as f64);
                metrics::gauge!(telemetry::SLOT_LAG_BYTES)
                    .set(server_end.bytes_since(flushed.0) as f64);
            }
            if now >= next_measure {
                next_measure = now + MEASURE_EVERY;
                counts.flush();
                let (log_bytes, log_segments) = self.local_log_size();
                metrics::gauge!(telemetry::LOG_BYTES).set(log_bytes as f64);
                metrics::gauge!(telemetry::LOG_SEGMENTS).set(log_segments as f64);
                measured_log_bytes = log_bytes;
                appended_since_measure = 0;
                if self.archive.is_some() {
                    metrics::gauge!(telemetry::ARCHIVE_HEAD_AGE)
                        .set(self.progress.head_age_seconds());
                }
            }
            // Checked before every read: past the bound, the slot keeps the WAL instead.
            let log_full = self.archive.is_some()
                && measured_log_bytes + appended_since_measure >= self.max_log_bytes;
            if log_full && last_full_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                tracing::error!(
                    limit = self.max_log_bytes,
                    "the local log is full of segments not yet archived (or, with [kafka], not yet in the broker); capture stops reading from the slot (PostgreSQL keeps the WAL) until the archive store (or the broker) catches up"
                );
                last_full_warning = Some(now);
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                tracing::info!(confirmed = %reported, messages = received, "capture progress");
                last_report = Instant::now();
            }
            tokio::select! {
                filled = self.conn.fill(), if !log_full => filled?,
                _ = tokio::time::sleep_until(next_seal.into()), if seal_interval.is_some() => {
                    if unsealed {
                        self.appender.seal().await.map_err(|()| CaptureError::Source(SourceError::Closed))?;
                        unsealed = false;
                    }
                    next_seal = Instant::now() + seal_interval.unwrap_or_default();
                }
                changed = sealed.changed() => {
                    if changed.is_ok() {
                        if let Some(archive) = &self.archive {
                            archive.sealed.notify_one();
                        }
                    }
                }
                changed = durable.changed() => {
                    if changed.is_err() {
                        // The writer thread stopped: its error surfaces from `fail`.
                        return Err(SourceError::Closed.into());
                    }
                    next_status = next_status.min(last_status + MIN_STATUS_GAP);
                }
                _ = tokio::time::sleep_until(next_status.into()) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Bytes and count of local segments: what the archive has not taken yet, plus the open one.
    fn local_log_size(&self) -> (u64, usize) {
        let segments = crate::log::segment::list(&self.log_dir).unwrap_or_default();
        let bytes = segments
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        (bytes, segments.len())
    }

    async fn send_batch(
        &self,
        batch: &mut Vec<Record>,
        bytes: &mut usize,
    ) -> Result<(), CaptureError> {
        *bytes = 0;
        self.appender
            .append(std::mem::take(batch))
            .await
            .map_err(|()| CaptureError::Source(SourceError::Closed))
    }
}
