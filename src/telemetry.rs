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
pub const LOG_FULL: &str = "tidemark_log_full";
pub const UPLOAD_SECONDS: &str = "tidemark_upload_seconds";
pub const UPLOAD_FAILURES: &str = "tidemark_upload_failures_total";
pub const ARCHIVE_HEAD_AGE: &str = "tidemark_archive_head_age_seconds";
pub const ERRORS: &str = "tidemark_errors_total";
pub const COMPACTION_SECONDS: &str = "tidemark_compaction_seconds";
pub const PRUNE_SECONDS: &str = "tidemark_prune_seconds";
pub const REREADS: &str = "tidemark_rereads_total";
pub const KAFKA_EVENTS: &str = "tidemark_kafka_events_total";
pub const KAFKA_DELIVERED_LSN: &str = "tidemark_kafka_delivered_lsn";
pub const KAFKA_FEED_UP: &str = "tidemark_kafka_feed_up";
pub const KAFKA_SNAPSHOT_COMPLETED: &str = "tidemark_kafka_snapshot_completed";
pub const ALERTS_SENT: &str = "tidemark_alerts_sent_total";
pub const ALERT_DELIVERY_FAILURES: &str = "tidemark_alert_delivery_failures_total";
pub const SCHEDULED_LAST_OK: &str = "tidemark_scheduled_last_ok";
pub const SCHEDULED_LAST_RUN: &str = "tidemark_scheduled_last_run_timestamp_seconds";
pub const DRILL_RTO_SECONDS: &str = "tidemark_drill_rto_seconds";
pub const DRILL_RPO_SECONDS: &str = "tidemark_drill_rpo_seconds";
pub const HEALTH: &str = "tidemark_health";
pub const CHECK_STATUS: &str = "tidemark_check_status";

/// What `/status` answers: the status as JSON, and whether it is critical.
pub type StatusFn = std::sync::Arc<
    dyn Fn()
            -> std::pin::Pin<Box<dyn std::future::Future<Output = (serde_json::Value, bool)> + Send>>
        + Send
        + Sync,
>;

/// Starts the HTTP server on `listen`: `/metrics` (Prometheus), and with
/// `status`, `/status` (its JSON) and `/healthz` (200, or 503 when critical).
/// Must run inside the tokio runtime.
pub fn install(listen: SocketAddr, status: Option<StatusFn>) -> Result<(), TelemetryError> {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let listen_error = |e: std::io::Error| TelemetryError::Listen {
        addr: listen,
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen_error)?;
    // Only the first recorder in a process takes effect (tests may run several).
    let handle = HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone();
    tokio::spawn(serve(listener, handle, status));
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
    describe_gauge!(
        LOG_FULL,
        "1 while the local log is full and capture leaves the WAL in the slot, else 0"
    );
    describe_histogram!(UPLOAD_SECONDS, Unit::Seconds, "Time to upload one segment");
    describe_counter!(UPLOAD_FAILURES, "Failed archive passes");
    describe_gauge!(
        ARCHIVE_HEAD_AGE,
        Unit::Seconds,
        "How far the newest archived commit trails the newest captured one: the live RPO"
    );
    describe_counter!(ERRORS, "Errors, by kind");
    describe_counter!(
        REREADS,
        "Re-reads stored: tables read from the source again after a change the stream cannot carry"
    );
    describe_counter!(KAFKA_EVENTS, "Events handed to the Kafka producer");
    describe_gauge!(
        HEALTH,
        "The daemon's last judged health: 0 ok, 1 warning, 2 critical"
    );
    describe_gauge!(
        CHECK_STATUS,
        "Each status check's last judgement, by check: 0 ok, 1 warning, 2 critical"
    );
    describe_counter!(ALERTS_SENT, "Alert notices delivered, by channel");
    describe_counter!(
        ALERT_DELIVERY_FAILURES,
        "Failed alert delivery attempts, by channel"
    );
    describe_gauge!(
        SCHEDULED_LAST_OK,
        "Whether the last scheduled run passed (1) or failed (0), by job"
    );
    describe_gauge!(
        SCHEDULED_LAST_RUN,
        Unit::Seconds,
        "When the last scheduled run finished, in seconds since the epoch, by job"
    );
    describe_gauge!(
        DRILL_RTO_SECONDS,
        Unit::Seconds,
        "The last scheduled drill's restore time"
    );
    describe_gauge!(
        DRILL_RPO_SECONDS,
        Unit::Seconds,
        "How long the last scheduled drill waited for the archive to cover its point"
    );
    describe_gauge!(
        KAFKA_DELIVERED_LSN,
        "The Kafka feed's watermark: every transaction ending here or before is in the broker"
    );
    describe_gauge!(
        KAFKA_FEED_UP,
        "1 while the Kafka feed publishes, 0 while the broker is unavailable or the feed stopped"
    );
    describe_gauge!(
        KAFKA_SNAPSHOT_COMPLETED,
        "1 once the Kafka feed's initial snapshot is acknowledged by the broker (Debezium's SnapshotCompleted)"
    );
    describe_histogram!(
        COMPACTION_SECONDS,
        Unit::Seconds,
        "Time to build a snapshot by compaction"
    );
    Ok(())
}

async fn serve(
    listener: tokio::net::TcpListener,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    status: Option<StatusFn>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, status) = (metrics.clone(), status.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (metrics, status) = (metrics.clone(), status.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(request.uri().path(), &metrics, status).await,
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn answer(
    path: &str,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    status: Option<StatusFn>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let respond = |code: u16, kind: &str, body: String| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", kind)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap_or_default()
    };
    match (path, status) {
        ("/metrics", _) => respond(200, "text/plain; version=0.0.4", metrics.render()),
        ("/status", Some(status)) => {
            let (json, _) = status().await;
            respond(200, "application/json", json.to_string())
        }
        ("/healthz", Some(status)) => {
            let (json, critical) = status().await;
            let code = if critical { 503 } else { 200 };
            respond(code, "application/json", json["health"].to_string())
        }
        _ => respond(
            404,
            "text/plain",
            "not found: try /metrics, /status or /healthz\n".into(),
        ),
    }
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
        use crate::source::pgoutput::{decode, Message, Truncate};
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
                    Ok(Message::Truncate(Truncate { relation_oids, .. })) => {
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
