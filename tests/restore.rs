//! `tidemark restore`: to a time, to an LSN, latest for one table; dry runs;
//! and every refusal, against a real archive.

mod harness;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::Fixture;

const SCHEMA: &str = "
    CREATE TYPE kind AS ENUM ('card', 'wire');
    CREATE TABLE payments (id serial PRIMARY KEY, amount numeric(12,2) NOT NULL CHECK (amount > 0), kind kind, note text);
    CREATE INDEX payments_kind ON payments (kind);
    CREATE TABLE notes (body text);
    ALTER TABLE notes REPLICA IDENTITY FULL;
";

/// Scratch databases no running restore holds (by its advisory lock): what a restore must not leave.
const ABANDONED_SCRATCH: &str =
    "SELECT count(*) FROM pg_database d WHERE starts_with(datname, 'tidemark_scratch_') \
    AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = 29805 \
    AND l.objsubid = 2 AND l.objid::text = substr(d.datname, 18))";

fn restore(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = harness::tidemark(&["restore", "--config", config.to_str().unwrap()], args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn restores_to_times_lsns_and_latest_and_refuses_what_it_must() {
    let fx = Fixture::new(SCHEMA);
    let dir = fx.dir.path().join("archive");
    let config = fx.config(
        &["public.payments", "public.notes"],
        &format!(
            "\n[archive]\nurl = \"file://{}\"\nupload_interval = \"200ms\"\n",
            dir.display()
        ),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;

    fx.psql("INSERT INTO payments (amount, kind, note) SELECT g, 'card', 'n' || g FROM generate_series(1, 300) g");
    fx.psql("INSERT INTO notes VALUES ('a'), ('a'), ('b')");
    // Point 1, by time, in the form PostgreSQL prints.
    let time1 = fx.psql("SELECT clock_timestamp()::text");
    let want1 = (fx.md5("payments"), fx.md5("notes"));
    fx.psql("UPDATE payments SET kind = 'wire', amount = amount * 2 WHERE id % 3 = 0");
    fx.psql("DELETE FROM notes WHERE ctid = (SELECT ctid FROM notes WHERE body = 'a' LIMIT 1)");
    // Point 2, by LSN.
    fx.psql("SELECT txid_current()");
    let lsn2 = fx.current_wal_lsn().to_string();
    let want2 = (fx.md5("payments"), fx.md5("notes"));
    let want2_wire = fx.psql(&harness::rows_md5_sql("payments", "kind = 'wire'"));
    fx.psql("DELETE FROM payments WHERE id > 250");
    let latest_payments = fx.md5("payments");
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);

    let target = |name: &str| {
        fx.psql(&format!("CREATE DATABASE {}_{name}", fx.db));
        fx.cluster.url(&format!("{}_{name}", fx.db))
    };
    let in_db = |name: &str, sql: &str| fx.cluster.psql(&format!("{}_{name}", fx.db), sql).unwrap();
    let md5_in = |name: &str, table: &str| in_db(name, &harness::table_md5_sql(table));

    let url1 = target("t1");
    let (code, stdout, stderr) = restore(&config, &["--to", &time1, "--target", &url1]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("rows/s"), "{stdout}");
    assert_eq!((md5_in("t1", "payments"), md5_in("t1", "notes")), want1);
    // The schema came back too, and serials continue after the restored rows.
    assert_eq!(
        in_db(
            "t1",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'payments_kind'"
        ),
        "1"
    );
    assert_eq!(
        in_db(
            "t1",
            "INSERT INTO payments (amount) VALUES (1) RETURNING id"
        ),
        "301"
    );

    let url2 = target("t2");
    let (code, stdout, stderr) = restore(&config, &["--to", &lsn2, "--target", &url2, "--json"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!((md5_in("t2", "payments"), md5_in("t2", "notes")), want2);
    let restored: serde_json::Value = serde_json::from_str(&stdout).unwrap();

    let url3 = target("t3");
    let (code, stdout, stderr) = restore(
        &config,
        &[
            "--to",
            "latest",
            "--target",
            &url3,
            "--table",
            "public.payments",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(md5_in("t3", "payments"), latest_payments);
    assert_eq!(in_db("t3", "SELECT to_regclass('notes') IS NULL"), "t");

    // One tenant back into live tables: its rows replaced by those at point 2,
    // every other row left exactly as it is.
    fx.cluster
        .psql(
            &format!("{}_t3", fx.db),
            "UPDATE payments SET note = 'kept' WHERE kind IS DISTINCT FROM 'wire'; DELETE FROM payments WHERE kind = 'wire'",
        )
        .unwrap();
    let others = |name: &str| {
        in_db(
            name,
            &harness::rows_md5_sql("payments", "kind IS DISTINCT FROM 'wire'"),
        )
    };
    let tenant = [
        "--to",
        &lsn2,
        "--target",
        &url3,
        "--table",
        "public.payments",
        "--data-only",
        "--where",
        "kind = 'wire'",
    ];
    let (code, _, stderr) = restore(&config, &tenant);
    assert_eq!(code, Some(2), "a table with rows needs --force: {stderr}");
    // A predicate the target cannot evaluate leaves its rows as they were.
    let everything = || in_db("t3", &harness::table_md5_sql("payments"));
    let before_bad = everything();
    let mut bad = tenant.to_vec();
    *bad.last_mut().unwrap() = "no_such_column = 1";
    let (code, _, stderr) = restore(&config, &[&bad[..], &["--force"]].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("does not apply to table"), "{stderr}");
    assert_eq!(
        everything(),
        before_bad,
        "a refused predicate changed the target"
    );
    // --where is one boolean expression: a second statement, an unbalanced
    // parenthesis or a comment eating the closing one are refused, and touch nothing.
    for hostile in [
        "kind = 'wire'; DROP TABLE payments",
        "kind = 'wire')",
        "true) OR (true",
        "true --",
        "amount",
    ] {
        *bad.last_mut().unwrap() = hostile;
        let (code, _, stderr) = restore(&config, &[&bad[..], &["--force"]].concat());
        if hostile == "true) OR (true" {
            // Balanced once wrapped: one boolean expression, so it is taken (all rows).
            assert_eq!(code, Some(0), "{hostile}: {stderr}");
            continue;
        }
        assert_eq!(code, Some(2), "{hostile}: {stderr}");
        assert!(
            stderr.contains("does not apply to table"),
            "{hostile}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert_eq!(
            in_db("t3", "SELECT to_regclass('payments') IS NOT NULL"),
            "t"
        );
    }
    fx.cluster
        .psql(
            &format!("{}_t3", fx.db),
            "UPDATE payments SET note = 'kept' WHERE kind IS DISTINCT FROM 'wire'; DELETE FROM payments WHERE kind = 'wire'",
        )
        .unwrap();
    let others_before = others("t3");
    let before_tenant = everything();
    let (code, stdout, stderr) = restore(&config, &[&tenant[..], &["--force", "--json"]].concat());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    // The rows it replaced were saved first, with the SQL that puts them back.
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let copy = &summary["safety_copies"][0];
    assert!(
        copy["copy"]
            .as_str()
            .unwrap()
            .starts_with("tidemark_safety."),
        "{summary}"
    );
    assert!(stderr.contains("to put them back"), "{stderr}");
    assert_eq!(
        in_db("t3", &harness::rows_md5_sql("payments", "kind = 'wire'")),
        want2_wire
    );
    assert_eq!(
        others("t3"),
        others_before,
        "rows outside the predicate changed"
    );
    in_db("t3", copy["put_back"].as_str().unwrap());
    assert_eq!(
        everything(),
        before_tenant,
        "the safety copy puts the rows back"
    );

    // One tenant: the rows satisfying the predicate at point 2, and only those.
    let url5 = target("t5");
    let (code, stdout, stderr) = restore(
        &config,
        &[
            "--to",
            &lsn2,
            "--target",
            &url5,
            "--table",
            "public.payments",
            "--where",
            "kind = 'wire'",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(md5_in("t5", "payments"), want2_wire);
    assert_eq!(
        in_db("t5", "SELECT count(*) FROM payments WHERE kind <> 'wire'"),
        "0"
    );

    // A dry run plans and touches nothing.
    let url4 = target("t4");
    let (code, stdout, _) = restore(&config, &["--to", "latest", "--target", &url4, "--dry-run"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("Nothing was touched"), "{stdout}");
    assert!(stdout.contains("Estimated time"), "{stdout}");
    // Its counts are exactly what the restore to the same point applied.
    let (code, stdout, _) = restore(&config, &["--to", &lsn2, "--dry-run", "--json"]);
    assert_eq!(code, Some(0));
    let planned: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["transactions", "changes"] {
        assert_eq!(
            planned[key], restored[key],
            "{key}: {planned} vs {restored}"
        );
    }
    assert!(planned["changes"].as_u64().unwrap() > 0, "{planned}");
    assert!(
        planned["estimated_seconds"].as_f64().unwrap() > 0.0,
        "{planned}"
    );
    assert_eq!(
        in_db(
            "t4",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );

    // Refusals: one line each, exit 2.
    let refused = |args: &[&str], expect: &str| {
        let (code, stdout, stderr) = restore(&config, args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            !stderr.contains(harness::cluster().password().unwrap()),
            "{stderr}"
        );
    };
    refused(&["--to", "latest", "--target", &fx.url()], "is the source");
    refused(
        &["--to", "latest", "--target", &url1],
        "already exists in the target",
    );
    refused(
        &["--to", "latest", "--target", &url1, "--data-only"],
        "already holds rows",
    );
    refused(
        &["--to", "2001-01-01T00:00:00Z", "--target", &url4],
        "outside the restore window",
    );
    refused(
        &["--to", "yesterday", "--target", &url4],
        "is not a restore point",
    );
    refused(
        &[
            "--to",
            "latest",
            "--target",
            &url4,
            "--table",
            "public.nope",
        ],
        "is not in the archive",
    );

    // History: who changed payment 3, and when, from the archive alone.
    let history = |args: &[&str]| {
        let out = harness::tidemark(
            &["history", "--config", config.to_str().unwrap(), "--json"],
            args,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let changes = history(&["--table", "public.payments", "--key", r#"{"id": 3}"#]);
    let ops: Vec<&str> = changes.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["insert", "update"], "{changes:?}");
    assert_eq!(changes[1]["new"]["kind"], "wire");
    assert!(
        changes[0]["commit_time"].as_str().unwrap() < changes[1]["commit_time"].as_str().unwrap()
    );
    let time1_rfc = fx.psql(&format!(
        "SELECT to_char('{time1}'::timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ));
    let later = history(&[
        "--table",
        "public.payments",
        "--key",
        r#"{"id": 3}"#,
        "--from",
        &time1_rfc,
    ]);
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(
        history(&["--table", "public.notes"]).len(),
        4,
        "three inserts and a delete"
    );
    let bad = harness::tidemark(
        &["history", "--config", config.to_str().unwrap()],
        &["--table", "public.payments", "--key", "42"],
    );
    assert_eq!(bad.status.code(), Some(2));

    // With --force, --data-only replaces the rows of existing tables.
    let (code, stdout, stderr) = restore(
        &config,
        &["--to", &lsn2, "--target", &url1, "--data-only", "--force"],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!((md5_in("t1", "payments"), md5_in("t1", "notes")), want2);
}

#[tokio::test]
async fn a_prepared_transaction_counts_from_its_commit_prepared() {
    let fx = Fixture::new("CREATE TABLE t (id int PRIMARY KEY)");
    let config = fx.config_with_archive(&["public.t"], "");
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    fx.psql("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'p1'");
    fx.psql("INSERT INTO t VALUES (2)");
    // Prepared before this point, committed after it.
    let prepared = fx.psql("SELECT clock_timestamp()::text");
    fx.psql("COMMIT PREPARED 'p1'");
    let committed = fx.psql("SELECT clock_timestamp()::text");
    // The window ends at the last archived commit: one more moves it past the point.
    fx.psql("INSERT INTO t VALUES (3)");
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);

    for (name, to, want) in [("p_before", &prepared, "2"), ("p_after", &committed, "1,2")] {
        fx.psql(&format!("CREATE DATABASE {}_{name}", fx.db));
        let url = fx.cluster.url(&format!("{}_{name}", fx.db));
        let (code, stdout, stderr) = restore(&config, &["--to", to, "--target", &url]);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        let ids = fx
            .cluster
            .psql(
                &format!("{}_{name}", fx.db),
                "SELECT string_agg(id::text, ',' ORDER BY id) FROM t",
            )
            .unwrap();
        assert_eq!(ids, want, "restored to {to}");
    }
}

/// SIGKILL at random instants of a forced restore into a live table: each
/// time, the table is exactly as it was or exactly restored, never empty or
/// in part; and the next restore clears what the killed one left behind.
#[test]
fn a_forced_restore_killed_at_any_instant_leaves_the_table_whole() {
    let fx = Fixture::new("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let config = fx.config_with_archive(&["public.t"], "");
    fx.psql("INSERT INTO t SELECT g, repeat('r', 50) FROM generate_series(1, 20000) g");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("UPDATE t SET v = 'changed' WHERE id % 7 = 0");
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    let restored_md5 = fx.md5("t");

    let live = format!("{}_live", fx.db);
    fx.psql(&format!("CREATE DATABASE {live}"));
    let live_sql = |sql: &str| fx.cluster.psql(&live, sql).unwrap();
    let live_as_it_was = || {
        live_sql("DROP TABLE IF EXISTS t; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'live' FROM generate_series(1, 5000) g");
        live_sql(&harness::table_md5_sql("t"))
    };
    let args = [
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--to",
        "latest",
        "--target",
        &fx.cluster.url(&live),
        "--data-only",
        "--force",
    ];
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // One whole run, to learn how long a restore takes here.
    live_as_it_was();
    let started = Instant::now();
    assert!(run().wait().unwrap().success());
    let whole = started.elapsed();
    assert_eq!(live_sql(&harness::table_md5_sql("t")), restored_md5);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}, a whole restore takes {whole:?}");
    let mut rng = harness::Rng(seed | 1);
    let mut outcomes = [0, 0];
    for _ in 0..6 {
        let before = live_as_it_was();
        let mut child = run();
        let at = Duration::from_millis(rng.next(whole.as_millis() as u64 * 5 / 4));
        // The kill's instant is the test's input, not a wait for an event.
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        let now = live_sql(&harness::table_md5_sql("t"));
        assert!(
            now == before || now == restored_md5,
            "killed at {at:?}: the table is neither as it was nor restored"
        );
        outcomes[usize::from(now == restored_md5)] += 1;
    }
    println!(
        "kept as it was {} times, fully restored {} times",
        outcomes[0], outcomes[1]
    );
    // A finished restore leaves no scratch database, its own or a killed one's.
    live_as_it_was();
    let last = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert_eq!(fx.psql(ABANDONED_SCRATCH), "0");
}

/// Sequences are not in the stream: capture samples them into it, and a
/// restore sets each one to its sample at the point, even past the rows.
#[tokio::test]
async fn a_restored_sequence_continues_where_the_source_had_it() {
    let fx = Fixture::new("CREATE TABLE t (id serial PRIMARY KEY, v text)");
    let config = fx.config_with_archive(&["public.t"], "");
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    fx.psql("INSERT INTO t (v) SELECT 'row' FROM generate_series(1, 10)");
    // Values handed out and never stored: only the sample knows them.
    fx.psql("SELECT nextval('t_id_seq') FROM generate_series(1, 5)");
    // The restore reads the archive, so the event is the sample reaching it
    // (the local copy of a segment goes once it is archived).
    let store = tidemark::archive::store::open(&fx.archive_url(), &Default::default())
        .await
        .unwrap();
    let store = &*store;
    harness::wait_until(
        Duration::from_secs(30),
        "the sample of 15 in the archive",
        move || async move { archived_records_contain(store, br#""public.t_id_seq":15"#).await },
    )
    .await;
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);
    let db = format!("{}_seq", fx.db);
    fx.psql(&format!("CREATE DATABASE {db}"));
    let (code, stdout, stderr) = restore(
        &config,
        &["--to", "latest", "--target", &fx.cluster.url(&db)],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        fx.cluster.psql(&db, "SELECT nextval('t_id_seq')").unwrap(),
        "16",
        "the restored sequence continues after the source's last value"
    );
}

/// Whether a record of the archived segments holds `needle`.
async fn archived_records_contain(
    store: &dyn tidemark::archive::store::ObjectStore,
    needle: &[u8],
) -> bool {
    let Ok(Some((_, manifest))) = tidemark::archive::manifest::load_latest(store).await else {
        return false;
    };
    let dir = tempfile::tempdir().unwrap();
    let fetched = tidemark::replay::load::fetch_segments(
        store,
        &manifest.segments,
        dir.path(),
        &indicatif::ProgressBar::hidden(),
    )
    .await;
    let Ok(mut reader) = fetched.and_then(|()| Ok(tidemark::log::LogReader::open(dir.path())?))
    else {
        return false;
    };
    let mut seen = false;
    while let Ok(Some((_, record))) = reader.next_record() {
        seen |= record.data.windows(needle.len()).any(|w| w == needle);
    }
    seen
}

/// A quiet source still moves the window: capture commits a heartbeat, so a
/// time after the last change is a restore point, giving the last change's state.
#[test]
fn the_window_follows_a_quiet_source() {
    let fx = Fixture::new("CREATE TABLE t (id int PRIMARY KEY)");
    let config = fx.config_with_archive(&["public.t"], "heartbeat_interval = \"1s\"\n");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("INSERT INTO t SELECT generate_series(1, 5)");
    let quiet = fx.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    let want = fx.md5("t");
    harness::wait_for(
        Duration::from_secs(30),
        "the window to pass a quiet moment",
        || harness::window_past(&config, &quiet),
    );
    // Idle, the window moves on through the manifest alone: no new segments.
    let idle = harness::list(&config);
    for _ in 0..2 {
        let latest = harness::list(&config)["window"]["latest"]["time"]
            .as_str()
            .unwrap()
            .to_string();
        harness::wait_for(
            Duration::from_secs(30),
            "the window to move on while idle",
            || harness::window_past(&config, &latest),
        );
    }
    assert_eq!(
        harness::list(&config)["segments"]["count"],
        idle["segments"]["count"],
        "an idle source adds no segments"
    );
    assert_eq!(capture.stop(), 0);
    let db = format!("{}_quiet", fx.db);
    fx.psql(&format!("CREATE DATABASE {db}"));
    let (code, stdout, stderr) =
        restore(&config, &["--to", &quiet, "--target", &fx.cluster.url(&db)]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        fx.cluster.psql(&db, &harness::table_md5_sql("t")).unwrap(),
        want
    );
}

/// A source quiet since before its base snapshot: no segment follows the
/// snapshot, and the window still follows the source's clock.
#[test]
fn the_window_follows_a_source_quiet_since_its_snapshot() {
    let fx = Fixture::new("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    let config = fx.config_with_archive(&["public.t"], "heartbeat_interval = \"1s\"\n");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    let after = fx.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    harness::wait_for(
        Duration::from_secs(30),
        "the window to pass the snapshot",
        || harness::window_past(&config, &after),
    );
    assert_eq!(capture.stop(), 0);
}

/// Replay's SQL runs on its own task: a failure stops it, is reported by the
/// next call and by `sync`, and leaves the connection usable for cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelined_target_reports_the_first_failure_and_stops() {
    use tidemark::replay::apply::Executor;
    use tidemark::replay::pipeline::PipelinedExecutor;
    let fx = Fixture::new("CREATE TABLE kept (id int PRIMARY KEY)");
    let client = std::sync::Arc::new(harness::connect(&fx.url()).await);
    let runtime = tokio::runtime::Handle::current();
    let worker = client.clone();
    let failure = tokio::task::spawn_blocking(move || {
        let mut executor = PipelinedExecutor::start(worker, runtime);
        executor
            .execute("BEGIN; INSERT INTO kept VALUES (1)")
            .unwrap();
        executor.execute("INSERT INTO kept VALUES (1)").unwrap();
        // Queued behind the failure: never runs.
        let _ = executor.execute("INSERT INTO kept VALUES (2); COMMIT");
        executor.sync().unwrap_err()
    })
    .await
    .unwrap();
    assert!(failure.contains("duplicate key"), "{failure}");
    // Rolled back, and the connection answers again.
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

/// Replay sends net effects to a stage in 2 MiB batches and merges them once,
/// taking each key's latest row: with every key changed in several batches,
/// a restore equals the source only if the latest row wins.
#[tokio::test]
async fn keys_changed_across_many_batches_restore_to_their_latest_row() {
    let fx = Fixture::new("CREATE TABLE kv (id int PRIMARY KEY, v text)");
    fx.psql("INSERT INTO kv SELECT g, 'start' FROM generate_series(1, 3000) g");
    let config = fx.config_with_archive(&["public.kv"], "");
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;
    // Each round rewrites every row with about 1 KB: about 3 MB a round.
    for round in 1..=3 {
        fx.psql(&format!(
            "UPDATE kv SET v = repeat(md5('{round}' || id), 32)"
        ));
    }
    fx.psql("DELETE FROM kv WHERE id % 7 = 0; INSERT INTO kv SELECT g, 'late' FROM generate_series(3001, 3100) g");
    let end = fx.current_wal_lsn();
    let config_ref = &config;
    harness::Event::new(
        "the archive to pass the workload",
        Duration::from_secs(60),
        || {
            let out = harness::tidemark(
                &["list", "--config", config_ref.to_str().unwrap(), "--json"],
                &[],
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|list| list["window"]["latest"]["lsn"].as_str().map(String::from))
                .and_then(|lsn| lsn.parse::<tidemark::base::position::Lsn>().ok())
                .is_some_and(|lsn| lsn >= end)
        },
    )
    .arrives()
    .await;
    assert_eq!(capture.stop(), 0);
    let db = format!("{}_batches", fx.db);
    fx.psql(&format!("CREATE DATABASE {db}"));
    let (code, stdout, stderr) = restore(
        &config,
        &["--to", "latest", "--target", &fx.cluster.url(&db), "--json"],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(report["changes"].as_u64().unwrap() >= 9000, "{report}");
    assert_eq!(
        fx.cluster.psql(&db, &harness::table_md5_sql("kv")).unwrap(),
        fx.md5("kv"),
        "every key restored to its latest row"
    );
}
