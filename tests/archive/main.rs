//! Capture as a daemon with an archive: sealed segments reach the object store
//! (local directory and S3), the manifest lists them in a hash chain, local
//! copies go once archived, and an unreachable store loses nothing.

mod encryption;
#[path = "../harness/mod.rs"]
mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harness::Fixture;
use tidemark::archive::manifest::{self, Manifest};
use tidemark::archive::store::{self, ObjectStore};
use tidemark::base::position::Lsn;
use tidemark::log::committed::{Assembler, Change, TxnInfo, TxnSink};
use tidemark::log::LogError;

const SCHEMA: &str = "CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric, note text)";

/// Counts inserted ids.
#[derive(Default)]
struct Ids(Vec<i64>);

impl TxnSink for Ids {
    type Error = LogError;
    fn begin(&mut self, _: &TxnInfo) -> Result<(), LogError> {
        Ok(())
    }
    fn change(&mut self, _: &TxnInfo, _: Lsn, change: Change) -> Result<(), LogError> {
        if let Change::Insert { new, .. } = change {
            if let tidemark::source::pgoutput::TupleValue::Text(id) = &new.0[0] {
                self.0.push(String::from_utf8_lossy(id).parse().unwrap());
            }
        }
        Ok(())
    }
    fn commit(&mut self, _: &TxnInfo) -> Result<(), LogError> {
        Ok(())
    }
}

/// The current manifest, checked: objects verified, chained and contiguous.
async fn checked_manifest(store: &dyn ObjectStore) -> Manifest {
    let (_, manifest) = manifest::load_latest(store)
        .await
        .unwrap()
        .expect("a manifest");
    let mut prev: Option<&manifest::SegmentEntry> = None;
    for entry in &manifest.segments {
        let body = store.get(&entry.key).await.unwrap();
        assert_eq!(body.len() as u64, entry.size);
        assert_eq!(manifest::sha256_hex(&body), entry.sha256, "{}", entry.key);
        if let Some(prev) = prev {
            assert_eq!(
                entry.prev_sha256.as_deref(),
                Some(prev.sha256.as_str()),
                "hash chain"
            );
            assert_eq!(
                entry.start_lsn, prev.end_lsn,
                "LSN continuity at {}",
                entry.key
            );
        }
        prev = Some(entry);
    }
    manifest
}

/// Every id inserted, read back from the archive alone.
async fn archived_ids(store: &dyn ObjectStore, manifest: &Manifest) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    for (i, entry) in manifest.segments.iter().enumerate() {
        let body = store.get(&entry.key).await.unwrap();
        let raw = zstd::decode_all(&body[..]).unwrap();
        std::fs::write(
            dir.path()
                .join(tidemark::log::segment::file_name(i as u64 + 1)),
            raw,
        )
        .unwrap();
    }
    let mut ids = Ids::default();
    Assembler::run(dir.path(), &mut ids).unwrap();
    ids.0
}

fn local_segments(dir: &Path) -> usize {
    tidemark::log::segment::list(dir).unwrap().len()
}

async fn wait_archived(store: &dyn ObjectStore, rows: usize) -> Manifest {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some((_, m))) = manifest::load_latest(store).await {
            if archived_ids(store, &m).await.len() >= rows {
                return m;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn workload(fx: &Fixture, from: i64, to: i64) {
    for start in (from..=to).step_by(100) {
        let end = (start + 99).min(to);
        fx.psql(&format!(
            "INSERT INTO payments SELECT g, g, 'n' FROM generate_series({start}, {end}) g"
        ));
    }
}

async fn archives_everything(
    fx: &Fixture,
    store: Arc<dyn ObjectStore>,
    archive_toml: &str,
    env: &[(&str, &str)],
) {
    let config = fx.config(
        &["public.payments"],
        &format!("\n[archive]\n{archive_toml}\nupload_interval = \"200ms\"\n"),
    );
    let capture = harness::Capture::start_with_env(&config, env);
    fx.streaming(&capture).arrives().await;
    workload(fx, 1, 1000);
    // While capture runs, committed changes reach the archive on their own:
    // the open segment is sealed on the interval, long before it fills.
    wait_archived(&*store, 1000).await;
    workload(fx, 1001, 1500);
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);

    let manifest = checked_manifest(&*store).await;
    assert_eq!(
        archived_ids(&*store, &manifest).await,
        (1..=1500).collect::<Vec<_>>()
    );
    assert_eq!(
        local_segments(&fx.log_dir()),
        1,
        "only the open segment stays local"
    );
    assert_eq!(manifest.source.slot, fx.slot());
}

#[tokio::test]
async fn the_local_directory_archive_holds_everything() {
    let fx = Fixture::new(SCHEMA);
    let url = fx.archive_url();
    let store = store::open(&url, &Default::default()).await.unwrap();
    archives_everything(&fx, store, &format!("url = {url:?}"), &[]).await;
    harness::assert_private(&fx.log_dir());
    harness::assert_private(&fx.archive_dir());
}

#[tokio::test]
async fn the_s3_archive_holds_everything() {
    let s3 = harness::s3();
    let fx = Fixture::new(SCHEMA);
    let bucket = s3.bucket().await;
    let url = format!("s3://{bucket}/prod/db1");
    let store = store::open(&url, &s3.options()).await.unwrap();
    let toml = format!(
        "url = {url:?}\nendpoint = {:?}\nregion = \"us-east-1\"\npath_style = true",
        s3.endpoint
    );
    archives_everything(&fx, store, &toml, &harness::s3_env()).await;
}

#[tokio::test]
async fn an_unreachable_store_loses_nothing_and_catches_up() {
    let fx = Fixture::new(SCHEMA);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let toml = format!("url = \"s3://late/db\"\nendpoint = {endpoint:?}\nregion = \"us-east-1\"\npath_style = true");
    let config = fx.config(
        &["public.payments"],
        &format!("\n[archive]\n{toml}\nupload_interval = \"200ms\"\n"),
    );
    let capture = harness::Capture::start_with_env(&config, &harness::s3_env());
    fx.streaming(&capture).arrives().await;
    workload(&fx, 1, 500);
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    let log_dir = fx.log_dir();
    let log_dir = &log_dir;
    harness::wait_until(
        Duration::from_secs(30),
        "segments to pile up locally",
        move || async move { local_segments(log_dir) >= 2 },
    )
    .await;
    harness::Event::new(
        "capture to count a failed upload",
        Duration::from_secs(30),
        || harness::metric(&config, "tidemark_upload_failures_total").is_some_and(|n| n > 0.0),
    )
    .arrives()
    .await;

    // The store comes up: everything captured meanwhile is uploaded.
    let late = harness::S3Server::start_on(port);
    late.create_bucket("late").await;
    let store = store::open("s3://late/db", &late.options()).await.unwrap();
    wait_archived(&*store, 500).await;
    assert_eq!(capture.stop(), 0);
    let manifest = checked_manifest(&*store).await;
    assert_eq!(
        archived_ids(&*store, &manifest).await,
        (1..=500).collect::<Vec<_>>()
    );
}

const RICH_SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('ok', 'sad');
    CREATE TABLE accounts (
        id bigint PRIMARY KEY,
        owner text NOT NULL DEFAULT 'nobody',
        balance numeric(12,2) CHECK (balance >= 0),
        tags text[],
        doc jsonb,
        m mood,
        doubled bigint GENERATED ALWAYS AS (id * 2) STORED
    );
    CREATE INDEX accounts_owner ON accounts (owner);
    ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
    CREATE POLICY own_rows ON accounts USING (owner = current_user);
    INSERT INTO accounts (id, owner, balance, tags, doc, m)
        SELECT g, 'user' || (g % 7), g / 100.0, ARRAY['a', g::text], jsonb_build_object('g', g), 'ok'
        FROM generate_series(1, 5000) g;
";

const ROWS_MD5: &str = "SELECT md5(string_agg(a::text, '|' ORDER BY id)) FROM accounts a";

#[tokio::test]
async fn the_base_snapshot_matches_the_source_and_keeps_the_schema() {
    let fx = Fixture::new(RICH_SCHEMA);
    let url = fx.archive_url();
    let store = store::open(&url, &Default::default()).await.unwrap();
    let config = fx.config(
        &["public.accounts"],
        &format!("\n[archive]\nurl = {url:?}\n"),
    );
    let capture = fx.start_capture_async(&config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let manifest = loop {
        if let Ok(Some((_, m))) = manifest::load_latest(&*store).await {
            if !m.snapshots.is_empty() {
                break m;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot: {}",
            capture.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(capture.stop(), 0);

    let snapshot = &manifest.snapshots[0];
    assert_eq!(snapshot.method, "copy");
    let schema_body = store.get(&snapshot.schema.key).await.unwrap();
    assert_eq!(manifest::sha256_hex(&schema_body), snapshot.schema.sha256);
    let schema: tidemark::source::schema::SchemaSet = serde_json::from_slice(&schema_body).unwrap();
    let table = &schema.tables[0];
    assert_eq!(table.primary_key, vec!["id"]);
    assert!(table
        .constraints
        .iter()
        .any(|c| c.sql.starts_with("CHECK ((balance >=")));
    assert!(table.indexes.iter().any(|i| i.name == "accounts_owner"));
    assert!(table.row_security && table.policies[0].name == "own_rows");
    assert_eq!(table.columns[6].generated.as_deref(), Some("(id * 2)"));
    assert_eq!(schema.enums[0].labels, vec!["ok", "sad"]);

    // Load the snapshot into an empty database with the archived schema alone.
    let target = Fixture::new("");
    let client = harness::connect(&target.url()).await;
    for e in &schema.enums {
        let labels: Vec<String> = e.labels.iter().map(|l| format!("'{l}'")).collect();
        client
            .batch_execute(&format!(
                "CREATE TYPE {}.{} AS ENUM ({})",
                e.schema,
                e.name,
                labels.join(", ")
            ))
            .await
            .unwrap();
    }
    client
        .batch_execute(&table.create_table_sql())
        .await
        .unwrap();
    let object = &snapshot.tables[0];
    let body = store.get(&object.key).await.unwrap();
    assert_eq!(manifest::sha256_hex(&body), object.sha256);
    let rows = zstd::decode_all(&body[..]).unwrap();
    assert_eq!(rows.len() as u64, object.raw_size);
    let sink = client
        .copy_in(&format!(
            "COPY accounts ({}) FROM STDIN (FORMAT binary)",
            object.columns.join(", ")
        ))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from(rows)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);
    assert_eq!(target.psql(ROWS_MD5), fx.psql(ROWS_MD5));
}

fn flip_bit(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at % bytes.len();
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn list_and_verify_see_the_archive_and_name_each_corruption() {
    let fx = Fixture::new(RICH_SCHEMA);
    let (dir, url) = (fx.archive_dir(), fx.archive_url());
    let store = store::open(&url, &Default::default()).await.unwrap();
    let config = fx.config(
        &["public.accounts"],
        &format!("\n[archive]\nurl = {url:?}\nupload_interval = \"200ms\"\n"),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    fx.psql("UPDATE accounts SET balance = balance + 1 WHERE id <= 100");
    fx.psql("DELETE FROM accounts WHERE id > 4900");
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);
    let cfg = config.to_str().unwrap();

    let out = harness::tidemark(&["list", "--config", cfg, "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (_, manifest) = manifest::load_latest(&*store).await.unwrap().unwrap();
    let snapshot = &manifest.snapshots[0];
    assert_eq!(list["window"]["earliest"]["lsn"], snapshot.lsn.to_string());
    assert_eq!(
        list["window"]["latest"]["lsn"],
        manifest.segments.last().unwrap().end_lsn.to_string()
    );
    assert!(list["window"]["latest"]["time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1);
    assert!(list["segments"]["count"].as_u64().unwrap() >= 1);
    assert_eq!(list["gaps"], serde_json::json!([]));
    let text = harness::tidemark(&["list", "--config", cfg], &[]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("Restore window:"));

    let verify = |deep: bool| {
        let mut args = vec!["verify", "--config", cfg, "--json"];
        if deep {
            args.push("--deep");
        }
        let out = harness::tidemark(&args, &[]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            out.status.code(),
            report,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, report, _) = verify(true);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert!(report["objects_checked"].as_u64().unwrap() >= 4);

    let table_key = snapshot.tables[0].key.clone();
    let segment_key = manifest.segments[0].key.clone();
    let (manifest_key, _) = manifest::load_latest(&*store).await.unwrap().unwrap();
    for key in [&table_key, &segment_key, &manifest_key] {
        let path = dir.join(key);
        let original = std::fs::read(&path).unwrap();
        flip_bit(&path, original.len() / 2);
        let (code, report, stderr) = verify(false);
        assert_eq!(
            code,
            Some(1),
            "a flipped bit in {key} went unnoticed: {report}"
        );
        assert_eq!(report["ok"], false);
        assert!(harness::report_names(&report, key), "{report}");
        assert!(stderr.contains(key.as_str()), "{stderr}");
        std::fs::write(&path, original).unwrap();
    }
    // Older manifests are checked too, each against its own hash.
    let mut manifests: Vec<String> = store
        .list(manifest::PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 2, "{manifests:?}");
    let older = dir.join(&manifests[0]);
    let original = std::fs::read(&older).unwrap();
    flip_bit(&older, original.len() / 2);
    let (code, report, _) = verify(false);
    assert_eq!(
        code,
        Some(1),
        "a flipped bit in an older manifest went unnoticed: {report}"
    );
    assert!(
        report["problems"].to_string().contains(&manifests[0]),
        "{report}"
    );
    std::fs::write(&older, original).unwrap();
    assert_eq!(
        report["manifests_checked"].as_u64(),
        Some(manifests.len() as u64)
    );

    // Objects no manifest lists are orphans: listed apart, deleted by prune once a day old.
    let stale = dir.join("segments/leftover-of-a-killed-upload");
    let fresh = dir.join("segments/upload-in-flight");
    for path in [&stale, &fresh] {
        std::fs::write(path, b"partial").unwrap();
    }
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let (code, report, _) = verify(false);
    assert_eq!(code, Some(0), "orphans are not damage: {report}");
    let orphans = report["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 2, "{report}");
    assert!(orphans
        .iter()
        .any(|o| o["key"] == "segments/leftover-of-a-killed-upload"
            && o["age_seconds"].as_u64().unwrap() >= 2 * 24 * 3600 - 60));
    let out = harness::tidemark(&["prune", "--config", cfg, "--json"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pruned["deleted_orphans"].as_array().unwrap().len(),
        1,
        "{pruned}"
    );
    assert!(!stale.exists() && fresh.exists());
    std::fs::remove_file(&fresh).unwrap();

    std::fs::remove_file(dir.join(&segment_key)).unwrap();
    let (code, report, _) = verify(false);
    assert_eq!(code, Some(1));
    assert!(
        report["problems"]
            .to_string()
            .contains("missing from the store"),
        "{report}"
    );
}

#[tokio::test]
async fn a_full_local_log_holds_the_slot_back_and_loses_nothing() {
    let fx = Fixture::new(SCHEMA);
    let port = harness::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let archive = format!(
        "segment_size = \"1MiB\"\nmax_size = \"3MiB\"\n\n[archive]\nurl = \"s3://full/db\"\nendpoint = {endpoint:?}\nregion = \"us-east-1\"\npath_style = true\nupload_interval = \"200ms\"\n"
    );
    let config = fx.config(&["public.payments"], &archive);
    let capture = harness::Capture::start_with_env(&config, &harness::s3_env());
    fx.streaming(&capture).arrives().await;
    // About 6 MB of changes: twice what the local log may hold.
    for start in (1..=24_000).step_by(2000) {
        fx.psql(&format!(
            "INSERT INTO payments SELECT g, g, repeat('x', 200) FROM generate_series({start}, {}) g",
            start + 1999
        ));
    }
    harness::Event::new("the local log to fill", Duration::from_secs(60), || {
        harness::metric(&config, "tidemark_log_full") == Some(1.0)
    })
    .arrives()
    .await;
    // Capture reads nothing more; once it has confirmed all it stored, the
    // slot must still hold the WAL it did not store.
    let wal_end = fx.current_wal_lsn();
    harness::Event::new(
        "capture to confirm what it stored",
        Duration::from_secs(30),
        || {
            let durable = harness::metric(&config, "tidemark_log_durable_lsn");
            durable.is_some_and(|d| fx.confirmed_flush().is_some_and(|c| c.0 as f64 == d))
        },
    )
    .arrives()
    .await;
    assert!(
        fx.confirmed_flush().unwrap() < wal_end,
        "the slot kept the WAL capture could not store"
    );
    let local: u64 = tidemark::log::segment::list(&fx.log_dir())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        local <= 5 << 20,
        "the local log stayed near its bound: {local}"
    );

    let late = harness::S3Server::start_on(port);
    late.create_bucket("full").await;
    let store = store::open("s3://full/db", &late.options()).await.unwrap();
    fx.caught_up(Duration::from_secs(120)).arrives().await;
    wait_archived(&*store, 24_000).await;
    assert_eq!(capture.stop(), 0);
    let manifest = checked_manifest(&*store).await;
    assert_eq!(
        archived_ids(&*store, &manifest).await,
        (1..=24_000).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_archived_schema_rebuilds_constraints_indexes_and_policies() {
    let fx = Fixture::new(&format!(
        "{RICH_SCHEMA}
        CREATE TABLE owners (name text PRIMARY KEY);
        INSERT INTO owners SELECT DISTINCT owner FROM accounts;
        ALTER TABLE accounts ADD CONSTRAINT accounts_owner_fk FOREIGN KEY (owner) REFERENCES owners (name);
        CREATE UNIQUE INDEX accounts_doc ON accounts ((doc->>'g'));
        CREATE TABLE audit (id serial PRIMARY KEY, v text);
        ALTER TABLE audit REPLICA IDENTITY FULL;"
    ));
    let client = harness::connect(&fx.url()).await;
    let tables: Vec<_> = ["public.owners", "public.accounts", "public.audit"]
        .iter()
        .map(|t| t.parse::<tidemark::base::table::TableName>().unwrap())
        .collect();
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let schema = tidemark::source::schema::read(&client, &tables)
        .await
        .unwrap();
    client.batch_execute("COMMIT").await.unwrap();

    let target = Fixture::new("");
    let restored = harness::connect(&target.url()).await;
    restored
        .batch_execute(&(schema.pre_data_sql().join(";\n") + ";"))
        .await
        .unwrap();
    let post: Vec<String> = schema
        .primary_key_sql()
        .into_iter()
        .chain(schema.post_data_sql())
        .collect();
    restored
        .batch_execute(&(post.join(";\n") + ";"))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", schema.post_data_sql().join(";\n")));
    let catalog = |fx: &Fixture| {
        fx.psql(
            "SELECT string_agg(x, ' | ' ORDER BY x) FROM (
               SELECT conrelid::regclass::text || ':' || conname || ':' || pg_get_constraintdef(oid) AS x FROM pg_constraint WHERE connamespace = 'public'::regnamespace
               UNION ALL SELECT indexrelid::regclass::text || ':' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid::regclass::text IN ('accounts', 'owners', 'audit')
               UNION ALL SELECT polname || ':' || pg_get_expr(polqual, polrelid) FROM pg_policy
               UNION ALL SELECT relname || ':' || relreplident::text || relrowsecurity::text FROM pg_class WHERE relname IN ('accounts', 'owners', 'audit')
             ) s",
        )
    };
    assert_eq!(catalog(&target), catalog(&fx));
}
