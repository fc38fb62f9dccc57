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

#[tokio::test]
async fn compaction_equals_a_fresh_read_of_the_source() {
    let fx = Fixture::new(SCHEMA);
    fx.psql(&format!("UPDATE accounts SET big = {BIG} WHERE id <= 10"));
    let url = fx.archive_url();
    let config = fx.config(
        &["public.accounts", "public.ledger", "public.events"],
        &format!("\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\n"),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    for sql in WORKLOAD {
        fx.psql(sql);
    }
    fx.caught_up(Duration::from_secs(30)).arrives().await;
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
    let client = std::sync::Arc::new(harness::connect(&target.url()).await);
    let schema_body = store.get(&compacted.schema.key).await.unwrap();
    let schema: tidemark::source::schema::SchemaSet = serde_json::from_slice(&schema_body).unwrap();
    let accounts = schema.tables.iter().find(|t| t.name == "accounts").unwrap();
    let columns: Vec<&str> = accounts.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        columns,
        ["id", "balance", "big", "m", "region"],
        "columns follow the source"
    );
    tidemark::replay::load::create_tables(&client, &schema)
        .await
        .unwrap();
    tidemark::replay::load::load_tables(
        std::slice::from_ref(&client),
        &*store,
        compacted.tables.iter().collect(),
        target.dir.path(),
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .unwrap();
    for table in ["accounts", "ledger", "events"] {
        assert_eq!(target.md5(table), fx.md5(table), "table {table}");
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

fn now_rfc3339(fx: &Fixture) -> String {
    fx.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn all_md5(fx: &Fixture) -> String {
    ["accounts", "ledger", "events"]
        .map(|t| fx.md5(t))
        .join(",")
}

/// Rebuilds the archive at `time` into a new database and returns its md5s.
async fn restored_md5(
    store: &dyn tidemark::archive::store::ObjectStore,
    time: &str,
) -> Result<String, String> {
    use tidemark::replay::{apply::Target, rebuild};
    let (_, manifest) = manifest::load_latest(store).await.unwrap().unwrap();
    let plan =
        rebuild::plan(&manifest, Target::Time(time.parse().unwrap())).map_err(|e| e.to_string())?;
    let target = Fixture::new("");
    let client = std::sync::Arc::new(harness::connect(&target.url()).await);
    rebuild::rebuild(store, &plan, &[client], target.dir.path())
        .await
        .map_err(|e| e.to_string())?;
    Ok(all_md5(&target))
}

#[tokio::test]
async fn pruning_keeps_every_point_in_the_window_restorable() {
    let fx = Fixture::new(SCHEMA);
    let url = fx.archive_url();
    let tables = ["public.accounts", "public.ledger", "public.events"];
    let archive = format!("\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\n");
    let config = fx.config(&tables, &archive);
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    let before_window = now_rfc3339(&fx);
    for sql in &WORKLOAD[..5] {
        fx.psql(sql);
    }
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);
    let out = harness::tidemark(&["compact", "--config", config.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Q: nothing commits between the compacted snapshot and here.
    let q_md5 = all_md5(&fx);
    let q_time = now_rfc3339(&fx);
    let config = fx.config(&tables, &archive);
    let capture = fx.start_capture_async(&config).await;
    for sql in &WORKLOAD[5..10] {
        fx.psql(sql);
    }
    let p_md5 = all_md5(&fx);
    let p_time = now_rfc3339(&fx);
    for sql in &WORKLOAD[10..] {
        fx.psql(sql);
    }
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);

    // A window that starts at Q.
    let q: tidemark::base::position::PgTimestamp = q_time.parse().unwrap();
    let now = tidemark::base::position::PgTimestamp::now();
    let window_ms = (now.0 - q.0) / 1000;
    let config = fx.config(
        &tables,
        &format!("{archive}\n[retention]\nwindow = \"{window_ms}ms\"\n"),
    );
    let out = harness::tidemark(
        &["prune", "--config", config.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pruned["deleted_snapshots"].as_array().unwrap().len(),
        1,
        "{pruned}"
    );
    assert!(
        pruned["deleted_segments"].as_u64().unwrap() >= 1,
        "{pruned}"
    );

    let store = store::open(&url, &Default::default()).await.unwrap();
    let verify = harness::tidemark(&["verify", "--config", config.to_str().unwrap()], &[]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(
        restored_md5(&*store, &q_time).await.unwrap(),
        q_md5,
        "the oldest point in the window"
    );
    assert_eq!(
        restored_md5(&*store, &p_time).await.unwrap(),
        p_md5,
        "a later point"
    );
    let error = restored_md5(&*store, &before_window).await.unwrap_err();
    assert!(error.contains("outside the restore window"), "{error}");
}

#[tokio::test]
async fn capture_compacts_and_prunes_on_its_own() {
    let fx = Fixture::new(SCHEMA);
    let url = fx.archive_url();
    let config = fx.config(
        &["public.accounts", "public.ledger", "public.events"],
        &format!(
            "\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\ncompact_interval = \"1s\"\n\n[retention]\nwindow = \"1h\"\n"
        ),
    );
    let capture = fx.start_capture_async(&config).await;
    // Changes after the base snapshot, or there is nothing to compact.
    fx.base_snapshot(&config).arrives().await;
    for sql in &WORKLOAD[..4] {
        fx.psql(sql);
    }
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    let store = store::open(&url, &Default::default()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        if let Ok(Some((_, m))) = manifest::load_latest(&*store).await {
            if m.snapshots.iter().any(|s| s.method == "compaction") {
                break m;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction: {}",
            capture.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let config = &config;
    harness::wait_until(
        Duration::from_secs(30),
        "a prune pass",
        move || async move {
            harness::sample(
                &harness::scrape(harness::metrics_port(config)),
                "tidemark_prune_seconds_count",
            )
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(capture.stop(), 0);
    assert!(manifest.snapshots.len() >= 2);
    let verify = harness::tidemark(
        &["verify", "--config", config.to_str().unwrap(), "--deep"],
        &[],
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// A snapshot taken while a streamed transaction is open, in the middle of a
/// session (relations were sent long before): its chain must still restore whole.
#[tokio::test]
async fn a_snapshot_taken_mid_transaction_restores_whole() {
    let fx = Fixture::new(
        "CREATE TABLE small (id serial PRIMARY KEY, v text);
         CREATE TABLE big (id bigint PRIMARY KEY, payload text);",
    );
    fx.psql(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        fx.db
    ));
    let url = fx.archive_url();
    let config = fx.config(
        &["public.small", "public.big"],
        &format!(
            "\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\ncompact_interval = \"1s\"\n"
        ),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.psql("INSERT INTO small (v) SELECT 'early' FROM generate_series(1, 10)");
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    let store = store::open(&url, &Default::default()).await.unwrap();

    // Open a streamed transaction, and keep the archive moving while it is open.
    let open_from = fx.current_wal_lsn();
    let client = harness::connect(&fx.url()).await;
    client
        .batch_execute(
            "BEGIN; INSERT INTO big SELECT g, repeat('p', 300) FROM generate_series(1, 5000) g",
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        fx.psql("INSERT INTO small (v) VALUES ('during')");
        if let Ok(Some((_, m))) = manifest::load_latest(&*store).await {
            if m.snapshots.iter().any(|s| {
                s.method == "compaction" && s.lsn > tidemark::base::position::EndLsn(open_from)
            }) {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction while the transaction was open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .batch_execute(
            "INSERT INTO big SELECT g, 'second half' FROM generate_series(5001, 6000) g; COMMIT",
        )
        .await
        .unwrap();
    let commit_lsn = fx.current_wal_lsn();
    fx.psql("INSERT INTO small (v) SELECT 'after' FROM generate_series(1, 5)");
    fx.caught_up(Duration::from_secs(60)).arrives().await;
    assert_eq!(capture.stop(), 0);

    // Restore from the snapshot taken mid-transaction (hide any taken after the commit).
    let (_, mut manifest) = manifest::load_latest(&*store).await.unwrap().unwrap();
    manifest
        .snapshots
        .retain(|s| s.lsn < tidemark::base::position::EndLsn(commit_lsn));
    let plan = tidemark::replay::rebuild::plan(&manifest, tidemark::replay::apply::Target::Latest)
        .unwrap();
    assert!(
        plan.snapshot.lsn > tidemark::base::position::EndLsn(open_from),
        "the snapshot lies inside the open transaction"
    );
    assert!(plan.segments[0].start_lsn < plan.snapshot.lsn);
    let target = Fixture::new("");
    let restored = std::sync::Arc::new(harness::connect(&target.url()).await);
    tidemark::replay::rebuild::rebuild(&*store, &plan, &[restored], target.dir.path())
        .await
        .unwrap();
    for table in ["small", "big"] {
        assert_eq!(target.md5(table), fx.md5(table), "table {table}");
    }
    assert_eq!(target.psql("SELECT count(*) FROM big"), "6000");
}

/// The scratch server compaction rebuilds in holds decrypted tables: it has
/// no TCP listener and no password, only a socket in a 0700 directory.
#[test]
fn the_scratch_server_listens_only_on_a_private_socket() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tidemark::replay::scratch::ScratchServer::start(&[]).unwrap();
    assert_eq!(
        scratch.psql("postgres", "SHOW listen_addresses").unwrap(),
        ""
    );
    assert!(scratch.password().is_none());
    let mode = std::fs::metadata(scratch.socket_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", scratch.port())).is_err(),
        "nothing listens on its port"
    );
}
