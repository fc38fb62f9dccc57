//! `tidemark restore`: to a time, to an LSN, latest for one table; dry runs;
//! and every refusal, against a real archive.

mod harness;

use std::time::Duration;

use harness::Fixture;

const SCHEMA: &str = "
    CREATE TYPE kind AS ENUM ('card', 'wire');
    CREATE TABLE payments (id serial PRIMARY KEY, amount numeric(12,2) NOT NULL CHECK (amount > 0), kind kind, note text);
    CREATE INDEX payments_kind ON payments (kind);
    CREATE TABLE notes (body text);
    ALTER TABLE notes REPLICA IDENTITY FULL;
";

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
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);

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
    fx.wait_caught_up(Duration::from_secs(30));
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
    let others_before = others("t3");
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
    let (code, stdout, stderr) = restore(&config, &[&tenant[..], &["--force"]].concat());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        in_db("t3", &harness::rows_md5_sql("payments", "kind = 'wire'")),
        want2_wire
    );
    assert_eq!(
        others("t3"),
        others_before,
        "rows outside the predicate changed"
    );
    assert_eq!(
        fx.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'tidemark_scratch%'"),
        "0"
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
            !stderr.contains(tidemark::replay::scratch::SUPERUSER_PASSWORD),
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
    let config = fx.config(
        &["public.t"],
        &format!(
            "\n[archive]\nurl = {:?}\nupload_interval = \"200ms\"\n",
            fx.archive_url()
        ),
    );
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'p1'");
    fx.psql("INSERT INTO t VALUES (2)");
    // Prepared before this point, committed after it.
    let prepared = fx.psql("SELECT clock_timestamp()::text");
    fx.psql("COMMIT PREPARED 'p1'");
    let committed = fx.psql("SELECT clock_timestamp()::text");
    // The window ends at the last archived commit: one more moves it past the point.
    fx.psql("INSERT INTO t VALUES (3)");
    fx.wait_caught_up(Duration::from_secs(30));
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
