//! Crash safety: kill -9 capture at random instants during a write workload.
//! Afterwards the log holds every committed transaction exactly once, checked
//! against a ledger the workload writes on the source in the same transactions.

mod harness;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use harness::{Capture, Fixture, Rng};
use tidemark::log::{LogReader, RecordKind};

const SCHEMA: &str = "
    CREATE TABLE payments (id bigserial PRIMARY KEY, amount numeric NOT NULL, note text);
    CREATE TABLE ledger (xid bigint PRIMARY KEY, changes int NOT NULL);
";

async fn workload(url: String, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let client = harness::connect(&url).await;
    while !stop.load(Ordering::Relaxed) {
        let big = rng.next(15) == 0;
        let rows = if big { 15000 } else { 1 + rng.next(20) };
        let rollback = rng.next(10) == 0;
        client.batch_execute("BEGIN").await.unwrap();
        let mut changes = client
            .execute(
                "INSERT INTO payments (amount, note) SELECT g, repeat('p', 100) FROM generate_series(1, $1::int) g",
                &[&(rows as i32)],
            )
            .await
            .unwrap();
        changes += client
            .execute(
                "UPDATE payments SET amount = amount + 1 WHERE id IN (SELECT id FROM payments ORDER BY random() LIMIT 3)",
                &[],
            )
            .await
            .unwrap();
        if big {
            // A rolled-back subtransaction inside a streamed transaction: its rows must vanish.
            client
                .batch_execute(
                    "SAVEPOINT s; INSERT INTO payments (amount, note) SELECT g, 'gone' FROM generate_series(1, 500) g; ROLLBACK TO SAVEPOINT s",
                )
                .await
                .unwrap();
        }
        changes += client
            .execute(
                "DELETE FROM payments WHERE id IN (SELECT id FROM payments ORDER BY random() LIMIT 1)",
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
        client
            .batch_execute(if rollback { "ROLLBACK" } else { "COMMIT" })
            .await
            .unwrap();
    }
}

#[test]
fn kill_9_at_random_instants_loses_and_duplicates_nothing() {
    let fx = Fixture::new(SCHEMA);
    fx.psql(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        fx.db
    ));
    let config = fx.config(&["public.payments"], "");
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);

    // The slot must exist before the workload, or early transactions predate it.
    let capture = fx.start_capture(&config);
    capture.kill();

    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = runtime.spawn(workload(fx.url(), stop.clone(), seed));

    let kills = 22;
    for kill in 0..kills {
        let capture = Capture::start(&config);
        // Three in four kills strike a streaming session; the rest may hit startup too.
        if kill % 4 != 0 {
            fx.wait_streaming(&capture);
        }
        std::thread::sleep(Duration::from_millis(rng.next(1000)));
        capture.kill();
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(load).unwrap();

    let capture = Capture::start(&config);
    fx.wait_caught_up(Duration::from_secs(120));
    assert_eq!(capture.stop(), 0);

    let ledger = fx.ledger();
    assert!(
        ledger.len() > 50,
        "the workload committed enough transactions: {}",
        ledger.len()
    );

    // Each committed transaction's changes: present, complete, contiguous, once.
    let lines = fx.log_json(&config, &[]);
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut order: Vec<u64> = Vec::new();
    for line in &lines {
        let xid = line["xid"].as_u64().unwrap();
        assert_ne!(
            line["new"]["note"], "gone",
            "a rolled-back savepoint's row leaked"
        );
        if order.last() != Some(&xid) {
            assert!(!seen.contains_key(&xid), "transaction {xid} appears twice");
            order.push(xid);
        }
        *seen.entry(xid).or_default() += 1;
    }
    let missing: Vec<_> = ledger.keys().filter(|x| !seen.contains_key(x)).collect();
    let extra: Vec<_> = seen.keys().filter(|x| !ledger.contains_key(x)).collect();
    assert!(
        missing.is_empty(),
        "committed transactions missing from the log: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "uncommitted transactions in the log: {extra:?}"
    );
    for (xid, changes) in &ledger {
        assert_eq!(
            seen[xid], *changes,
            "transaction {xid} has the wrong number of changes"
        );
    }

    // In the raw log too, every committed transaction finishes exactly once.
    let mut finishing = 0;
    let mut streamed = 0;
    let mut reader = LogReader::open(&fx.log_dir()).unwrap();
    let mut resumes = 0;
    while let Some((_, record)) = reader.next_record().unwrap() {
        match (record.kind, record.data.first()) {
            (RecordKind::Wal, Some(b'C')) => finishing += 1,
            (RecordKind::Wal, Some(b'c')) => {
                finishing += 1;
                streamed += 1;
            }
            (RecordKind::Resume, _) => resumes += 1,
            _ => {}
        }
    }
    assert_eq!(finishing, ledger.len(), "finishing records in the raw log");
    assert!(streamed > 0, "the workload produced streamed transactions");
    // A session killed before anything of its own was synced leaves nothing on
    // disk, its Resume record included (correctly: it confirmed nothing). The
    // rest each left one; enough kills must have struck live sessions.
    assert!(
        resumes >= kills / 4,
        "sessions that left records: {resumes}"
    );
}
