"""Reads every message of the given topics with kafka-python (a client independent
of tidemark's librdkafka) and prints one JSON object per message."""
import json
import sys

from kafka import KafkaConsumer, TopicPartition

broker, topics = sys.argv[1], sys.argv[2:]
# Until nothing more comes: tansu 0.6 reports a partition's end offset as
# its last batch's base offset + 1, so end offsets cannot say when to stop.
consumer = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False,
                         consumer_timeout_ms=1500)
partitions = [TopicPartition(t, p) for t in topics
              for p in sorted(consumer.partitions_for_topic(t) or [])]
if not partitions:  # the topics do not exist yet
    sys.exit(0)
consumer.assign(partitions)
consumer.seek_to_beginning(*partitions)
for message in consumer:
    print(json.dumps({
        "topic": message.topic,
        "partition": message.partition,
        "offset": message.offset,
        "key": None if message.key is None else json.loads(message.key),
        "value": json.loads(message.value),
        "headers": {k: v.decode() for k, v in message.headers},
    }))
