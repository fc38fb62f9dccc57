//! One replication session: it checks the source, resumes the slot at the
//! log's own resume LSN (refusing a slot that confirmed past it: those
//! changes are not in the log), streams through `pump`, and on a clean stop
//! fsyncs, confirms the durable position and hands the log back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::tasks::SealSchedule;
use super::CaptureError;
use crate::archive::manifest::SourceId;
use crate::base::position::{EndLsn, PgTimestamp};
use crate::base::table::{quote_ident, quote_literal};
use crate::config::Checked;
use crate::log::{Appender, LogWriter, Record, RecordKind};
use crate::source::conn::ReplicationConnection;
use crate::source::setup::{self, SourceSpec};
use crate::source::wire;
use crate::source::SourceError;
use crate::telemetry::Progress;

/// How long to wait for a slot still held by a previous, killed capture.
const SLOT_BUSY_WAIT: Duration = Duration::from_secs(60);

/// One replication connection's life: from START_REPLICATION to a clean
/// stop or a failure that hands the log writer back for the next session.
pub(super) struct Session {
    pub(super) conn: ReplicationConnection,
    pub(super) appender: Appender,
    pub(super) status_interval: Duration,
    /// Where this session resumed: the log's durable resume LSN, or the new slot's start.
    pub(super) start: EndLsn,
    pub(super) source: SourceId,
    pub(super) archive: Option<SealSchedule>,
    pub(super) log_dir: std::path::PathBuf,
    pub(super) max_log_bytes: u64,
    pub(super) progress: Arc<Progress>,
    /// Whether the event triggers write schema notes into the stream.
    pub(super) notes_ddl: bool,
    /// Without notes, the watched tables' columns at the start (`source::setup::Prepared`).
    pub(super) columns_at_start: std::collections::HashMap<u32, Vec<(String, u32)>>,
}

/// A failed session's error, and the log writer when it survived.
pub(super) type Failed = (CaptureError, Option<LogWriter>);

impl Session {
    /// Checks the source, creates what is missing, and starts streaming after the log's resume LSN.
    pub(super) async fn start(
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
        if !prepared.notes_ddl {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| tracing::warn!(
                "the role may not create event triggers, so schema changes are seen only as new columns: capture re-reads a table whose columns change, and a restore to a point between the change and the re-read is refused (--allow-inexact overrides)"
            ));
        }
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
            notes_ddl: prepared.notes_ddl,
            columns_at_start: prepared.columns,
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
    pub(super) async fn fail(self, error: Option<CaptureError>) -> Failed {
        match self.appender.finish().await {
            Ok(writer) => (
                error.unwrap_or(CaptureError::Source(SourceError::Closed)),
                Some(writer),
            ),
            Err(log_error) => (CaptureError::Log(log_error), None),
        }
    }

    pub(super) async fn stream(
        mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<EndLsn, Failed> {
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
                .send_copy_data(wire::standby_status_update(
                    durable,
                    PgTimestamp::now(),
                    false,
                ))
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

    /// Bytes and count of local segments: what the archive has not taken yet, plus the open one.
    pub(super) fn local_log_size(&self) -> (u64, usize) {
        let segments = crate::log::segment::list(&self.log_dir).unwrap_or_default();
        let bytes = segments
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        (bytes, segments.len())
    }
}
