//! Compaction: a new base snapshot from the previous one plus the archived
//! segments, without the source, equal to a fresh read of the source at X.

mod harness;

use std::time::Duration;

use harness::Fixture;
use tidemark::archive::manifest;
use tidemark::archive::store;

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('ok', 'sad');
    CREATE TABLE accounts (id bigint PRIMARY KEY, owner text, balance numeric(12,2), big text, m mood);
    CREATE TABLE ledger (v text, n int);
    ALTER TABLE ledger REPLICA IDENTITY FULL;
    CREATE TABLE events (id serial PRIMARY KEY, note text);
    INSERT INTO accounts SELECT g, 'o' || g, g, NULL, 'ok' FROM generate_series(1, 20) g;
    INSERT INTO ledger VALUES ('seed', 0);
";

/// An incompressible value big enough to be TOASTed out of line.
const BIG: &str = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 120))";

const WORKLOAD: &[&str] = &[
    "INSERT INTO accounts SELECT g, 'o' || g, g, NULL, 'ok' FROM generate_series(21, 200) g",
    "UPDATE accounts SET big = (SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 120) g) WHERE id <= 30",
    // Leaves the TOASTed column unchanged: the snapshot must keep the last full value.
    "UPDATE accounts SET balance = balance + 0.5 WHERE id <= 60",
    "DELETE FROM accounts WHERE id > 150",
    "INSERT INTO ledger VALUES ('dup', 1), ('dup', 1), ('dup', 1), ('other', 2)",
    "DELETE FROM ledger WHERE ctid = (SELECT ctid FROM ledger WHERE v = 'dup' LIMIT 1)",
    "UPDATE ledger SET n = 3 WHERE v = 'other'",
    "INSERT INTO events (note) SELECT 'e' || g FROM generate_series(1, 50) g",
    "TRUNCATE events",
    "INSERT INTO events (note) VALUES ('after truncate')",
    "ALTER TABLE accounts ADD COLUMN region text",
    "UPDATE accounts SET region = 'us', m = 'sad' WHERE id < 10",
    "ALTER TABLE accounts DROP COLUMN owner",
    "UPDATE accounts SET balance = 7 WHERE id = 100",
];

fn table_md5(fx: &Fixture, table: &str) -> String {
    fx.psql(&format!(
        "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
    ))
}

#[tokio::test]
async fn compaction_equals_a_fresh_read_of_the_source() {
    let fx = Fixture::new(SCHEMA);
    fx.psql(&format!("UPDATE accounts SET big = {BIG} WHERE id <= 10"));
    let dir = fx.dir.path().join("archive");
    let url = format!("file://{}", dir.display());
    let config = fx.config(
        &["public.accounts", "public.ledger", "public.events"],
        &format!("\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\n"),
    );
    let capture = fx.start_capture(&config);
    harness::wait_for(Duration::from_secs(60), "the base snapshot", || {
        capture.logs().contains("base snapshot stored")
    });
    for sql in WORKLOAD {
        fx.psql(sql);
    }
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);

    let out = harness::tidemark(&["compact", "--config", config.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("New base snapshot at"), "{stdout}");

    let store = store::open(&url, &Default::default()).await.unwrap();
    let (_, manifest) = manifest::load_latest(&*store).await.unwrap().unwrap();
    assert_eq!(manifest.snapshots.len(), 2);
    let compacted = manifest.snapshots.last().unwrap();
    assert_eq!(compacted.method, "compaction");
    assert_eq!(compacted.lsn, manifest.segments.last().unwrap().end_lsn);

    // Load the compacted snapshot, with its own schema, into an empty database.
    let target = Fixture::new("");
    let client = harness::connect(&target.url()).await;
    let schema_body = store.get(&compacted.schema.key).await.unwrap();
    let schema: tidemark::archive::schema::SchemaSet =
        serde_json::from_slice(&schema_body).unwrap();
    let accounts = schema.tables.iter().find(|t| t.name == "accounts").unwrap();
    let columns: Vec<&str> = accounts.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        columns,
        ["id", "balance", "big", "m", "region"],
        "columns follow the source"
    );
    tidemark::restore::load::create_tables(&client, &schema)
        .await
        .unwrap();
    for object in &compacted.tables {
        tidemark::restore::load::load_table(&client, &*store, object, target.dir.path())
            .await
            .unwrap();
    }
    for table in ["accounts", "ledger", "events"] {
        assert_eq!(
            table_md5(&target, table),
            table_md5(&fx, table),
            "table {table}"
        );
    }
    assert_eq!(
        target.psql("SELECT count(*) FROM ledger WHERE v = 'dup'"),
        "2"
    );
    assert_eq!(
        target.psql("SELECT count(*) FROM accounts WHERE length(big) > 3000"),
        "30"
    );

    // Nothing new since: a second compaction has nothing to do.
    let again = harness::tidemark(&["compact", "--config", config.to_str().unwrap()], &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("Nothing to compact"));
}
