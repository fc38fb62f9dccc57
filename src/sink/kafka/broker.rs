//! The broker side of the feed: clients, topics, and the last position in
//! each partition. Thin wrappers over rdkafka.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::TopicPartitionList;

use super::position::{EventPosition, HEADER};
use crate::config::KafkaConfig;

/// How long one broker request may take before the session is retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    for (key, value) in &config.settings {
        client.set(key, value);
    }
    client
}

/// Creates a client; librdkafka's complaint about a setting may quote its
/// value, so every configured value is blanked out of the error.
fn create<T: rdkafka::config::FromClientConfig>(
    config: &KafkaConfig,
    client: &ClientConfig,
) -> Result<T, KafkaError> {
    client.create().map_err(|e| match e {
        KafkaError::ClientCreation(message) => KafkaError::ClientCreation(redact(config, &message)),
        KafkaError::ClientConfig(code, description, key, _) => {
            KafkaError::ClientConfig(code, redact(config, &description), key, "<redacted>".into())
        }
        other => other,
    })
}

fn redact(config: &KafkaConfig, message: &str) -> String {
    config
        .settings
        .values()
        .filter(|v| !v.is_empty())
        .fold(message.to_string(), |m, v| {
            m.replace(v.as_str(), "<redacted>")
        })
}

/// An idempotent producer: retries never duplicate or reorder within a partition.
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    let mut client = client_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // Never give up on a message, and stop rather than leave a gap: what a
        // partition holds is then always a prefix of what was sent to it.
        .set("message.timeout.ms", "0")
        .set("enable.gapless.guarantee", "true");
    create(config, &client)
}

/// Creates the topics that are missing; returns every topic's partition count.
pub async fn ensure_topics(
    config: &KafkaConfig,
    topics: &[String],
) -> Result<HashMap<String, i32>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = create(config, &client_config(config))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(REQUEST_TIMEOUT))
        .request_timeout(Some(REQUEST_TIMEOUT));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::warn!(%topic, ?code, "could not create a topic");
                })
            }
        }
    }
    let consumer = probe(config)?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut partitions = HashMap::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(&topic), REQUEST_TIMEOUT)?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len() as i32);
            if count == 0 {
                return Err(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ));
            }
            partitions.insert(topic, count);
        }
        Ok(partitions)
    })
    .await
    .expect("reading topic metadata")
}

fn probe(config: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    let mut client = client_config(config);
    client
        .set("group.id", "tidemark-feed-probe")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50");
    create(config, &client)
}

/// The position header of the last message in each partition that has one.
pub fn last_positions(
    config: &KafkaConfig,
    partitions: &HashMap<String, i32>,
) -> Result<HashMap<(String, i32), EventPosition>, KafkaError> {
    let consumer = probe(config)?;
    let mut assignment = TopicPartitionList::new();
    let mut unread = std::collections::HashSet::new();
    // Partitions holding messages, each to be read to its end.
    for (topic, &count) in partitions {
        for partition in 0..count {
            let (low, high) = consumer.fetch_watermarks(topic, partition, REQUEST_TIMEOUT)?;
            if high > low {
                // A few back, in case the last offsets are not messages of ours.
                assignment.add_partition_offset(
                    topic,
                    partition,
                    rdkafka::Offset::Offset((high - 8).max(low)),
                )?;
                unread.insert((topic.clone(), partition));
            }
        }
    }
    let mut positions = HashMap::new();
    if unread.is_empty() {
        return Ok(positions);
    }
    consumer.assign(&assignment)?;
    // Read to the end of each partition, not to its high watermark: tansu 0.6
    // reports it as the last batch's base offset + 1, and a fetch from inside
    // a batch returns the whole batch. The end is a quiet spell once every
    // partition has returned something.
    let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
    let mut returned = std::collections::HashSet::new();
    loop {
        match consumer.poll(Duration::from_millis(300)) {
            Some(Ok(message)) => {
                let at = (message.topic().to_string(), message.partition());
                if let Some(position) = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == HEADER)
                        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
                }) {
                    positions.insert(at.clone(), position);
                }
                returned.insert(at);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e),
            None if unread.iter().all(|u| returned.contains(u)) => break,
            None if std::time::Instant::now() > deadline => {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::RequestTimedOut,
                ))
            }
            None => {}
        }
    }
    Ok(positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_setting_never_shows_its_value() {
        let mut config: KafkaConfig =
            toml::from_str("brokers = \"127.0.0.1:1\"\n\"security.protocol\" = \"hunter2-secret\"")
                .unwrap();
        config
            .settings
            .insert("sasl.password".into(), "also-secret".into());
        let error = producer(&config)
            .err()
            .expect("an invalid protocol is refused");
        let text = error.to_string();
        assert!(text.contains("security.protocol"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("also-secret"),
            "{text}"
        );
    }
}
