//! Committed changes as Debezium-style events: pure functions from a
//! transaction's changes to (topic, key, value, position) records.
//!
//! The format is `proto/kafka-envelope.md` (version 1).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Map, Value};

use super::position::EventPosition;
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
pub use crate::config::TimeFormat;
use crate::log::committed::{Change, TxnInfo};
use crate::source::pgoutput::{Column, Relation, Tuple, TupleValue};

/// What the envelope needs to know besides the changes.
#[derive(Clone, Debug)]
pub struct Format {
    pub topic_prefix: String,
    pub database: String,
    pub time_format: TimeFormat,
    /// Written for a TOASTed value left unchanged when no earlier value is known.
    pub unavailable_value: String,
    /// Whether change events carry a `transaction` block (and the transaction topic exists).
    pub transaction_metadata: bool,
}

/// One record for the broker.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub topic: String,
    /// JSON, or `None` for events without a key (truncates, keyless tables).
    pub key: Option<String>,
    pub value: String,
    pub position: EventPosition,
}

/// Last full values of large columns, by table and key, to fill unchanged TOAST.
/// Bounded: when it grows past its budget it starts over, and a value it no
/// longer has is written as the placeholder.
pub struct ToastCache {
    values: HashMap<(String, String), Vec<Option<String>>>,
    bytes: usize,
    budget: usize,
}

/// Values this long may be TOASTed; shorter ones are always sent.
const TOASTABLE: usize = 1024;

impl ToastCache {
    pub fn new(budget: usize) -> Self {
        ToastCache {
            values: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    fn remember(&mut self, table: &str, key: &str, row: &[Option<String>]) {
        let large: Vec<Option<String>> = row
            .iter()
            .map(|v| v.clone().filter(|v| v.len() >= TOASTABLE))
            .collect();
        if large.iter().all(Option::is_none) {
            self.values.remove(&(table.to_string(), key.to_string()));
            return;
        }
        let size: usize = large.iter().flatten().map(String::len).sum();
        if self.bytes + size > self.budget {
            self.values.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.values
            .insert((table.to_string(), key.to_string()), large);
    }

    fn recall(&self, table: &str, key: &str, column: usize) -> Option<&str> {
        self.values
            .get(&(table.to_string(), key.to_string()))
            .and_then(|row| row.get(column)?.as_deref())
    }

    fn forget(&mut self, table: &str, key: &str) {
        self.values.remove(&(table.to_string(), key.to_string()));
    }
}

/// Turns a transaction's changes into events, numbering them from 1.
pub struct Encoder {
    format: Format,
    toast: ToastCache,
}

impl Encoder {
    pub fn new(format: Format, toast_budget: usize) -> Self {
        Encoder {
            format,
            toast: ToastCache::new(toast_budget),
        }
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    pub fn topic(&self, relation: &Relation) -> String {
        format!(
            "{}.{}.{}",
            self.format.topic_prefix, relation.namespace, relation.name
        )
    }

    pub fn transaction_topic(&self) -> String {
        format!("{}.transaction", self.format.topic_prefix)
    }

    fn source(&self, txn: &TxnInfo, relation: &Relation, lsn: Lsn) -> Value {
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "connector": "postgresql",
            "name": self.format.topic_prefix,
            "ts_ms": millis(txn.commit_time),
            "snapshot": "false",
            "db": self.format.database,
            "schema": relation.namespace,
            "table": relation.name,
            "txId": txn.xid,
            "lsn": lsn.0,
        })
    }

    /// The events of one change; `index` is the change's number within its
    /// transaction, counted from 1, and is advanced past what is returned.
    /// `order` counts events per table within the transaction.
    pub fn change(
        &mut self,
        txn: &TxnInfo,
        lsn: Lsn,
        change: &Change,
        index: &mut u32,
        order: &mut HashMap<String, u64>,
    ) -> Vec<Event> {
        let now = millis(PgTimestamp::now());
        let relations: Vec<&Arc<Relation>> = match change {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => vec![relation],
            Change::Truncate { relations, .. } => relations.iter().collect(),
            Change::Message { .. } => return Vec::new(),
        };
        let mut events = Vec::new();
        for relation in relations {
            let table = relation.table().to_string();
            // Like Debezium, a change of key is a delete of the old key and a create of the new.
            let records: Vec<(&str, Value, Value, Option<String>)> = match change {
                Change::Insert { new, .. } => {
                    let after = self.row(&table, relation, new, None);
                    let key = self.key_of(relation, &after);
                    self.remember(&table, &key, &after);
                    vec![("c", Value::Null, self.typed(relation, &after), key)]
                }
                Change::Update { old, new, .. } => {
                    let key = self.key_of(relation, &self.row(&table, relation, new, None));
                    let before = old
                        .as_ref()
                        .map(|o| self.row(&table, relation, o.tuple(), key.as_deref()));
                    let old_key = match &before {
                        Some(values) => self.key_of(relation, values),
                        None => key.clone(),
                    };
                    // The row's earlier values are cached under its old key.
                    let after = self.row(&table, relation, new, old_key.as_deref());
                    let typed_after = self.typed(relation, &after);
                    let typed_before = before.map_or(Value::Null, |v| self.typed(relation, &v));
                    let records = if old_key != key {
                        self.forget(&table, &old_key);
                        vec![
                            ("d", typed_before, Value::Null, old_key),
                            ("c", Value::Null, typed_after, key.clone()),
                        ]
                    } else {
                        vec![("u", typed_before, typed_after, key.clone())]
                    };
                    self.remember(&table, &key, &after);
                    records
                }
                Change::Delete { old, .. } => {
                    let key = self.key_of(relation, &self.row(&table, relation, old.tuple(), None));
                    let before = self.row(&table, relation, old.tuple(), key.as_deref());
                    self.forget(&table, &key);
                    vec![("d", self.typed(relation, &before), Value::Null, key)]
                }
                Change::Truncate { .. } => vec![("t", Value::Null, Value::Null, None)],
                Change::Message { .. } => unreachable!("returned above"),
            };
            for (op, before, after, key) in records {
                let per_table = order.entry(table.clone()).or_default();
                *per_table += 1;
                let mut value = json!({
                    "before": before,
                    "after": after,
                    "source": self.source(txn, relation, lsn),
                    "op": op,
                    "ts_ms": now,
                });
                if self.format.transaction_metadata {
                    value["transaction"] = json!({
                        "id": transaction_id(txn),
                        "total_order": *index,
                        "data_collection_order": *per_table,
                    });
                }
                events.push(Event {
                    topic: self.topic(relation),
                    key,
                    value: value.to_string(),
                    position: EventPosition {
                        commit_lsn: txn.commit_lsn,
                        index: *index,
                    },
                });
                *index += 1;
            }
        }
        events
    }

    /// One row of the initial snapshot, as Debezium's `op: "r"` event.
    pub fn snapshot_row(
        &mut self,
        relation: &Relation,
        row: &[Option<String>],
        point: EndLsn,
        index: u32,
    ) -> Event {
        let table = relation.table().to_string();
        let key = self.key_of(relation, row);
        self.remember(&table, &key, row);
        let value = json!({
            "before": null,
            "after": self.typed(relation, row),
            "source": {
                "version": env!("CARGO_PKG_VERSION"),
                "connector": "postgresql",
                "name": self.format.topic_prefix,
                "ts_ms": millis(PgTimestamp::now()),
                "snapshot": "true",
                "db": self.format.database,
                "schema": relation.namespace,
                "table": relation.name,
                "txId": null,
                "lsn": point.0,
            },
            "op": "r",
            "ts_ms": millis(PgTimestamp::now()),
        });
        Event {
            topic: self.topic(relation),
            key,
            value: value.to_string(),
            position: EventPosition {
                // Snapshot rows sort before every change that commits after the point.
                commit_lsn: CommitLsn(point.0),
                index,
            },
        }
    }

    /// Debezium's BEGIN event on the transaction topic, at index 0.
    pub fn begin(&self, txn: &TxnInfo) -> Event {
        let id = transaction_id(txn);
        Event {
            topic: self.transaction_topic(),
            key: Some(json!({ "id": id }).to_string()),
            value: json!({
                "status": "BEGIN",
                "id": id,
                "event_count": null,
                "data_collections": null,
                "ts_ms": millis(txn.commit_time),
            })
            .to_string(),
            position: EventPosition {
                commit_lsn: txn.commit_lsn,
                index: 0,
            },
        }
    }

    /// Debezium's END event, after the transaction's `events` change events.
    pub fn end(&self, txn: &TxnInfo, events: u32, order: &HashMap<String, u64>) -> Event {
        let id = transaction_id(txn);
        let mut collections: Vec<(&String, &u64)> = order.iter().collect();
        collections.sort();
        Event {
            topic: self.transaction_topic(),
            key: Some(json!({ "id": id }).to_string()),
            value: json!({
                "status": "END",
                "id": id,
                "event_count": events,
                "data_collections": collections
                    .iter()
                    .map(|(table, count)| json!({"data_collection": table, "event_count": count}))
                    .collect::<Vec<_>>(),
                "ts_ms": millis(txn.commit_time),
            })
            .to_string(),
            position: EventPosition {
                commit_lsn: txn.commit_lsn,
                index: events + 1,
            },
        }
    }

    /// A row's values as text, with unchanged TOAST filled from what is
    /// cached under `toast_key`, or the placeholder.
    fn row(
        &self,
        table: &str,
        relation: &Relation,
        tuple: &Tuple,
        toast_key: Option<&str>,
    ) -> Vec<Option<String>> {
        debug_assert_eq!(relation.columns.len(), tuple.0.len());
        tuple
            .0
            .iter()
            .enumerate()
            .map(|(i, value)| match value {
                TupleValue::Null => None,
                TupleValue::Text(bytes) | TupleValue::Binary(bytes) => {
                    Some(String::from_utf8_lossy(bytes).into_owned())
                }
                TupleValue::UnchangedToast => Some(
                    toast_key
                        .and_then(|key| self.toast.recall(table, key, i))
                        .unwrap_or(&self.format.unavailable_value)
                        .to_string(),
                ),
            })
            .collect()
    }

    fn remember(&mut self, table: &str, key: &Option<String>, row: &[Option<String>]) {
        if let Some(key) = key {
            self.toast.remember(table, key, row);
        }
    }

    fn forget(&mut self, table: &str, key: &Option<String>) {
        if let Some(key) = key {
            self.toast.forget(table, key);
        }
    }

    /// The key columns as a JSON object; `None` for keyless tables.
    fn key_of(&self, relation: &Relation, values: &[Option<String>]) -> Option<String> {
        if relation.replica_identity == b'f' {
            return None;
        }
        let mut object = Map::new();
        for (column, value) in relation.columns.iter().zip(values) {
            if column.is_key() {
                let typed = value.as_deref().map_or(Value::Null, |v| {
                    typed_value(column, v, self.format.time_format)
                });
                object.insert(column.name.clone(), typed);
            }
        }
        (!object.is_empty()).then(|| Value::Object(object).to_string())
    }

    /// The row as a JSON object of typed values.
    fn typed(&self, relation: &Relation, row: &[Option<String>]) -> Value {
        let mut object = Map::new();
        for (column, value) in relation.columns.iter().zip(row) {
            let typed = match value {
                None => Value::Null,
                Some(text) if *text == self.format.unavailable_value => Value::String(text.clone()),
                Some(text) => typed_value(column, text, self.format.time_format),
            };
            object.insert(column.name.clone(), typed);
        }
        Value::Object(object)
    }
}

fn transaction_id(txn: &TxnInfo) -> String {
    format!("{}:{}", txn.xid, txn.commit_lsn.0)
}

fn millis(time: PgTimestamp) -> i64 {
    time.to_utc().timestamp_millis()
}

/// One column value from PostgreSQL's text form into Debezium's JSON type.
pub fn typed_value(column: &Column, text: &str, time: TimeFormat) -> Value {
    const BOOL: u32 = 16;
    const BYTEA: u32 = 17;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const OID: u32 = 26;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const DATE: u32 = 1082;
    const TIME: u32 = 1083;
    const TIMESTAMP: u32 = 1114;
    const TIMESTAMPTZ: u32 = 1184;
    let string = || Value::String(text.to_string());
    match column.type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 | OID => text.parse::<i64>().map_or_else(|_| string(), Value::from),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or_else(string, Value::from),
        BYTEA => match text.strip_prefix("\\x").map(hex::decode) {
            Some(Ok(bytes)) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => string(),
        },
        TIMESTAMPTZ => match chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
            Ok(t) => {
                let utc = t.with_timezone(&chrono::Utc);
                match time {
                    TimeFormat::Iso => {
                        Value::String(utc.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                    }
                    TimeFormat::Micros => Value::from(utc.timestamp_micros()),
                }
            }
            Err(_) => string(),
        },
        TIMESTAMP => match chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f") {
            Ok(t) => match time {
                TimeFormat::Iso => Value::String(t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()),
                TimeFormat::Micros => Value::from(t.and_utc().timestamp_micros()),
            },
            Err(_) => string(),
        },
        DATE => match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(d) => match time {
                TimeFormat::Iso => string(),
                TimeFormat::Micros => Value::from(
                    (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch"))
                        .num_days(),
                ),
            },
            Err(_) => string(),
        },
        TIME => match chrono::NaiveTime::parse_from_str(text, "%H:%M:%S%.f") {
            Ok(t) => match time {
                TimeFormat::Iso => string(),
                TimeFormat::Micros => Value::from(
                    (t - chrono::NaiveTime::MIN)
                        .num_microseconds()
                        .unwrap_or_default(),
                ),
            },
            Err(_) => string(),
        },
        // numeric, json, jsonb, uuid, text, enums, arrays and the rest: their text.
        _ => string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pgoutput::OldTuple;
    use bytes::Bytes;

    fn column(name: &str, type_oid: u32, key: bool) -> Column {
        Column {
            flags: u8::from(key),
            name: name.into(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn relation() -> Arc<Relation> {
        Arc::new(Relation {
            xid: None,
            oid: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: vec![column("id", 23, true), column("big", 25, false)],
        })
    }

    fn text(v: &str) -> TupleValue {
        TupleValue::Text(Bytes::from(v.to_string()))
    }

    fn encoder(time_format: TimeFormat) -> Encoder {
        Encoder::new(
            Format {
                topic_prefix: "p".into(),
                database: "db".into(),
                time_format,
                unavailable_value: "__unavailable".into(),
                transaction_metadata: false,
            },
            1 << 20,
        )
    }

    fn txn() -> TxnInfo {
        TxnInfo {
            xid: 5,
            commit_lsn: CommitLsn(Lsn(100)),
            end_lsn: EndLsn(Lsn(110)),
            commit_time: PgTimestamp(0),
        }
    }

    fn values(events: &[Event]) -> Vec<Value> {
        events
            .iter()
            .map(|e| serde_json::from_str(&e.value).unwrap())
            .collect()
    }

    #[test]
    fn values_take_debezium_types() {
        let typed = |oid, text, format| typed_value(&column("c", oid, false), text, format);
        assert_eq!(typed(23, "42", TimeFormat::Iso), json!(42));
        assert_eq!(
            typed(20, "-9000000000", TimeFormat::Iso),
            json!(-9000000000i64)
        );
        assert_eq!(typed(1700, "12.50", TimeFormat::Iso), json!("12.50"));
        assert_eq!(typed(16, "t", TimeFormat::Iso), json!(true));
        assert_eq!(typed(701, "1.5", TimeFormat::Iso), json!(1.5));
        assert_eq!(typed(701, "NaN", TimeFormat::Iso), json!("NaN"));
        assert_eq!(
            typed(3802, "{\"a\": 1}", TimeFormat::Iso),
            json!("{\"a\": 1}")
        );
        assert_eq!(typed(17, "\\x00ff", TimeFormat::Iso), json!("AP8="));
        let at = "2026-11-21 10:15:00.25+05:30";
        assert_eq!(
            typed(1184, at, TimeFormat::Iso),
            json!("2026-11-21T04:45:00.250000Z")
        );
        assert_eq!(
            typed(1184, at, TimeFormat::Micros),
            json!(1_795_236_300_250_000i64)
        );
        assert_eq!(
            typed(1184, "infinity", TimeFormat::Micros),
            json!("infinity")
        );
        assert_eq!(
            typed(1114, "2026-11-21 10:15:00", TimeFormat::Iso),
            json!("2026-11-21T10:15:00.000000")
        );
        assert_eq!(typed(1082, "1970-01-11", TimeFormat::Micros), json!(10));
        assert_eq!(
            typed(1083, "00:00:01.5", TimeFormat::Micros),
            json!(1_500_000)
        );
        assert_eq!(
            typed(
                2950,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                TimeFormat::Iso
            ),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
    }

    #[test]
    fn unchanged_toast_is_filled_from_the_last_full_value_or_marked() {
        let mut encoder = encoder(TimeFormat::Iso);
        let rel = relation();
        let big = "b".repeat(3000);
        let mut index = 1;
        let mut order = HashMap::new();
        let mut encode = |encoder: &mut Encoder, change: Change| {
            values(&encoder.change(&txn(), Lsn(1), &change, &mut index, &mut order))
        };
        encode(
            &mut encoder,
            Change::Insert {
                relation: rel.clone(),
                new: Tuple(vec![text("1"), text(&big)]),
            },
        );
        let filled = encode(
            &mut encoder,
            Change::Update {
                relation: rel.clone(),
                old: None,
                new: Tuple(vec![text("1"), TupleValue::UnchangedToast]),
            },
        );
        assert_eq!(filled[0]["after"]["big"], json!(big));
        assert_eq!(filled[0]["op"], "u");
        let unknown = encode(
            &mut encoder,
            Change::Update {
                relation: rel.clone(),
                old: None,
                new: Tuple(vec![text("2"), TupleValue::UnchangedToast]),
            },
        );
        assert_eq!(unknown[0]["after"]["big"], json!("__unavailable"));
        // A key change carries the value to the new key, as delete + create.
        let moved = encode(
            &mut encoder,
            Change::Update {
                relation: rel.clone(),
                old: Some(OldTuple::Key(Tuple(vec![text("1"), TupleValue::Null]))),
                new: Tuple(vec![text("3"), TupleValue::UnchangedToast]),
            },
        );
        assert_eq!(
            moved.iter().map(|v| v["op"].clone()).collect::<Vec<_>>(),
            vec![json!("d"), json!("c")]
        );
        assert_eq!(moved[1]["after"]["big"], json!(big));
        assert_eq!(index, 6, "each event takes the next index");
    }
}
