//! The Kafka audit feed against a real Kafka-protocol broker (tansu), read
//! back with kafka-python: the envelope, transaction metadata, unchanged TOAST,
//! and exactly-once delivery across SIGKILLs and a broker restart.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{Broker, Fixture, Rng};
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
    let capture = fx.start_capture_async(&config).await;
    fx.caught_up(Duration::from_secs(30)).arrives().await;

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

/// Transactions of new accounts and version bumps, some streamed, some rolled
/// back; the ledger (not watched) records each committed one's change count.
async fn workload(url: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let client = harness::connect(&url).await;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let rows = if rng.next(40) == 0 {
            600
        } else {
            1 + rng.next(5)
        };
        client.batch_execute("BEGIN").await.unwrap();
        let mut changes = client
            .execute(
                "INSERT INTO accounts SELECT nextval('ids'), 0 FROM generate_series(1, $1::int)",
                &[&(rows as i32)],
            )
            .await
            .unwrap();
        changes += client
            .execute(
                "UPDATE accounts SET version = version + 1 WHERE id IN (SELECT id FROM accounts ORDER BY random() LIMIT 3)",
                &[],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO ledger VALUES (txid_current() % 4294967296, $1)",
                &[&(changes as i32)],
            )
            .await
            .unwrap();
        let rollback = rng.next(8) == 0;
        client
            .batch_execute(if rollback { "ROLLBACK" } else { "COMMIT" })
            .await
            .unwrap();
        // A steady rate, so the events stay few enough to read back quickly.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_and_a_broker_restart_lose_and_duplicate_nothing() {
    let mut broker = Broker::start().await;
    let fx = Fixture::new(
        "CREATE SEQUENCE ids;
         CREATE TABLE accounts (id bigint PRIMARY KEY, version int NOT NULL);
         CREATE TABLE ledger (xid bigint PRIMARY KEY, changes int NOT NULL);",
    );
    fx.psql(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        fx.db
    ));
    let config = fx.config(
        &["public.accounts"],
        &kafka_section(&broker, "partitions = 3"),
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);

    // The slot exists before the workload starts.
    let capture = fx.start_capture_async(&config).await;
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    capture.kill();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(workload(fx.url(), stop.clone(), seed));
    let kills = 10;
    for kill in 0..kills {
        let capture = fx.start_capture_async(&config).await;
        harness::Event::new("the feed to start", Duration::from_secs(60), || {
            harness::metric(&config, "tidemark_kafka_feed_up") == Some(1.0)
        })
        .arrives()
        .await;
        if kill == kills / 2 {
            broker.restart();
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.next(1500))).await;
        capture.kill();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();

    let capture = fx.start_capture_async(&config).await;
    fx.caught_up(Duration::from_secs(120)).arrives().await;
    let ledger: HashMap<u64, u64> = fx.ledger().into_iter().collect();
    assert!(
        ledger.len() > 30,
        "committed transactions: {}",
        ledger.len()
    );
    let expected: u64 = ledger.values().sum();
    let events = read_until(
        &broker,
        &["audit.public.accounts"],
        "every change in Kafka",
        |m| m.len() as u64 >= expected,
    );
    assert_eq!(capture.stop(), 0);

    // Exactly the committed transactions, each with all its changes, once.
    let mut per_txn: HashMap<u64, u64> = HashMap::new();
    let mut positions = std::collections::HashSet::new();
    for event in &events {
        let position = event["headers"]["tidemark.position"].as_str().unwrap();
        assert!(positions.insert(position.to_string()), "{position} twice");
        *per_txn
            .entry(event["value"]["source"]["txId"].as_u64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_txn, ledger, "events per transaction (seed {seed})");
    // Per key, in commit order: versions 0, 1, 2, ... with no gap.
    let mut versions: HashMap<i64, i64> = HashMap::new();
    let mut partitions: HashMap<i64, u64> = HashMap::new();
    for event in &events {
        let id = event["key"]["id"].as_i64().unwrap();
        let version = event["value"]["after"]["version"].as_i64().unwrap();
        let expected = versions.get(&id).map_or(0, |v| v + 1);
        assert_eq!(version, expected, "account {id} out of order (seed {seed})");
        versions.insert(id, version);
        let partition = event["partition"].as_u64().unwrap();
        assert_eq!(*partitions.entry(id).or_insert(partition), partition);
    }
    assert_eq!(
        partitions
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "keys spread over the partitions"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_initial_snapshot_and_the_changes_after_it_meet_exactly() {
    let broker = Broker::start().await;
    let fx = Fixture::new(
        "CREATE TABLE items (id bigserial PRIMARY KEY, label text);
         INSERT INTO items (label) SELECT 'before' FROM generate_series(1, 2000);",
    );
    let config = fx.config(
        &["public.items"],
        &kafka_section(&broker, "snapshot = true"),
    );
    // Rows keep arriving while capture starts and the snapshot is taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (url, stop) = (fx.url(), stop.clone());
        tokio::spawn(async move {
            let client = harness::connect(&url).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .batch_execute("INSERT INTO items (label) VALUES ('during')")
                    .await
                    .unwrap();
            }
        })
    };
    let capture = fx.start_capture_async(&config).await;
    harness::Event::new("the snapshot to be sent", Duration::from_secs(60), || {
        harness::metric(&config, "tidemark_kafka_snapshot_completed") == Some(1.0)
    })
    .arrives()
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    fx.psql("UPDATE items SET label = 'after' WHERE id = 1");
    let rows: u64 = fx.psql("SELECT count(*) FROM items").parse().unwrap();

    let events = read_until(&broker, &["audit.public.items"], "every row", |m| {
        m.len() as u64 > rows
    });
    assert_eq!(capture.stop(), 0);
    let mut seen: HashMap<i64, u32> = HashMap::new();
    for event in &events[..events.len() - 1] {
        let op = event["value"]["op"].as_str().unwrap();
        assert!(op == "r" || op == "c", "{event}");
        assert_eq!(
            event["value"]["source"]["snapshot"] == "true",
            op == "r",
            "{event}"
        );
        *seen
            .entry(event["key"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(seen.len() as u64, rows, "every row once");
    assert!(seen.values().all(|n| *n == 1), "no row twice");
    let snapshot_rows = events.iter().filter(|e| e["value"]["op"] == "r").count();
    assert!(snapshot_rows >= 2000, "{snapshot_rows}");
    let last = events.last().unwrap();
    assert_eq!(
        (
            last["value"]["op"].as_str(),
            last["value"]["after"]["label"].as_str()
        ),
        (Some("u"), Some("after"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_and_archive_carry_on_while_the_broker_is_down_and_kafka_catches_up() {
    let mut broker = Broker::reserve().await;
    let fx = Fixture::new("CREATE TABLE events (id int PRIMARY KEY, body text);");
    let archive = format!(
        "\n[archive]\nurl = {:?}\nupload_interval = \"100ms\"\n",
        fx.archive_url()
    );
    let config = fx.config(
        &["public.events"],
        &format!("{archive}{}", kafka_section(&broker, "")),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    for batch in 0..5 {
        fx.psql(&format!(
            "INSERT INTO events SELECT g, 'x' FROM generate_series({}, {}) g",
            batch * 100 + 1,
            batch * 100 + 100
        ));
    }
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    // The archive has everything captured by now while the broker was never
    // up, and the local log still holds the archived segments for the feed.
    // Taken once: other tests' WAL moves the slot on (keepalives confirmed
    // at once), past what the archive's window reaches until a heartbeat.
    let captured = fx.confirmed_flush().unwrap();
    let (fx, config) = (&fx, &config);
    harness::wait_until(
        Duration::from_secs(30),
        "the archive to catch up",
        move || async move {
            let listed = harness::tidemark(
                &["list", "--config", config.to_str().unwrap(), "--json"],
                &[],
            );
            let list: Value = serde_json::from_slice(&listed.stdout).unwrap_or_default();
            list["window"]["latest"]["lsn"]
                .as_str()
                .is_some_and(|l| l.parse::<tidemark::base::position::Lsn>().unwrap() >= captured)
        },
    )
    .await;
    harness::wait_until(
        Duration::from_secs(60),
        "the feed to say it is behind",
        move || async move { harness::metric(config, "tidemark_kafka_feed_up") == Some(0.0) },
    )
    .await;
    let first_segment = fx.log_dir().join(tidemark::log::segment::file_name(1));
    assert!(
        first_segment.exists(),
        "the log kept the archived segments for Kafka"
    );

    broker.spawn();
    let events = read_until(
        &broker,
        &["audit.public.events"],
        "the feed to catch up",
        |m| m.len() >= 500,
    );
    assert_eq!(events.len(), 500);
    // Once Kafka has them, the archived segments leave the local log.
    fx.psql("INSERT INTO events VALUES (1000, 'more')");
    let first = &first_segment;
    harness::wait_until(
        Duration::from_secs(30),
        "the local log to shrink",
        move || async move { !first.exists() },
    )
    .await;
    assert_eq!(capture.stop(), 0);
}
