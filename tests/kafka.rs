//! The Kafka audit feed against a real Kafka-protocol broker (tansu), read
//! back with kafka-python: the envelope, transaction metadata, unchanged TOAST,
//! and exactly-once delivery across SIGKILLs and a broker restart.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{Broker, Fixture};
use serde_json::{json, Value};

/// Big and incompressible, so PostgreSQL stores it out of line (TOAST).
const BIG: &str =
    "(SELECT string_agg(md5(g::text || random()::text), '') FROM generate_series(1, 400) g)";

fn kafka_section(broker: &Broker, extra: &str) -> String {
    format!(
        "\n[kafka]\nbrokers = {:?}\ntopic_prefix = \"audit\"\n{extra}\n",
        broker.address()
    )
}

/// Reads `topics` until `done` holds of what is there.
fn read_until(
    broker: &Broker,
    topics: &[&str],
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut messages = Vec::new();
    harness::wait_for(Duration::from_secs(90), what, || {
        messages = broker.read(topics);
        done(&messages)
    });
    messages
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_arrive_as_debezium_events_with_their_transactions() {
    let broker = Broker::start().await;
    let fx = Fixture::new(
        "CREATE TABLE payments (id int PRIMARY KEY, amount numeric(12,2), paid bool, at timestamptz, doc jsonb, big text, tags text[]);
         CREATE TABLE notes (body text);
         ALTER TABLE notes REPLICA IDENTITY FULL;",
    );
    // Written before capture starts: its TOASTed value is unknown to tidemark.
    fx.psql(&format!(
        "INSERT INTO payments (id, amount, big) VALUES (99, 1, {BIG})"
    ));
    let config = fx.config(
        &["public.payments", "public.notes"],
        &kafka_section(&broker, "transaction_topic = true"),
    );
    let capture = fx.start_capture(&config);
    fx.wait_caught_up(Duration::from_secs(30));

    fx.psql(&format!(
        "BEGIN; INSERT INTO payments VALUES (1, 12.50, true, '2026-11-21 10:15:00.5+01', '{{\"a\": [1, 2]}}', {BIG}, ARRAY['x','y']); INSERT INTO notes VALUES ('hello'); COMMIT"
    ));
    fx.psql("UPDATE payments SET amount = 13 WHERE id = 1");
    fx.psql("UPDATE payments SET amount = 2 WHERE id = 99");
    fx.psql("UPDATE payments SET id = 2 WHERE id = 1");
    fx.psql("DELETE FROM payments WHERE id = 2");
    fx.psql("DELETE FROM notes");
    fx.psql("TRUNCATE payments");

    let payments = read_until(
        &broker,
        &["audit.public.payments"],
        "seven payment events",
        |m| m.len() >= 7,
    );
    let ops: Vec<&str> = payments
        .iter()
        .map(|m| m["value"]["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["c", "u", "u", "d", "c", "d", "t"]);
    let insert = &payments[0];
    assert_eq!(insert["key"], json!({"id": 1}));
    let after = &insert["value"]["after"];
    assert_eq!(after["id"], json!(1));
    assert_eq!(after["amount"], json!("12.50"));
    assert_eq!(after["paid"], json!(true));
    assert_eq!(after["at"], json!("2026-11-21T09:15:00.500000Z"));
    assert_eq!(after["doc"], json!("{\"a\": [1, 2]}"));
    assert_eq!(after["tags"], json!("{x,y}"));
    let big = after["big"].as_str().unwrap().to_string();
    assert_eq!(big.len(), 12800);
    assert_eq!(insert["value"]["before"], Value::Null);
    let source = &insert["value"]["source"];
    assert_eq!(source["connector"], "postgresql");
    assert_eq!(source["db"], json!(fx.db));
    assert_eq!(
        (source["schema"].as_str(), source["table"].as_str()),
        (Some("public"), Some("payments"))
    );
    assert!(source["txId"].as_u64().unwrap() > 0);
    assert!(source["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(insert["value"]["transaction"]["total_order"], json!(1));
    let position = insert["headers"]["tidemark.position"].as_str().unwrap();
    assert!(position.ends_with(":1"), "{position}");

    // The update left the TOASTed value unchanged: filled from the insert.
    assert!(payments[1]["value"]["after"]["big"] == json!(big));
    assert_eq!(payments[1]["value"]["after"]["amount"], json!("13.00"));
    // Row 99's value was written before capture: marked unavailable, never null.
    assert_eq!(
        payments[2]["value"]["after"]["big"],
        json!("__debezium_unavailable_value")
    );
    // A key change, as Debezium sends it: a delete of the old key, a create of the new.
    assert_eq!(payments[3]["key"], json!({"id": 1}));
    assert_eq!(payments[3]["value"]["before"]["id"], json!(1));
    assert_eq!(payments[4]["key"], json!({"id": 2}));
    assert!(payments[4]["value"]["after"]["big"] == json!(big));
    assert_eq!(payments[5]["value"]["before"]["id"], json!(2));
    assert_eq!(payments[5]["value"]["after"], Value::Null);
    assert_eq!(payments[6]["key"], Value::Null);
    assert_eq!(payments.len(), 7, "{payments:#?}");

    let notes = broker.read(&["audit.public.notes"]);
    assert_eq!(notes.len(), 2, "{notes:#?}");
    assert_eq!(notes[0]["key"], Value::Null);
    assert_eq!(notes[1]["value"]["before"]["body"], "hello");

    // BEGIN and END around each transaction, END with its counts.
    let txns = broker.read(&["audit.transaction"]);
    let first_txn = source["txId"].as_u64().unwrap();
    let mine: Vec<&Value> = txns
        .iter()
        .filter(|m| {
            m["value"]["id"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{first_txn}:"))
        })
        .collect();
    assert_eq!(mine.len(), 2, "{txns:#?}");
    assert_eq!(mine[0]["value"]["status"], "BEGIN");
    assert_eq!(mine[1]["value"]["status"], "END");
    assert_eq!(mine[1]["value"]["event_count"], json!(2));
    let collections: HashMap<String, u64> = mine[1]["value"]["data_collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["data_collection"].as_str().unwrap().to_string(),
                c["event_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        collections,
        HashMap::from([("public.notes".into(), 1), ("public.payments".into(), 1)])
    );
    assert_eq!(capture.stop(), 0);
}
