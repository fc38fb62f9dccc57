//! The main restore correctness test: a workload covering many types, TOAST,
//! keyless rows, deletes, a truncate, ADD and DROP COLUMN, ADD COLUMN with a
//! default and RENAME COLUMN (schema notes), a compaction, and a
//! streamed 100 MB transaction plus an aborted one. At each quiesce point the
//! test records the time and every table's md5; restoring to each point's
//! time (and to some LSNs) gives the same md5s.

mod harness;

use std::time::Duration;

use harness::Fixture;

const SCHEMA: &str = "
    CREATE TYPE status AS ENUM ('new', 'active', 'closed');
    CREATE TABLE accounts (
        id uuid PRIMARY KEY,
        org text NOT NULL,
        balance numeric(14,4),
        doc jsonb,
        tags text[],
        created timestamptz,
        status status,
        big text,
        blob bytea
    );
    CREATE TABLE ledger (account text, seq int, amount numeric, PRIMARY KEY (account, seq));
    CREATE TABLE codes (code text PRIMARY KEY, label text);
    CREATE TABLE events (kind text, payload jsonb);
    ALTER TABLE events REPLICA IDENTITY FULL;
    CREATE TABLE bulk (id bigint PRIMARY KEY, payload text);
";

const TABLES: [&str; 5] = ["accounts", "ledger", "codes", "events", "bulk"];

/// Incompressible, so it is TOASTed out of line.
const BIG_TEXT: &str = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 100))";
const BIG_BYTES: &str =
    "(SELECT decode(string_agg(md5(random()::text), ''), 'hex') FROM generate_series(1, 200))";

/// Each step is one or more statements, each its own transaction.
fn steps() -> Vec<Vec<String>> {
    vec![
        vec![
            format!("INSERT INTO accounts SELECT gen_random_uuid(), 'org' || (g % 3), g * 1.5, jsonb_build_object('n', g, 'nested', jsonb_build_array(g, 'x')), ARRAY['t' || g, NULL], now() - g * interval '1 hour', 'new', CASE WHEN g % 4 = 0 THEN {BIG_TEXT} END, CASE WHEN g % 5 = 0 THEN {BIG_BYTES} END FROM generate_series(1, 60) g"),
            "INSERT INTO ledger SELECT 'acct' || (g % 7), g, g * 0.01 FROM generate_series(1, 200) g".into(),
            "INSERT INTO codes SELECT 'c' || g, 'label ' || g FROM generate_series(1, 30) g".into(),
            "INSERT INTO events SELECT 'k' || (g % 3), jsonb_build_object('g', g % 5) FROM generate_series(1, 40) g".into(),
        ],
        vec!["UPDATE accounts SET balance = balance + 1, status = 'active' WHERE big IS NOT NULL".into()],
        vec![format!("UPDATE accounts SET big = {BIG_TEXT} WHERE org = 'org1'")],
        vec![
            "DELETE FROM ledger WHERE seq % 10 = 0".into(),
            "DELETE FROM events WHERE ctid IN (SELECT ctid FROM events WHERE kind = 'k1' LIMIT 3)".into(),
        ],
        vec!["TRUNCATE codes".into(), "INSERT INTO codes VALUES ('after', 'truncate')".into()],
        vec!["UPDATE accounts SET doc = doc || '{\"moved\": true}', tags = NULL WHERE org = 'org2'".into()],
        // A compaction happens here (capture stopped and restarted around it).
        vec!["ALTER TABLE accounts ADD COLUMN region text".into(), "UPDATE accounts SET region = 'eu' WHERE org = 'org0'".into()],
        vec!["UPDATE accounts SET balance = NULL, blob = NULL WHERE org = 'org1'".into(), "UPDATE events SET kind = 'changed' WHERE kind = 'k2'".into()],
        vec!["ALTER TABLE accounts DROP COLUMN tags".into(), "UPDATE accounts SET status = 'closed' WHERE org = 'org0'".into()],
        vec![
            "INSERT INTO ledger SELECT 'late', g, g FROM generate_series(1, 50) g".into(),
            // Rows moving to new keys, one of them leaving its TOASTed value unchanged.
            "UPDATE ledger SET seq = seq + 1000 WHERE account = 'acct1'".into(),
            "UPDATE accounts SET id = gen_random_uuid() WHERE big IS NOT NULL AND org = 'org0'".into(),
        ],
        vec![
            // Streamed: about 100 MB in one transaction, and another rolled back.
            "INSERT INTO bulk SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, 100000) g".into(),
            "BEGIN; INSERT INTO bulk SELECT g, repeat(md5(g::text), 32) FROM generate_series(100001, 200000) g; ROLLBACK".into(),
            "UPDATE bulk SET payload = 'touched' WHERE id % 10000 = 0".into(),
        ],
        // Migrations the stream alone cannot carry: older rows read the new
        // column's default, and the renamed column keeps its values.
        vec![
            "ALTER TABLE codes ADD COLUMN weight int NOT NULL DEFAULT 3".into(),
            "UPDATE codes SET weight = 4 WHERE code = 'after'".into(),
        ],
        vec![
            "ALTER TABLE codes RENAME COLUMN label TO title".into(),
            "ALTER TABLE accounts ADD COLUMN tier text DEFAULT 'basic'".into(),
            "UPDATE accounts SET tier = 'gold' WHERE org = 'org1'".into(),
        ],
        vec![
            "CREATE INDEX ledger_amount ON ledger (amount)".into(),
            "ALTER TABLE codes ADD CONSTRAINT weight_positive CHECK (weight > 0)".into(),
            "ALTER TABLE accounts ALTER COLUMN tier SET NOT NULL".into(),
            "UPDATE codes SET weight = 5 WHERE code = 'after'".into(),
        ],
        // Rewrites: the stream does not carry the new values, so capture
        // re-reads the table; the point is taken once the re-read is stored.
        vec![
            "ALTER TABLE ledger ALTER COLUMN amount TYPE numeric(12,1) USING round(amount, 1)".into(),
            "UPDATE ledger SET amount = amount + 1 WHERE account = 'late'".into(),
        ],
        vec![
            "ALTER TABLE events ADD COLUMN seen timestamptz DEFAULT clock_timestamp()".into(),
            "INSERT INTO events (kind, payload) VALUES ('after', '{}')".into(),
        ],
    ]
}

/// The table a step rewrites, whose re-read the point waits for.
fn rewritten(step: &[String]) -> Option<&'static str> {
    let first = step.first()?;
    ["ledger", "events"].into_iter().find(|t| {
        first.starts_with(&format!("ALTER TABLE {t} ALTER COLUMN"))
            || first.contains(&format!("TABLE {t} ADD COLUMN seen"))
    })
}

/// Rereads of `table` in the archive.
fn rereads_of(config: &std::path::Path, table: &str) -> usize {
    harness::list(config)["rereads"].as_array().map_or(0, |r| {
        r.iter()
            .filter(|r| {
                r["tables"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == table))
            })
            .count()
    })
}

struct Point {
    time: String,
    lsn: String,
    md5s: Vec<String>,
    /// One tenant's accounts.
    org2_md5: String,
}

fn table_md5(fx: &Fixture, db_suffix: Option<&str>, table: &str) -> String {
    let sql = harness::table_md5_sql(table);
    match db_suffix {
        None => fx.psql(&sql),
        Some(suffix) => fx
            .cluster
            .psql(&format!("{}_{suffix}", fx.db), &sql)
            .unwrap(),
    }
}

fn point(fx: &Fixture) -> Point {
    fx.psql("SELECT txid_current()");
    Point {
        time: fx.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"),
        lsn: fx.current_wal_lsn().to_string(),
        md5s: TABLES.iter().map(|t| table_md5(fx, None, t)).collect(),
        org2_md5: fx.psql(&harness::rows_md5_sql("accounts", "org = 'org2'")),
    }
}

#[test]
fn every_quiesce_point_restores_exactly() {
    quiesce_points_restore_exactly(false);
}

/// The same, with capture SIGKILLed inside every other step and started again.
#[test]
fn every_quiesce_point_restores_exactly_across_capture_kills() {
    quiesce_points_restore_exactly(true);
}

fn quiesce_points_restore_exactly(kills: bool) {
    let fx = Fixture::new(SCHEMA);
    let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
    let tables: Vec<&str> = tables.iter().map(String::as_str).collect();
    let archive = format!(
        "\n[archive]\nurl = \"file://{}\"\nupload_interval = \"200ms\"\n",
        fx.archive_dir().display()
    );
    let config = fx.config(&tables, &archive);
    let mut capture = Some(fx.start_capture(&config));
    fx.wait_base_snapshot(&config);
    let mut points = Vec::new();
    for (i, step) in steps().iter().enumerate() {
        if i == 6 {
            fx.wait_caught_up(Duration::from_secs(60));
            assert_eq!(capture.take().unwrap().stop(), 0);
            let out = harness::tidemark(&["compact", "--config", config.to_str().unwrap()], &[]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            capture = Some(fx.start_capture(&fx.config(&tables, &archive)));
        }
        let rereads_before = rewritten(step).map(|t| rereads_of(&config, &format!("public.{t}")));
        for (j, sql) in step.iter().enumerate() {
            fx.psql(sql);
            if kills && i % 2 == 1 && j == 0 {
                capture.take().unwrap().kill();
                capture = Some(fx.start_capture(&config));
            }
        }
        if let (Some(table), Some(before)) = (rewritten(step), rereads_before) {
            let table = format!("public.{table}");
            harness::wait_for(
                Duration::from_secs(120),
                "the re-read after a rewrite",
                || rereads_of(&config, &table) > before,
            );
        }
        points.push(point(&fx));
    }
    fx.psql("INSERT INTO codes VALUES ('after', 'the last point') ON CONFLICT (code) DO UPDATE SET title = 'changed later'");
    fx.wait_caught_up(Duration::from_secs(180));
    assert_eq!(capture.take().unwrap().stop(), 0);
    assert!(points.len() >= 10);

    let restore = |name: &str, to: &str, extra: &[&str]| {
        fx.psql(&format!("CREATE DATABASE {}_{name}", fx.db));
        let url = fx.cluster.url(&format!("{}_{name}", fx.db));
        let mut args = vec!["--to", to, "--target", &url];
        args.extend_from_slice(extra);
        let out = harness::tidemark(&["restore", "--config", config.to_str().unwrap()], &args);
        assert!(
            out.status.success(),
            "restore to {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (i, p) in points.iter().enumerate() {
        let name = format!("p{i}");
        restore(&name, &p.time, &[]);
        for (t, want) in TABLES.iter().zip(&p.md5s) {
            assert_eq!(
                &table_md5(&fx, Some(&name), t),
                want,
                "point {i} ({}), table {t}",
                p.time
            );
        }
    }
    for i in [1, 4, 8] {
        let name = format!("l{i}");
        restore(&name, &points[i].lsn, &[]);
        for (t, want) in TABLES.iter().zip(&points[i].md5s) {
            assert_eq!(
                &table_md5(&fx, Some(&name), t),
                want,
                "LSN {} (point {i}), table {t}",
                points[i].lsn
            );
        }
    }
    restore("one_table", &points[7].time, &["--table", "public.ledger"]);
    assert_eq!(
        table_md5(&fx, Some("one_table"), "ledger"),
        points[7].md5s[1]
    );
    restore(
        "tenant",
        &points[5].time,
        &["--table", "public.accounts", "--where", "org = 'org2'"],
    );
    let tenant = &format!("{}_tenant", fx.db);
    let org2 = harness::rows_md5_sql("accounts", "org = 'org2'");
    assert_eq!(fx.cluster.psql(tenant, &org2).unwrap(), points[5].org2_md5);
    assert_eq!(
        fx.cluster
            .psql(tenant, "SELECT count(*) FROM accounts WHERE org <> 'org2'")
            .unwrap(),
        "0"
    );
}
