//! Restores across the migrations teams run. Each migration is followed by
//! a quiesce point; restoring to it gives the source's rows there exactly,
//! or, where the stream cannot carry the change, a refusal that names the
//! table (exit 2), never wrong rows. After a refusal, capture's compactor
//! takes a new base snapshot, and later points restore exactly again.

mod harness;

use std::time::Duration;

use harness::Fixture;

const SCHEMA: &str = "
    CREATE TABLE docs (id int PRIMARY KEY, title text, v int, note text);
    INSERT INTO docs SELECT g, 'title ' || g, g, NULL FROM generate_series(1, 50) g;
";

/// What restoring to the point after a step must do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Exact,
    /// Refused with exit 2, naming the table; `--allow-inexact` restores it anyway.
    Refused,
}

fn steps() -> Vec<(&'static str, Vec<&'static str>, Expect)> {
    use Expect::*;
    vec![
        (
            "add column with a constant default",
            vec![
                "ALTER TABLE docs ADD COLUMN tier text DEFAULT 'basic'",
                "UPDATE docs SET tier = 'gold' WHERE id % 10 = 0",
            ],
            Exact,
        ),
        (
            "add column NOT NULL DEFAULT",
            vec![
                "ALTER TABLE docs ADD COLUMN n int NOT NULL DEFAULT 7",
                "UPDATE docs SET n = 8 WHERE id = 1",
            ],
            Exact,
        ),
        (
            "rename column",
            vec![
                "ALTER TABLE docs RENAME COLUMN title TO heading",
                "UPDATE docs SET heading = 'renamed' WHERE id = 2",
            ],
            Exact,
        ),
        (
            "set and drop default, set and drop not null",
            vec![
                "ALTER TABLE docs ALTER COLUMN note SET DEFAULT 'x'",
                "ALTER TABLE docs ALTER COLUMN note DROP DEFAULT",
                "ALTER TABLE docs ALTER COLUMN tier SET NOT NULL",
                "ALTER TABLE docs ALTER COLUMN tier DROP NOT NULL",
                "INSERT INTO docs (id, v) VALUES (100, 1)",
            ],
            Exact,
        ),
        (
            "add and drop a constraint and an index",
            vec![
                "ALTER TABLE docs ADD CONSTRAINT v_positive CHECK (v > 0)",
                "CREATE INDEX docs_v ON docs (v)",
                "DROP INDEX docs_v",
                "ALTER TABLE docs DROP CONSTRAINT v_positive",
                "UPDATE docs SET v = v + 1 WHERE id < 5",
            ],
            Exact,
        ),
        (
            "drop column",
            vec![
                "ALTER TABLE docs DROP COLUMN note",
                "UPDATE docs SET v = 0 WHERE id = 3",
            ],
            Exact,
        ),
        (
            "alter type with USING",
            vec!["ALTER TABLE docs ALTER COLUMN v TYPE bigint USING (v * 100)::bigint"],
            Refused,
        ),
        (
            "add column with a volatile default",
            vec!["ALTER TABLE docs ADD COLUMN created timestamptz DEFAULT clock_timestamp()"],
            Refused,
        ),
    ]
}

fn md5(fx: &Fixture, db: Option<&str>) -> String {
    let sql = harness::table_md5_sql("docs");
    match db {
        None => fx.psql(&sql),
        Some(db) => fx.cluster.psql(db, &sql).unwrap(),
    }
}

#[test]
fn migrations_restore_exactly_or_are_refused_by_name() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config_with_archive(&["public.docs"], "compact_interval = \"2s\"\n");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);

    let mut points = Vec::new();
    for (name, statements, expect) in steps() {
        for sql in statements {
            fx.psql(sql);
        }
        fx.psql("SELECT txid_current()");
        let time = fx.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
        points.push((name, time, md5(&fx, None), expect));
    }
    // The window ends at the last archived commit: one more carries it past the last point.
    fx.psql("INSERT INTO docs (id, v, heading) VALUES (1000, 1, 'after the last point')");
    fx.wait_caught_up(Duration::from_secs(60));

    let restore = |label: &str, to: &str, extra: &[&str]| {
        let db = format!("{}_{label}", fx.db);
        fx.psql(&format!("CREATE DATABASE {db}"));
        let url = fx.cluster.url(&db);
        let mut args = vec!["--to", to, "--target", &url];
        args.extend_from_slice(extra);
        let out = harness::tidemark(&["restore", "--config", config.to_str().unwrap()], &args);
        (out, db)
    };
    let mut refused_since = None;
    for (i, (name, time, want, expect)) in points.iter().enumerate() {
        let (out, db) = restore(&format!("p{i}"), time, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // Once a change the stream cannot carry is past, every later point refuses too,
        // until a base snapshot taken after it.
        let expect = if refused_since.is_some() {
            Expect::Refused
        } else {
            *expect
        };
        match expect {
            Expect::Exact => {
                assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
                assert_eq!(&md5(&fx, Some(&db)), want, "{name}: restored rows differ");
            }
            Expect::Refused => {
                assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
                assert_eq!(stderr.lines().count(), 1, "{stderr}");
                assert!(
                    stderr.contains("table public.docs cannot be restored exactly past"),
                    "{name}: {stderr}"
                );
                assert_eq!(
                    fx.cluster
                        .psql(&db, "SELECT to_regclass('public.docs') IS NULL")
                        .unwrap(),
                    "t",
                    "{name}: a refused restore leaves no table behind"
                );
                refused_since.get_or_insert(i);
                let (out, _) = restore(
                    &format!("p{i}_inexact"),
                    time,
                    &["--allow-inexact", "--json"],
                );
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(summary["inexact"][0]["table"], "public.docs", "{summary}");
            }
        }
    }
    assert!(refused_since.is_some());

    // The compactor meets the rewrite, reads the source again, and what follows is exact.
    harness::wait_for(
        Duration::from_secs(60),
        "a base snapshot after the rewrite",
        || {
            let out = harness::tidemark(
                &["list", "--config", config.to_str().unwrap(), "--json"],
                &[],
            );
            let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            list["snapshots"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["time"].as_str().unwrap_or("") > points.last().unwrap().1.as_str())
            })
        },
    );
    fx.psql("UPDATE docs SET heading = 'after the new snapshot' WHERE id = 4");
    fx.psql("SELECT txid_current()");
    let want = md5(&fx, None);
    fx.wait_caught_up(Duration::from_secs(60));
    assert!(capture.logs().contains("taking a new base snapshot"));
    assert_eq!(capture.stop(), 0);
    let (out, db) = restore("healed", "latest", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(md5(&fx, Some(&db)), want);
}

/// Without the event trigger (a role that may not create one), a new column is
/// seen only in the stream: what older rows read there is unknown, so the
/// restore refuses the table instead of guessing NULL.
#[test]
fn a_column_added_without_a_schema_note_is_refused() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config_with_archive(&["public.docs"], "");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("DROP EVENT TRIGGER tidemark_ddl");
    fx.psql("ALTER TABLE docs ADD COLUMN tier text DEFAULT 'basic'");
    fx.psql("UPDATE docs SET v = v + 1 WHERE id = 1");
    fx.wait_caught_up(Duration::from_secs(60));
    assert_eq!(capture.stop(), 0);
    let db = format!("{}_target", fx.db);
    fx.psql(&format!("CREATE DATABASE {db}"));
    let url = fx.cluster.url(&db);
    let out = harness::tidemark(
        &["restore", "--config", config.to_str().unwrap()],
        &["--to", "latest", "--target", &url],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("column tier appeared with no schema note"),
        "{stderr}"
    );
    // A dry run says so too, before anything is touched.
    let out = harness::tidemark(
        &["restore", "--config", config.to_str().unwrap()],
        &["--to", "latest", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2));
}
