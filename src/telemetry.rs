//! Prometheus metrics: every series is named `tidemark_*` and served on
//! `[metrics] listen` at `/metrics` through metrics-exporter-prometheus.
//! Series carry no connection strings or credentials.

use crate::source::pgoutput::{Peek, PeekKind};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::base::exit::ExitCode;
use crate::base::position::{EndLsn, PgTimestamp};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot serve metrics on {addr}: {reason}; set [metrics] listen to a free address, e.g. \"127.0.0.1:9818\"")]
    Listen { addr: SocketAddr, reason: String },
}

impl TelemetryError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            TelemetryError::Listen { .. } => ExitCode::BadInput,
        }
    }
}

pub const SLOT_LAG_BYTES: &str = "tidemark_slot_lag_bytes";
pub const CONFIRMED_LSN: &str = "tidemark_confirmed_lsn";
pub const LOG_DURABLE_LSN: &str = "tidemark_log_durable_lsn";
pub const CHANGES: &str = "tidemark_changes_total";
pub const LOG_BYTES: &str = "tidemark_log_bytes";
pub const LOG_SEGMENTS: &str = "tidemark_log_segments";
pub const UPLOAD_SECONDS: &str = "tidemark_upload_seconds";
pub const UPLOAD_FAILURES: &str = "tidemark_upload_failures_total";
pub const ARCHIVE_HEAD_AGE: &str = "tidemark_archive_head_age_seconds";
pub const ERRORS: &str = "tidemark_errors_total";
pub const COMPACTION_SECONDS: &str = "tidemark_compaction_seconds";
pub const PRUNE_SECONDS: &str = "tidemark_prune_seconds";
pub const KAFKA_EVENTS: &str = "tidemark_kafka_events_total";
pub const KAFKA_DELIVERED_LSN: &str = "tidemark_kafka_delivered_lsn";

/// Starts the exporter on `listen`. Must run inside the tokio runtime.
pub fn install(listen: SocketAddr) -> Result<(), TelemetryError> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(listen)
        .build()
        .map_err(|e| TelemetryError::Listen {
            addr: listen,
            reason: e.to_string(),
        })?;
    // Only the first install in a process takes effect (tests may run several).
    if metrics::set_global_recorder(recorder).is_ok() {
        tokio::spawn(exporter);
    }
    describe_gauge!(
        SLOT_LAG_BYTES,
        Unit::Bytes,
        "WAL the server has written past what tidemark confirmed"
    );
    describe_gauge!(
        CONFIRMED_LSN,
        "The last LSN confirmed to PostgreSQL, as a number"
    );
    describe_gauge!(
        LOG_DURABLE_LSN,
        "The local log's resume position as of its last fsync, as a number: the most capture may confirm"
    );
    describe_counter!(CHANGES, "Changes captured, by table and op");
    describe_gauge!(LOG_BYTES, Unit::Bytes, "Size of the local segment log");
    describe_gauge!(LOG_SEGMENTS, "Segments in the local log");
    describe_histogram!(UPLOAD_SECONDS, Unit::Seconds, "Time to upload one segment");
    describe_counter!(UPLOAD_FAILURES, "Failed archive passes");
    describe_gauge!(
        ARCHIVE_HEAD_AGE,
        Unit::Seconds,
        "How far the newest archived commit trails the newest captured one: the live RPO"
    );
    describe_counter!(ERRORS, "Errors, by kind");
    describe_counter!(KAFKA_EVENTS, "Events handed to the Kafka producer");
    describe_gauge!(
        KAFKA_DELIVERED_LSN,
        "The Kafka feed's watermark: every transaction ending here or before is in the broker"
    );
    describe_histogram!(
        COMPACTION_SECONDS,
        Unit::Seconds,
        "Time to build a snapshot by compaction"
    );
    Ok(())
}

/// Commit times seen by capture and by the archive, for the head-age gauge;
/// and the positions each stage has reached, for whoever watches (`tidemark bench`).
#[derive(Default)]
pub struct Progress {
    captured_us: AtomicI64,
    archived_us: AtomicI64,
    /// Every transaction ending here or before is fsynced in the log.
    pub durable: tokio::sync::watch::Sender<EndLsn>,
    /// ... is in the object store, listed by a stored manifest.
    pub archived: tokio::sync::watch::Sender<EndLsn>,
    /// ... is acknowledged by the Kafka broker.
    pub published: tokio::sync::watch::Sender<EndLsn>,
}

impl Progress {
    pub fn captured(&self, time: PgTimestamp) {
        self.captured_us.fetch_max(time.0, Ordering::Relaxed);
    }

    /// The commit time of the newest transaction captured (0 before the first).
    pub fn captured_at(&self) -> PgTimestamp {
        PgTimestamp(self.captured_us.load(Ordering::Relaxed))
    }

    pub fn archived(&self, time: PgTimestamp) {
        self.archived_us.fetch_max(time.0, Ordering::Relaxed);
    }

    /// Seconds between the newest captured and the newest archived commit.
    pub fn head_age_seconds(&self) -> f64 {
        let captured = self.captured_us.load(Ordering::Relaxed);
        let archived = self.archived_us.load(Ordering::Relaxed);
        (captured - archived).max(0) as f64 / 1e6
    }
}

/// Counts changes per table and op in capture's loop, flushing to the
/// recorder on each status tick rather than once per message.
#[derive(Default)]
pub struct ChangeCounts {
    names: std::collections::HashMap<u32, String>,
    pending: std::collections::HashMap<(u32, &'static str), u64>,
}

impl ChangeCounts {
    /// Notes one pgoutput message, peeked at already; `in_block` says whether
    /// it carries a stream xid.
    pub fn observe(&mut self, peek: &Peek, payload: &bytes::Bytes, in_block: bool) {
        use crate::source::pgoutput::{decode, Message};
        let op = match peek.kind {
            PeekKind::Insert => "insert",
            PeekKind::Update => "update",
            PeekKind::Delete => "delete",
            // Rare enough to decode whole.
            PeekKind::Relation | PeekKind::Truncate => {
                match decode(payload, in_block) {
                    Ok(Message::Relation(r)) => {
                        self.names.insert(r.oid, r.table().to_string());
                    }
                    Ok(Message::Truncate { relation_oids, .. }) => {
                        for oid in relation_oids {
                            *self.pending.entry((oid, "truncate")).or_default() += 1;
                        }
                    }
                    _ => {}
                }
                return;
            }
            _ => return,
        };
        if let Some(oid) = peek.relation_oid {
            *self.pending.entry((oid, op)).or_default() += 1;
        }
    }

    pub fn flush(&mut self) {
        for ((oid, op), count) in self.pending.drain() {
            let table = self
                .names
                .get(&oid)
                .cloned()
                .unwrap_or_else(|| format!("oid:{oid}"));
            metrics::counter!(CHANGES, "table" => table, "op" => op).increment(count);
        }
    }
}
