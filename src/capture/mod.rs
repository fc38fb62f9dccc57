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

mod pump;
mod rereads;
mod session;
mod supervisor;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;

use self::session::Session;
use self::supervisor::Supervisor;
use crate::archive::uploader::Uploader;
use crate::archive::ArchiveError;
use crate::base::exit::ExitCode;
use crate::base::position::EndLsn;
use crate::base::retry::Retry;
use crate::config::Checked;
use crate::log::{LogError, LogWriter};
use crate::source::wire;
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
    let mut tasks = Supervisor::new();
    let retained = tasks::start_feed(checked, &progress, &mut tasks);
    let mut uploader = None;
    let result = capture(
        checked,
        shutdown,
        retained,
        &progress,
        &mut tasks,
        &mut uploader,
    )
    .await;
    // The tasks stop after capture's last write: the feed publishes all of it.
    tasks.stop().await;
    if let (Ok(_), Some(uploader)) = (&result, uploader) {
        tasks::final_upload(&uploader).await;
    }
    result
}

/// The reconnecting loop around sessions. The archive's tasks start with the
/// first session, which names the source the archive must belong to.
async fn capture(
    checked: &Checked,
    mut shutdown: watch::Receiver<bool>,
    mut retained: Option<watch::Receiver<u64>>,
    progress: &Arc<Progress>,
    tasks: &mut Supervisor,
    uploader: &mut Option<Arc<Uploader>>,
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
    let mut seals = None;
    let mut log_empty = recovery.empty;
    let mut streamed_once = false;
    // The ceiling keeps a reconnect within 4 s of the source accepting connections again.
    let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(4));
    loop {
        let outcome = match Session::start(checked, writer, log_empty, progress).await {
            Ok(mut session) => {
                if store.is_none() && !streamed_once {
                    tracing::warn!("no [archive] configured: changes stay in the local log only");
                }
                streamed_once = true;
                retry.reset();
                log_empty = false;
                if let (None, Some(store), Some(archive)) = (&seals, &store, &cfg.archive) {
                    let started = tasks::start_archive(
                        checked,
                        archive,
                        store.clone(),
                        session.source.clone(),
                        retained.take(),
                        progress,
                        tasks,
                    )
                    .await;
                    match started {
                        Ok((started, schedule)) => {
                            *uploader = Some(started);
                            seals = Some(schedule);
                        }
                        Err(e) => return Err(session.fail(Some(e.into())).await.0),
                    }
                }
                session.archive = seals.clone();
                session.stream(&mut shutdown).await
            }
            Err(failed) => Err(failed),
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
                    _ = shutdown.wait_for(|stop| *stop).map(drop) => return Ok(writer.durable_ack()),
                }
            }
            Err((error, _)) => return Err(error),
        }
    }
}
