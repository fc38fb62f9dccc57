//! The audit feed: every committed change in the segment log, published to
//! Kafka as a Debezium-style event, exactly once across restarts.
//!
//! Why nothing is lost or duplicated:
//! - The feed reads the log, not the slot, so it sees exactly the committed
//!   transactions the archive sees, once each, in commit order
//!   (`log::committed`). Kafka never holds the slot back; the local log keeps
//!   each segment until the feed is past it (within `[log] max_size`).
//! - Each event carries its position (commit LSN, index in the transaction)
//!   in a header. Positions come from the log alone, so an event produced
//!   again after a crash has the same position as before.
//! - The producer is idempotent, waits for every replica, never times a
//!   message out, and stops on any failure that could leave a gap. So what a
//!   partition holds of the feed's events is always a prefix of what the feed
//!   sent it, in order.
//! - A session starts by reading the position of the last event in each
//!   partition, then reads the log from its durable watermark (every
//!   transaction ending at or before it is in the broker). An event goes out
//!   only if its position is past its partition's last one. With the prefix
//!   property, that publishes exactly the events missing, once.
//! - The watermark advances only when every event up to a transaction's end
//!   (or up to a Progress record, written while no transaction was open) is
//!   acknowledged, and is fsynced before the log may drop what it covers.

pub mod broker;
pub mod envelope;
pub mod position;
mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::sync::watch;

use self::envelope::{Encoder, Event, Format};
use self::position::{EventPosition, Watermark, HEADER};
use crate::base::position::{EndLsn, Lsn};
use crate::base::retry::Retry;
use crate::base::table::TableName;
use crate::config::KafkaConfig;
use crate::log::committed::{Assembler, Change, LogDir, TxnInfo, TxnSink};
use crate::log::reader::LogTail;
use crate::log::segment::{self, SegmentReader};
use crate::log::LogError;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the Kafka broker: {0}")]
    Broker(#[from] KafkaError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("the feed's position file {}: {source}; it must be writable (it lives in [log] dir)", path.display())]
    Watermark {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl FeedError {
    /// Broker or source trouble passes; a damaged log or position file does not.
    pub fn is_retryable(&self) -> bool {
        match self {
            FeedError::Broker(_) => true,
            FeedError::Source(e) => e.is_retryable(),
            FeedError::Log(_) | FeedError::Watermark { .. } => false,
        }
    }
}

/// What the feed publishes, and from where.
#[derive(Clone)]
pub struct Feed {
    pub config: KafkaConfig,
    pub log_dir: PathBuf,
    pub tables: Vec<TableName>,
    pub database: String,
    /// The source and capture's slot, for the initial snapshot.
    pub source: crate::pg::ConnInfo,
    pub slot: String,
    /// Tells the log's owner the oldest segment the feed still needs.
    pub retain_from: watch::Sender<u64>,
    pub progress: std::sync::Arc<crate::telemetry::Progress>,
}

/// Events the producer may hold unacknowledged before the feed waits.
const IN_FLIGHT: usize = 50_000;
/// Bytes of large column values kept to fill unchanged TOAST.
const TOAST_CACHE_BYTES: usize = 64 << 20;
/// How often a caught-up feed looks for new records in the log.
const TAIL_POLL: Duration = Duration::from_millis(10);
/// How often an advancing watermark is made durable.
const WATERMARK_EVERY: Duration = Duration::from_millis(250);
/// How long a stopping feed waits for the broker to acknowledge what it sent.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs the feed until `shutdown`, starting a new session after broker trouble.
pub async fn run(feed: Feed, mut shutdown: watch::Receiver<bool>) {
    let mut retry = Retry::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let outcome = session(&feed, shutdown.clone()).await;
        let backoff = retry.next_delay();
        match outcome {
            Ok(()) => return,
            Err(error) if error.is_retryable() => {
                metrics::gauge!(crate::telemetry::KAFKA_FEED_UP).set(0.0);
                metrics::counter!(crate::telemetry::ERRORS, "kind" => "kafka").increment(1);
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "the Kafka feed is behind: the broker is unavailable; capture and archive carry on and the local log keeps the segments until it returns");
            }
            Err(error) => {
                metrics::gauge!(crate::telemetry::KAFKA_FEED_UP).set(0.0);
                metrics::counter!(crate::telemetry::ERRORS, "kind" => "kafka").increment(1);
                tracing::error!(%error, "the Kafka feed stopped; capture and archive carry on");
                return;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn session(feed: &Feed, shutdown: watch::Receiver<bool>) -> Result<(), FeedError> {
    let format = Format {
        topic_prefix: feed.config.topic_prefix.clone(),
        database: feed.database.clone(),
        time_format: feed.config.time_format,
        unavailable_value: feed.config.unavailable_value.clone(),
        transaction_metadata: feed.config.transaction_topic,
    };
    let encoder = Encoder::new(format, TOAST_CACHE_BYTES);
    let mut topics: Vec<String> = feed
        .tables
        .iter()
        .map(|t| format!("{}.{}.{}", feed.config.topic_prefix, t.schema, t.name))
        .collect();
    if feed.config.transaction_topic {
        topics.push(encoder.transaction_topic());
    }
    let partitions = broker::ensure_topics(&feed.config, &topics).await?;
    let config = feed.config.clone();
    let known = partitions.clone();
    let last = tokio::task::spawn_blocking(move || broker::last_positions(&config, &known))
        .await
        .expect("reading the last positions")?;
    let producer = broker::producer(&feed.config)?;
    let watermark = Watermark::in_dir(&feed.log_dir);
    let delivered = watermark.load().map_err(|source| FeedError::Watermark {
        path: watermark.path().to_path_buf(),
        source,
    })?;
    let start = start_segment(&feed.log_dir, delivered)?;
    feed.retain_from.send_replace(start);
    tracing::info!(
        from = %delivered.map_or_else(|| "the start of the local log".to_string(), |l| l.to_string()),
        partitions_with_events = last.len(),
        "the Kafka feed is publishing"
    );
    metrics::gauge!(crate::telemetry::KAFKA_FEED_UP).set(1.0);
    let mut sink = KafkaSink {
        encoder,
        producer,
        partitions,
        last,
        pending: VecDeque::new(),
        skip_through: delivered,
        skipping: false,
        index: 1,
        order: HashMap::new(),
        delivered,
        stored: delivered,
        stored_at: Instant::now(),
        watermark,
        log_dir: feed.log_dir.clone(),
        retain_from: feed.retain_from.clone(),
        progress: feed.progress.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let dir = feed.log_dir.clone();
    let snapshot_wanted = feed.config.snapshot;
    let snapshot = (delivered.is_none() && snapshot_wanted)
        .then(|| (feed.source.clone(), feed.slot.clone(), feed.tables.clone()));
    tokio::task::spawn_blocking(move || -> Result<(), FeedError> {
        let mut start = start;
        if let Some((source, slot, tables)) = snapshot {
            let point = snapshot::publish(&source, &slot, &tables, &mut sink)?;
            sink.settle_snapshot(point)?;
            start = start_segment(&dir, Some(point))?;
        }
        // Once anything is delivered, the snapshot (if wanted) is in the broker.
        if snapshot_wanted {
            metrics::gauge!(crate::telemetry::KAFKA_SNAPSHOT_COMPLETED).set(1.0);
        }
        let mut tail = LogTail::at_segment(&dir, start);
        let mut assembler = Assembler::new(LogDir(dir.clone()));
        let mut settled = Instant::now();
        loop {
            match tail.next_record()? {
                Some((position, record)) => assembler.push(position, record, &mut sink)?,
                None => {
                    sink.settle(false)?;
                    settled = Instant::now();
                    if *shutdown.borrow() {
                        return sink.stop();
                    }
                    std::thread::sleep(TAIL_POLL);
                }
            }
            if settled.elapsed() > Duration::from_millis(200) {
                sink.settle(false)?;
                settled = Instant::now();
            }
        }
    })
    .await
    .expect("the Kafka feed thread")
}

/// The segment to start reading at so that every transaction ending after
/// `delivered` is seen whole: the one holding `delivered`, or further back
/// where transactions open at its start began.
pub fn start_segment(dir: &Path, delivered: Option<EndLsn>) -> Result<u64, LogError> {
    let mut headers = Vec::new();
    for (seq, path) in segment::list(dir)? {
        if let Some(reader) = SegmentReader::open(&path)? {
            headers.push((seq, reader.base_ack(), reader.restart()));
        }
    }
    let Some(&(first, _, _)) = headers.first() else {
        return Ok(1);
    };
    let Some(delivered) = delivered else {
        return Ok(first);
    };
    let holding = headers
        .iter()
        .rev()
        .find(|(_, base, _)| *base <= delivered)
        .copied()
        .unwrap_or(headers[0]);
    let restart = holding.2.min(holding.1);
    Ok(headers
        .iter()
        .rev()
        .find(|(_, base, _)| *base <= restart)
        .map_or(first, |h| h.0))
}

enum Pending {
    Delivery(DeliveryFuture),
    /// Every event before this is acknowledged once it reaches the front.
    TxnEnd(EndLsn),
}

struct KafkaSink {
    encoder: Encoder,
    producer: FutureProducer,
    partitions: HashMap<String, i32>,
    /// Per partition, the last position it held when the session began.
    last: HashMap<(String, i32), EventPosition>,
    pending: VecDeque<Pending>,
    /// Transactions ending at or before this are in the broker already.
    skip_through: Option<EndLsn>,
    skipping: bool,
    /// The next change's index within its transaction.
    index: u32,
    order: HashMap<String, u64>,
    delivered: Option<EndLsn>,
    stored: Option<EndLsn>,
    stored_at: Instant,
    watermark: Watermark,
    log_dir: PathBuf,
    retain_from: watch::Sender<u64>,
    progress: std::sync::Arc<crate::telemetry::Progress>,
    runtime: tokio::runtime::Handle,
}

impl KafkaSink {
    fn partition_for(&self, event: &Event) -> i32 {
        let count = self.partitions.get(&event.topic).copied().unwrap_or(1);
        match &event.key {
            // Deterministic, so an event sent again goes where it went before.
            Some(key) => (crc32c::crc32c(key.as_bytes()) % count as u32) as i32,
            None => 0,
        }
    }

    fn publish(&mut self, event: Event) -> Result<(), FeedError> {
        let partition = self.partition_for(&event);
        if self
            .last
            .get(&(event.topic.clone(), partition))
            .is_some_and(|last| event.position <= *last)
        {
            return Ok(());
        }
        let position = event.position.to_string();
        loop {
            let mut record = FutureRecord::to(&event.topic)
                .partition(partition)
                .payload(&event.value)
                .headers(OwnedHeaders::new().insert(Header {
                    key: HEADER,
                    value: Some(&position),
                }));
            if let Some(key) = &event.key {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.pending.push_back(Pending::Delivery(delivery));
                    metrics::counter!(crate::telemetry::KAFKA_EVENTS).increment(1);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.wait_for_oldest()?
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
        if self.pending.len() >= IN_FLIGHT {
            self.wait_for_oldest()?;
        }
        Ok(())
    }

    fn wait_for_oldest(&mut self) -> Result<(), FeedError> {
        while let Some(front) = self.pending.pop_front() {
            match front {
                Pending::TxnEnd(lsn) => self.delivered = Some(lsn),
                Pending::Delivery(delivery) => {
                    return delivered(self.runtime.block_on(delivery));
                }
            }
        }
        Ok(())
    }

    /// Takes in acknowledgements (waiting for all if `wait`) and advances the
    /// watermark; makes it durable now and then, and always when waiting.
    fn settle(&mut self, wait: bool) -> Result<(), FeedError> {
        while let Some(front) = self.pending.front_mut() {
            match front {
                Pending::TxnEnd(lsn) => {
                    self.delivered = Some(*lsn);
                    self.pending.pop_front();
                }
                Pending::Delivery(delivery) => {
                    let outcome = if wait {
                        Some(self.runtime.block_on(delivery))
                    } else {
                        delivery.now_or_never()
                    };
                    match outcome {
                        Some(outcome) => {
                            delivered(outcome)?;
                            self.pending.pop_front();
                        }
                        None => break,
                    }
                }
            }
        }
        if let Some(lsn) = self.delivered {
            metrics::gauge!(crate::telemetry::KAFKA_DELIVERED_LSN).set(lsn.as_u64() as f64);
            self.progress.published.send_replace(lsn);
        }
        if wait || self.stored_at.elapsed() >= WATERMARK_EVERY {
            self.store_watermark()?;
        }
        Ok(())
    }

    /// Makes the watermark durable and lets the log drop what it covers. Not
    /// on every acknowledgement: each store is two fsyncs and a read of every
    /// segment header, and a stale watermark only means re-reading a little
    /// more of the log (the positions skip what the broker has).
    fn store_watermark(&mut self) -> Result<(), FeedError> {
        self.stored_at = Instant::now();
        let Some(lsn) = self.delivered.filter(|_| self.delivered > self.stored) else {
            return Ok(());
        };
        self.watermark
            .store(lsn)
            .map_err(|source| FeedError::Watermark {
                path: self.watermark.path().to_path_buf(),
                source,
            })?;
        self.stored = self.delivered;
        self.retain_from
            .send_replace(start_segment(&self.log_dir, Some(lsn))?);
        Ok(())
    }

    /// Waits for the initial snapshot to be acknowledged, then goes on from its point.
    fn settle_snapshot(&mut self, point: EndLsn) -> Result<(), FeedError> {
        self.pending.push_back(Pending::TxnEnd(point));
        self.settle(true)?;
        self.skip_through = Some(point);
        Ok(())
    }

    /// Waits a while for the last acknowledgements; what is not acknowledged
    /// is sent again (and found already there) by the next session.
    fn stop(mut self) -> Result<(), FeedError> {
        let started = Instant::now();
        loop {
            self.settle(false)?;
            if self.pending.is_empty() {
                return self.store_watermark();
            }
            if started.elapsed() > STOP_WAIT {
                tracing::warn!("the broker did not acknowledge the last events in time; the next start sends them again, without duplicates");
                return self.store_watermark();
            }
            std::thread::sleep(TAIL_POLL);
        }
    }
}

fn delivered<E>(
    outcome: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
) -> Result<(), FeedError> {
    match outcome {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error.into()),
        Err(_) => Err(KafkaError::Canceled.into()),
    }
}

impl TxnSink for KafkaSink {
    type Error = FeedError;

    fn begin(&mut self, txn: &TxnInfo) -> Result<(), FeedError> {
        self.skipping = self.skip_through.is_some_and(|lsn| txn.end_lsn <= lsn);
        self.index = 1;
        self.order.clear();
        Ok(())
    }

    fn change(&mut self, txn: &TxnInfo, lsn: Lsn, change: Change) -> Result<(), FeedError> {
        if self.skipping {
            return Ok(());
        }
        let mut index = self.index;
        let events = self
            .encoder
            .change(txn, lsn, &change, &mut index, &mut self.order);
        // BEGIN goes out with the first event: a transaction with none (capture's
        // own heartbeats and samples) is not announced, as pgoutput sends no empty ones.
        if self.index == 1 && !events.is_empty() && self.encoder.format().transaction_metadata {
            let event = self.encoder.begin(txn);
            self.publish(event)?;
        }
        self.index = index;
        for event in events {
            self.publish(event)?;
        }
        Ok(())
    }

    fn commit(&mut self, txn: &TxnInfo) -> Result<(), FeedError> {
        if !self.skipping {
            if self.encoder.format().transaction_metadata && self.index > 1 {
                let event = self.encoder.end(txn, self.index - 1, &self.order);
                self.publish(event)?;
            }
            self.pending.push_back(Pending::TxnEnd(txn.end_lsn));
        }
        Ok(())
    }

    /// The watermark follows quiet stretches of WAL this way.
    fn passed(&mut self, lsn: EndLsn) -> Result<(), FeedError> {
        let queued = self.pending.iter().rev().find_map(|p| match p {
            Pending::TxnEnd(lsn) => Some(*lsn),
            Pending::Delivery(_) => None,
        });
        if Some(lsn) > queued.max(self.delivered).max(self.skip_through) {
            self.pending.push_back(Pending::TxnEnd(lsn));
        }
        Ok(())
    }

    fn incomplete(&mut self, txn: &TxnInfo) -> Result<(), FeedError> {
        if self.skip_through.is_some_and(|lsn| txn.end_lsn <= lsn) {
            return Ok(());
        }
        // No watermark yet: the local log may begin inside a transaction.
        if self.skip_through.is_none() {
            tracing::warn!(xid = txn.xid, commit_lsn = %txn.commit_lsn, "the local log begins inside this transaction; the feed starts after it");
            return Ok(());
        }
        Err(LogError::Incomplete {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
        }
        .into())
    }
}
