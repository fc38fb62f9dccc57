//! The streaming loop: frames in, records to the writer thread, the durable
//! position back to the server. One screen of loop; the state it keeps
//! between reads lives in `Pump`, one concern per method.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;

use super::session::Session;
use super::CaptureError;
use crate::archive::manifest::Quiet;
use crate::base::position::{EndLsn, Lsn, PgTimestamp, Position};
use crate::log::{Record, RecordKind};
use crate::source::conn::StreamFrame;
use crate::source::pgoutput::{self, Message, Peek, PeekKind, TxnState};
use crate::source::sequences::HEARTBEAT_PREFIX;
use crate::source::wire::{self, ServerFrame};
use crate::source::SourceError;
use crate::telemetry::{self, ChangeCounts};

/// While durable progress is made behind the server's end, send a status
/// update at least this often, so the slot's lag stays small without a
/// message per fsync. Once the log holds all the server has, it is sent at
/// once: the walsender has nothing left to send and would otherwise idle
/// until the gap ends (a drained backlog: up to a sixth of the drain).
const MIN_STATUS_GAP: Duration = Duration::from_millis(100);
/// How often capture measures the local log and flushes change counts to metrics.
const MEASURE_EVERY: Duration = Duration::from_secs(1);
/// Records go to the writer in batches of about this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// How often a full log is said again while it stays full.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);
/// While the newest commit received is older than this (a backlog: a server
/// clock this far off only moves the choice below), each read waits until
/// `GULP` bytes are queued or `COALESCE` has passed, so it takes many
/// messages with one wakeup, one batch to the writer and one fsync. The
/// kernel does the waiting (a receive low-water mark): a timer alone still
/// woke the loop for every segment that arrived. On 2 cores each wakeup
/// may take the core the walsender needs. Streaming live, capture reads as
/// soon as anything arrives, for latency.
const BACKLOG_AGE_MICROS: i64 = 100_000;
const GULP: usize = 256 << 10;
const COALESCE: Duration = Duration::from_millis(1);
/// How often capture logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// After this long without a byte from the server, capture asks it to answer
/// (a status update with the reply flag); after as long again, the link is
/// dead. A cut that drops packets sends no FIN, and the server itself only
/// speaks every wal_sender_timeout / 2 when idle.
const SILENCE_PROBE: Duration = Duration::from_secs(3);

/// What the loop keeps between reads.
pub(super) struct Pump {
    durable: watch::Receiver<EndLsn>,
    reported: EndLsn,
    last_status: Instant,
    next_status: Instant,
    reply_due: bool,
    batch: Vec<Record>,
    batch_bytes: usize,
    /// The highest resume position appended so far.
    appended_ack: EndLsn,
    /// What is open at the end of what arrived.
    txn_state: TxnState,
    /// The end of the server's WAL, as its frames say.
    server_end: Lsn,

    sealed: watch::Receiver<u64>,
    next_seal: Option<Instant>,
    unsealed: bool,
    /// The local log's size: measured once a second (it lists the log dir),
    /// plus what was appended since.
    measured_log_bytes: u64,
    appended_since_measure: u64,
    next_measure: Instant,
    counts: ChangeCounts,
    received: u64,
    last_progress_log: Instant,
    last_full_warning: Option<Instant>,
    /// When the server was last heard from, and whether it was asked to answer since.
    last_heard: Instant,
    probed: bool,
    /// Tables the stream asks capture to read again.
    rereads: super::rereads::RereadWatch,
    /// Whether anything but heartbeats arrived since the last seal. True at
    /// the start: the open segment may hold what an earlier run wrote.
    content_since_seal: bool,
    /// Where the last sealed segment ends.
    last_seal_end: EndLsn,
    /// The newest transaction finished, and when.
    last_finished: Option<Position>,
    /// While catching up, the next read waits for a gulp until then.
    gather_until: Option<Instant>,
}

impl Session {
    /// The streaming loop; returns when `shutdown` turns true.
    pub(super) async fn pump(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), CaptureError> {
        let mut pump = Pump::new(self);
        loop {
            pump.absorb_frames(self).await?;
            if !pump.batch.is_empty() {
                pump.send_batch(self).await?;
                pump.unsealed = true;
            }
            let now = Instant::now();
            if pump.reply_due || now >= pump.next_status {
                pump.report(self, now).await?;
            }
            if now >= pump.next_measure {
                pump.measure(self, now);
            }
            // Checked before every read: past the bound, the slot keeps the WAL instead.
            let log_full = pump.log_full(self, now);
            pump.log_progress();
            let listen_until = pump.check_liveness(self, now, log_full).await?;
            let seal_at = pump.next_seal;
            let gather_until = pump.gather_until;
            tokio::select! {
                filled = async {
                    match gather_until {
                        Some(until) => self.conn.fill_gathering(GULP, until).await,
                        None => self.conn.fill().await,
                    }
                }, if !log_full => {
                    let now = Instant::now();
                    filled?;
                    pump.gather_until = pump.catching_up().then(|| now + COALESCE);
                    pump.heard(now);
                }
                _ = tokio::time::sleep_until(listen_until.into()), if !log_full => {}
                _ = tokio::time::sleep_until(seal_at.unwrap_or(now).into()), if seal_at.is_some() => {
                    pump.seal(self).await?;
                }
                changed = pump.sealed.changed() => {
                    if let (Ok(()), Some(archive)) = (changed, &self.archive) {
                        archive.sealed.notify_one();
                    }
                }
                changed = pump.durable.changed() => {
                    // The writer thread stopped: its error surfaces from `fail`.
                    changed.map_err(|_| SourceError::Closed)?;
                    let durable = *pump.durable.borrow();
                    let (end, last) = (pump.server_end, pump.last_status);
                    pump.next_status = status_due(durable, end, last, pump.next_status, Instant::now());
                }
                _ = tokio::time::sleep_until(pump.next_status.into()) => {}
                _ = shutdown.wait_for(|stop| *stop).map(drop) => return Ok(()),
            }
        }
    }
}

/// When to tell the server that `durable` is in the log, given the end of
/// what it has sent, when it was last told and when it would be told next.
fn status_due(
    durable: EndLsn,
    server_end: Lsn,
    last_status: Instant,
    next_status: Instant,
    now: Instant,
) -> Instant {
    if durable.0 >= server_end {
        now
    } else {
        next_status.min(last_status + MIN_STATUS_GAP)
    }
}

/// Whether a message changes nothing a restore reads: a transaction's
/// begin or commit, or a heartbeat.
fn carries_nothing(peek: &Peek, payload: &bytes::Bytes) -> bool {
    match peek.kind {
        PeekKind::Begin | PeekKind::Commit => true,
        PeekKind::Message => matches!(
            pgoutput::decode(payload, false),
            Ok(Message::LogicalMessage(m)) if m.prefix == HEARTBEAT_PREFIX
        ),
        _ => false,
    }
}

impl Pump {
    fn new(session: &Session) -> Pump {
        let now = Instant::now();
        Pump {
            durable: session.appender.durable(),
            reported: EndLsn::default(),
            last_status: now - session.status_interval,
            next_status: now,
            reply_due: false,
            batch: Vec::new(),
            batch_bytes: 0,
            appended_ack: session.start,
            txn_state: TxnState::default(),
            server_end: session.start.0,

            sealed: session.appender.sealed(),
            next_seal: session.archive.as_ref().map(|a| now + a.interval),
            unsealed: false,
            measured_log_bytes: session.local_log_size().0,
            appended_since_measure: 0,
            next_measure: now + MEASURE_EVERY,
            counts: ChangeCounts::default(),
            received: 0,
            last_progress_log: now,
            last_full_warning: None,
            last_heard: now,
            probed: false,
            rereads: super::rereads::RereadWatch::new(
                session.notes_ddl,
                session.columns_at_start.clone(),
                crate::archive::reread::Pending::in_dir(&session.log_dir),
            ),
            content_since_seal: true,
            last_seal_end: session.start,
            last_finished: None,
            gather_until: None,
        }
    }

    /// Whether the newest commit received is old: the server has a backlog to send.
    fn catching_up(&self) -> bool {
        self.last_finished
            .is_some_and(|p| PgTimestamp::now().0 - p.commit_time.0 > BACKLOG_AGE_MICROS)
    }

    /// Takes every frame already read from the socket into the batch.
    async fn absorb_frames(&mut self, session: &mut Session) -> Result<(), CaptureError> {
        while let Some(frame) = session.conn.try_next_frame()? {
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
                    self.server_end = self.server_end.max(wal_end);
                    // What cannot be peeked at is logged as it came; readers name it.
                    let observed = self.txn_state.observe(&payload);
                    if !observed
                        .as_ref()
                        .is_ok_and(|peek| carries_nothing(peek, &payload))
                    {
                        self.content_since_seal = true;
                    }
                    if let Ok(peek) = observed {
                        if let Some(done) = peek.finished {
                            self.appended_ack = self.appended_ack.max(done.end_lsn);
                            session.progress.captured(done.time);
                            self.last_finished = Some(Position {
                                commit_time: done.time,
                                lsn: done.end_lsn,
                            });
                        }
                        let in_block = self.txn_state.block().is_some();
                        self.counts.observe(&peek, &payload, in_block);
                        if session.archive.is_some() {
                            self.rereads.observe(&peek, &payload, in_block);
                        }
                    }
                    self.received += 1;
                    self.batch_bytes += payload.len();
                    let record = Record::wal(wal_start, payload);
                    self.appended_since_measure += record.encoded_len() as u64;
                    self.batch.push(record);
                    if self.batch_bytes >= BATCH_BYTES {
                        self.send_batch(session).await?;
                    }
                }
                ServerFrame::Keepalive {
                    wal_end,
                    reply_requested,
                } => {
                    self.server_end = self.server_end.max(wal_end);
                    // With nothing open, the server's position is between transactions.
                    let position = EndLsn(wal_end);
                    if self.txn_state.between_transactions() && position > self.appended_ack {
                        self.batch
                            .push(Record::marker(RecordKind::Progress, position));
                        self.appended_ack = position;
                    }
                    self.reply_due |= reply_requested;
                }
            }
        }
        if let Some(archive) = &session.archive {
            for table in self.rereads.due(self.txn_state.between_transactions()) {
                tracing::info!(%table, "the stream does not carry this table's new values: asking for a re-read");
                let _ = archive.rereads.send(table);
            }
        }
        Ok(())
    }

    async fn send_batch(&mut self, session: &Session) -> Result<(), CaptureError> {
        self.batch_bytes = 0;
        self.rereads.save()?;
        session
            .appender
            .append(std::mem::take(&mut self.batch))
            .await
            .map_err(|()| CaptureError::Source(SourceError::Closed))
    }

    /// Tells the server the durable position: the only flush position ever sent.
    async fn report(&mut self, session: &mut Session, now: Instant) -> Result<(), CaptureError> {
        let flushed = *self.durable.borrow_and_update();
        session
            .conn
            .send_copy_data(wire::standby_status_update(
                flushed,
                PgTimestamp::now(),
                false,
            ))
            .await?;
        self.reported = flushed;
        self.reply_due = false;
        self.last_status = now;
        self.next_status = now + session.status_interval;
        metrics::gauge!(telemetry::CONFIRMED_LSN).set(flushed.as_u64() as f64);
        metrics::gauge!(telemetry::SLOT_LAG_BYTES)
            .set(self.server_end.bytes_since(flushed.0) as f64);
        Ok(())
    }

    fn measure(&mut self, session: &Session, now: Instant) {
        self.next_measure = now + MEASURE_EVERY;
        self.counts.flush();
        let (log_bytes, log_segments) = session.local_log_size();
        metrics::gauge!(telemetry::LOG_BYTES).set(log_bytes as f64);
        metrics::gauge!(telemetry::LOG_SEGMENTS).set(log_segments as f64);
        self.measured_log_bytes = log_bytes;
        self.appended_since_measure = 0;
        if session.archive.is_some() {
            metrics::gauge!(telemetry::ARCHIVE_HEAD_AGE).set(session.progress.head_age_seconds());
        }
    }

    /// Whether the local log holds `[log] max_size` of what no reader has taken.
    fn log_full(&mut self, session: &Session, now: Instant) -> bool {
        let full = session.archive.is_some()
            && self.measured_log_bytes + self.appended_since_measure >= session.max_log_bytes;
        if full
            && self
                .last_full_warning
                .is_none_or(|t| t.elapsed() >= FULL_WARNING_EVERY)
        {
            tracing::error!(
                limit = session.max_log_bytes,
                "the local log is full of segments not yet archived (or, with [kafka], not yet in the broker); capture stops reading from the slot (PostgreSQL keeps the WAL) until the archive store (or the broker) catches up"
            );
            self.last_full_warning = Some(now);
        }
        metrics::gauge!(telemetry::LOG_FULL).set(f64::from(u8::from(full)));
        full
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.probed = false;
    }

    /// Probes a silent server, and fails the session when it stays silent.
    /// Returns when to look again. While the log is full nothing is read, so nothing is expected.
    async fn check_liveness(
        &mut self,
        session: &mut Session,
        now: Instant,
        log_full: bool,
    ) -> Result<Instant, CaptureError> {
        if log_full {
            self.heard(now);
        }
        let silent = now.duration_since(self.last_heard);
        if silent >= 2 * SILENCE_PROBE {
            return Err(SourceError::Silent(silent).into());
        }
        if silent >= SILENCE_PROBE && !self.probed {
            let flushed = *self.durable.borrow();
            session
                .conn
                .send_copy_data(wire::standby_status_update(
                    flushed,
                    PgTimestamp::now(),
                    true,
                ))
                .await?;
            self.probed = true;
        }
        Ok(self.last_heard
            + if self.probed {
                2 * SILENCE_PROBE
            } else {
                SILENCE_PROBE
            })
    }

    fn log_progress(&mut self) {
        if self.last_progress_log.elapsed() >= PROGRESS_EVERY {
            tracing::info!(confirmed = %self.reported, messages = self.received, "capture progress");
            self.last_progress_log = Instant::now();
        }
    }

    /// Seals what was appended since the last seal, so the uploader takes
    /// it. If that is only heartbeats (and progress markers), it says so
    /// instead, once durable: the archive records the quiet stretch in its
    /// manifest rather than a segment that changes nothing.
    async fn seal(&mut self, session: &Session) -> Result<(), CaptureError> {
        let durable = *self.durable.borrow();
        let quiet = self
            .last_finished
            .filter(|f| !self.content_since_seal && f.lsn > self.last_seal_end && f.lsn <= durable);
        match (&session.archive, quiet) {
            (Some(archive), Some(until)) => {
                archive.quiet.send_replace(Some(Quiet {
                    after: self.last_seal_end,
                    until,
                }));
            }
            _ if self.unsealed && self.content_since_seal => {
                session
                    .appender
                    .seal()
                    .await
                    .map_err(|()| CaptureError::Source(SourceError::Closed))?;
                self.unsealed = false;
                self.content_since_seal = false;
                self.last_seal_end = self.appended_ack;
            }
            _ => {}
        }
        self.next_seal = session
            .archive
            .as_ref()
            .map(|a| Instant::now() + a.interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_holding_all_the_server_sent_is_reported_at_once() {
        let now = Instant::now();
        let (last, next) = (now, now + Duration::from_secs(1));
        let end = Lsn(0x5000);
        assert_eq!(status_due(EndLsn(end), end, last, next, now), now);
        assert_eq!(
            status_due(EndLsn(Lsn(0x6000)), end, last, next, now),
            now,
            "a keepalive may end beyond the last change"
        );
    }

    #[test]
    fn durable_progress_behind_the_server_waits_for_the_gap() {
        let now = Instant::now();
        let behind = EndLsn(Lsn(0x4000));
        let end = Lsn(0x5000);
        let later = now + Duration::from_secs(1);
        assert_eq!(
            status_due(behind, end, now, later, now),
            now + MIN_STATUS_GAP
        );
        // A status already due sooner stays due then.
        let sooner = now + Duration::from_millis(1);
        assert_eq!(status_due(behind, end, now, sooner, now), sooner);
    }
}
