//! A write workload that keeps a ledger on the source, in the same
//! transactions it writes: each committed transaction's xid and change count.
//! A log checked against the ledger holds every committed transaction exactly
//! once, whole, and nothing else.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tidemark::log::{LogReader, RecordKind};

use super::{Fixture, Rng};

pub const SCHEMA: &str = "
    CREATE TABLE payments (id bigserial PRIMARY KEY, amount numeric NOT NULL, note text);
    CREATE TABLE ledger (xid bigint PRIMARY KEY, changes int NOT NULL);
";

/// Writes transactions of 1 to 20 rows, and now and then one of 15,000 (it
/// streams) with a rolled-back savepoint inside, one in ten rolled back, until
/// `stop`. With `reconnect`, a lost connection is opened again (the server
/// restarts under it); an interrupted transaction is simply not in the ledger.
pub async fn workload(url: String, stop: Arc<AtomicBool>, seed: u64, reconnect: bool) {
    let mut rng = Rng(seed | 1);
    let mut client = super::connect(&url).await;
    while !stop.load(Ordering::Relaxed) {
        match transaction(&client, &mut rng).await {
            Ok(()) => {}
            Err(e) if reconnect => {
                let _ = e;
                client = loop {
                    if let Ok((client, connection)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(connection);
                        break client;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
            }
            Err(e) => panic!("the workload failed: {e}"),
        }
    }
}

async fn transaction(
    client: &tokio_postgres::Client,
    rng: &mut Rng,
) -> Result<(), tokio_postgres::Error> {
    let big = rng.next(15) == 0;
    let rows = if big { 15000 } else { 1 + rng.next(20) };
    let rollback = rng.next(10) == 0;
    client.batch_execute("BEGIN").await?;
    let mut changes = client
        .execute(
            "INSERT INTO payments (amount, note) SELECT g, repeat('p', 100) FROM generate_series(1, $1::int) g",
            &[&(rows as i32)],
        )
        .await?;
    changes += client
        .execute(
            "UPDATE payments SET amount = amount + 1 WHERE id IN (SELECT id FROM payments ORDER BY random() LIMIT 3)",
            &[],
        )
        .await?;
    if big {
        // A rolled-back subtransaction inside a streamed transaction: its rows must vanish.
        client
            .batch_execute(
                "SAVEPOINT s; INSERT INTO payments (amount, note) SELECT g, 'gone' FROM generate_series(1, 500) g; ROLLBACK TO SAVEPOINT s",
            )
            .await?;
    }
    changes += client
        .execute(
            "DELETE FROM payments WHERE id IN (SELECT id FROM payments ORDER BY random() LIMIT 1)",
            &[],
        )
        .await?;
    client
        .execute(
            "INSERT INTO ledger VALUES (txid_current() % 4294967296, $1)",
            &[&(changes as i32)],
        )
        .await?;
    client
        .batch_execute(if rollback { "ROLLBACK" } else { "COMMIT" })
        .await
}

/// What the raw log held, for the caller's own checks.
pub struct Tally {
    pub committed: usize,
    pub streamed: usize,
    pub resumes: usize,
}

/// Asserts the log at `config` holds exactly the ledger's transactions: each
/// present, complete, contiguous and once; none that rolled back.
pub fn assert_log_matches_ledger(fx: &Fixture, config: &Path) -> Tally {
    let ledger = fx.ledger();
    assert!(
        ledger.len() > 50,
        "the workload committed enough transactions: {}",
        ledger.len()
    );
    let lines = fx.log_json(config, &[]);
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
    let mut tally = Tally {
        committed: 0,
        streamed: 0,
        resumes: 0,
    };
    let mut reader = LogReader::open(&fx.log_dir()).unwrap();
    while let Some((_, record)) = reader.next_record().unwrap() {
        match (record.kind, record.data.first()) {
            (RecordKind::Wal, Some(b'C')) => tally.committed += 1,
            (RecordKind::Wal, Some(b'c')) => {
                tally.committed += 1;
                tally.streamed += 1;
            }
            (RecordKind::Resume, _) => tally.resumes += 1,
            _ => {}
        }
    }
    assert_eq!(
        tally.committed,
        ledger.len(),
        "finishing records in the raw log"
    );
    tally
}
