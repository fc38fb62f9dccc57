//! Restores across the migrations teams run. Each migration is followed by
//! a quiesce point; restoring to it gives the source's rows there exactly,
//! or, where the stream cannot carry the change, a refusal that names the
//! table and the stretch (exit 2), never wrong rows. Capture then reads the
//! table again (a re-read), and a point after that restores exactly.

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
    /// Refused with exit 2, naming the table and the stretch until capture
    /// read it again; `--allow-inexact` restores it anyway. A point after
    /// the re-read is exact.
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
            "set a default and NOT NULL",
            vec![
                "ALTER TABLE docs ALTER COLUMN note SET DEFAULT 'x'",
                "ALTER TABLE docs ALTER COLUMN tier SET NOT NULL",
                "INSERT INTO docs (id, v) VALUES (100, 1)",
            ],
            Exact,
        ),
        (
            "drop the default and NOT NULL",
            vec![
                "ALTER TABLE docs ALTER COLUMN note DROP DEFAULT",
                "ALTER TABLE docs ALTER COLUMN tier DROP NOT NULL",
                "INSERT INTO docs (id, v) VALUES (101, 1)",
            ],
            Exact,
        ),
        (
            "add a constraint and indexes",
            vec![
                "ALTER TABLE docs ADD CONSTRAINT v_positive CHECK (v > 0)",
                "CREATE INDEX docs_v ON docs (v)",
                "CREATE UNIQUE INDEX docs_heading ON docs (heading, id)",
                "UPDATE docs SET v = v + 1 WHERE id < 5",
            ],
            Exact,
        ),
        (
            "drop the constraint and an index",
            vec![
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
            "alter type by a plain cast",
            vec!["ALTER TABLE docs ALTER COLUMN n TYPE bigint"],
            Refused,
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
        (
            "rename table",
            vec![
                "ALTER TABLE docs RENAME TO documents",
                "UPDATE documents SET v = v + 1 WHERE id = 6",
            ],
            Exact,
        ),
    ]
}

/// The table each step leaves: the rename's and later ones see `documents`.
fn table_after(step: &str, before: &'static str) -> &'static str {
    if step == "rename table" {
        "documents"
    } else {
        before
    }
}

/// The table's rows, and its definition: columns in order with their types,
/// defaults and NOT NULL; constraints; indexes.
fn state(fx: &Fixture, db: Option<&str>, table: &str) -> String {
    let sql = format!(
        "SELECT concat_ws(' | ', ({rows}),
           (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                              || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                              || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ', ' ORDER BY a.attnum)
            FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped),
           (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ' ORDER BY conname)
            FROM pg_constraint WHERE conrelid = '{table}'::regclass),
           (SELECT string_agg(pg_get_indexdef(indexrelid), ', ' ORDER BY pg_get_indexdef(indexrelid))
            FROM pg_index WHERE indrelid = '{table}'::regclass))",
        rows = harness::table_md5_sql(table)
    );
    match db {
        None => fx.psql(&sql),
        Some(db) => fx.cluster.psql(db, &sql).unwrap(),
    }
}

fn md5(fx: &Fixture, db: Option<&str>) -> String {
    state(fx, db, "docs")
}

#[test]
fn migrations_restore_exactly_or_are_refused_by_name() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config_with_archive(&["public.docs"], "compact_interval = \"2s\"\n");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    // A second slot shows the notes as the WAL holds them.
    let peek = format!("peek_{}", fx.db);
    fx.psql(&format!(
        "SELECT pg_create_logical_replication_slot('{peek}', 'test_decoding')"
    ));

    let mut points = Vec::new();
    let mut table = "docs";
    for (name, statements, expect) in steps() {
        table = table_after(name, table);
        let (last, first) = statements.split_last().unwrap();
        for sql in first {
            fx.psql(sql);
        }
        // The point is read as the last statement commits: before any re-read it causes.
        let time = fx.psql(&format!("BEGIN; {last}; COMMIT; {NOW}"));
        let time = time.lines().last().unwrap().to_string();
        points.push((
            name.to_string(),
            time.clone(),
            state(&fx, None, table),
            expect,
            table,
        ));
        if expect == Expect::Refused {
            wait_reread(&config, "public.docs", &time);
            fx.psql("UPDATE docs SET v = v + 1 WHERE id = 5");
            let after = fx.psql(NOW);
            points.push((
                format!("{name}, after the re-read"),
                after,
                state(&fx, None, table),
                Expect::Exact,
                table,
            ));
        }
    }
    // The window ends at the last archived commit: one more carries it past the last point.
    fx.psql(&format!(
        "INSERT INTO {table} (id, v, heading) VALUES (1000, 1, 'after the last point')"
    ));
    fx.wait_caught_up(Duration::from_secs(60));
    assert!(capture.logs().contains("asking for a re-read"));
    let notes = fx.psql(&format!(
        "SELECT string_agg(data, E'\\n') FROM pg_logical_slot_get_changes('{peek}', NULL, NULL) WHERE data LIKE 'message:%tidemark.ddl%'"
    ));
    fx.psql(&format!("SELECT pg_drop_replication_slot('{peek}')"));
    for command in ["ALTER TABLE", "CREATE INDEX", "DROP INDEX"] {
        assert!(
            notes.contains(&format!("\"command\": \"{command}\"")),
            "no note of {command}: {notes}"
        );
    }
    assert!(
        notes.contains("\"renamed_from\": {\"name\": \"docs\""),
        "{notes}"
    );
    assert_eq!(capture.stop(), 0);

    let restore = |label: &str, to: &str, extra: &[&str]| {
        let db = format!("{}_{label}", fx.db);
        fx.psql(&format!("CREATE DATABASE {db}"));
        let url = fx.cluster.url(&db);
        let mut args = vec!["--to", to, "--target", &url];
        args.extend_from_slice(extra);
        let out = harness::tidemark(&["restore", "--config", config.to_str().unwrap()], &args);
        (out, db)
    };
    for (i, (name, time, want, expect, table)) in points.iter().enumerate() {
        let (out, db) = restore(&format!("p{i}"), time, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match expect {
            Expect::Exact => {
                assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
                assert_eq!(
                    &state(&fx, Some(&db), table),
                    want,
                    "{name}: the restored table differs"
                );
            }
            Expect::Refused => {
                assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
                assert_eq!(stderr.lines().count(), 1, "{stderr}");
                assert!(
                    stderr.contains("table public.docs cannot be restored exactly from")
                        && stderr.contains("where capture read it again"),
                    "{name}: {stderr}"
                );
                assert_eq!(
                    fx.cluster
                        .psql(&db, "SELECT to_regclass('public.docs') IS NULL")
                        .unwrap(),
                    "t",
                    "{name}: a refused restore leaves no table behind"
                );
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
                let column = match name.as_str() {
                    "alter type by a plain cast" => "column n ",
                    "alter type with USING" => "column v ",
                    _ => "column created ",
                };
                let why = summary["inexact"][0]["why"].as_str().unwrap_or("");
                assert!(why.contains(column), "{name}: {why}");
            }
        }
    }
}

/// The source's clock as restore reads a time.
const NOW: &str =
    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Without the event trigger (a role that may not create one), a new column is
/// seen only in the stream: what older rows read there is unknown, so the
/// restore refuses the table instead of guessing NULL, until `tidemark
/// snapshot --table` has capture read it again.
#[test]
fn a_column_added_without_a_schema_note_is_refused_until_read_again() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config_with_archive(&["public.docs"], "");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("DROP EVENT TRIGGER tidemark_ddl");
    let before = fx.psql(NOW);
    fx.psql("ALTER TABLE docs ADD COLUMN tier text DEFAULT 'basic'");
    fx.psql("UPDATE docs SET v = v + 1 WHERE id = 1");
    wait_window_past(&config, &before);
    let config_arg = config.to_str().unwrap();
    let restore = |label: &str| {
        let db = format!("{}_{label}", fx.db);
        fx.psql(&format!("CREATE DATABASE {db}"));
        let url = fx.cluster.url(&db);
        let out = harness::tidemark(
            &["restore", "--config", config_arg],
            &["--to", "latest", "--target", &url],
        );
        (out, db)
    };
    let (out, _) = restore("refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("column tier appeared with no schema note")
            && stderr.contains("tidemark snapshot --table public.docs"),
        "{stderr}"
    );
    // A dry run says so too, before anything is touched.
    let out = harness::tidemark(
        &["restore", "--config", config_arg],
        &["--to", "latest", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2));

    let out = harness::tidemark(
        &["snapshot", "--config", config_arg],
        &["--table", "public.docs", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reread: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reread["method"], "reread", "{reread}");
    fx.psql("UPDATE docs SET tier = 'gold' WHERE id = 2");
    let want = md5(&fx, None);
    fx.wait_caught_up(Duration::from_secs(60));
    assert_eq!(capture.stop(), 0);
    let (out, db) = restore("healed");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(md5(&fx, Some(&db)), want);

    // Only a watched table, and only while capture runs to take it.
    let out = harness::tidemark(
        &["snapshot", "--config", config_arg],
        &["--table", "public.other"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not watched"));
    let out = harness::tidemark(
        &["snapshot", "--config", config_arg],
        &["--table", "public.docs"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("capture is not running"), "{stderr}");
}

/// A table added to `[source] tables` is read in full at the next start (a
/// re-read is its first snapshot). One dropped at the source, or removed from
/// `[source] tables`, is left out of restores to later points, and named.
#[test]
fn tables_join_and_leave_the_watched_set() {
    let fx = Fixture::new(
        "CREATE TABLE docs (id int PRIMARY KEY, v int);
         INSERT INTO docs SELECT g, g FROM generate_series(1, 20) g;
         CREATE TABLE ledger (id int PRIMARY KEY, amount int);
         INSERT INTO ledger SELECT g, g * 10 FROM generate_series(1, 20) g;
         CREATE TABLE scratch (id int PRIMARY KEY);
         INSERT INTO scratch SELECT generate_series(1, 5);",
    );
    type Points = Vec<(String, Vec<(&'static str, String)>)>;
    let run = |tables: &[&str], work: &dyn Fn(&std::path::Path, &harness::Capture) -> Points| {
        let config = fx.config_with_archive(tables, "");
        let capture = fx.start_capture(&config);
        fx.wait_base_snapshot(&config);
        let points = work(&config, &capture);
        // A change that alters nothing carries the window past the last point.
        fx.psql(&format!("UPDATE {} SET id = id WHERE id = 1", tables[0]));
        fx.wait_caught_up(Duration::from_secs(60));
        assert_eq!(capture.stop(), 0);
        (config, points)
    };
    let point = |tables: &[&'static str]| {
        let time = fx.psql(NOW);
        let states = tables.iter().map(|t| (*t, state(&fx, None, t))).collect();
        (time, states)
    };
    let (_, mut points) = run(&["public.docs", "public.scratch"], &|_, _| {
        fx.psql("UPDATE docs SET v = v + 1 WHERE id = 1");
        let before_ledger = point(&["docs", "scratch"]);
        fx.psql("DROP TABLE scratch");
        fx.psql("UPDATE docs SET v = v + 1 WHERE id = 2");
        vec![before_ledger, point(&["docs"])]
    });
    let (_, more) = run(&["public.docs", "public.ledger"], &|config, _| {
        wait_reread(config, "public.ledger", "");
        fx.psql("UPDATE ledger SET amount = 0 WHERE id = 1");
        vec![point(&["docs", "ledger"])]
    });
    points.extend(more);
    let (config, more) = run(&["public.ledger"], &|_, capture| {
        harness::wait_for(
            Duration::from_secs(60),
            "docs leaving the watched set",
            || {
                capture
                    .logs()
                    .contains("restores to later points leave them out")
            },
        );
        fx.psql("UPDATE ledger SET amount = 1 WHERE id = 2");
        fx.psql("UPDATE docs SET v = 0");
        vec![point(&["ledger"])]
    });
    points.extend(more);

    let all = ["docs", "ledger", "scratch"];
    for (i, (time, states)) in points.iter().enumerate() {
        let db = format!("{}_w{i}", fx.db);
        fx.psql(&format!("CREATE DATABASE {db}"));
        let url = fx.cluster.url(&db);
        let out = harness::tidemark(
            &["restore", "--config", config.to_str().unwrap()],
            &["--to", time, "--target", &url, "--json"],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "point {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for table in all {
            let present = fx
                .cluster
                .psql(
                    &db,
                    &format!("SELECT to_regclass('public.{table}') IS NOT NULL"),
                )
                .unwrap();
            match states.iter().find(|(t, _)| *t == table) {
                Some((_, want)) => {
                    assert_eq!(&state(&fx, Some(&db), table), want, "point {i}: {table}")
                }
                None => {
                    assert_eq!(present, "f", "point {i}: {table} should not be restored");
                }
            }
        }
        let left: Vec<&str> = summary["left_out"]
            .as_array()
            .map(|l| l.iter().filter_map(|l| l["table"].as_str()).collect())
            .unwrap_or_default();
        let expected: &[&str] = match i {
            0 => &[],
            1 | 2 => &["public.scratch"],
            _ => &["public.scratch", "public.docs"],
        };
        assert_eq!(left, expected, "point {i}: {summary}");
    }
}

/// Restores `--to latest` into a new database `<test db>_<label>`, which it
/// returns, and asserts the restore succeeded.
fn restore_latest(fx: &Fixture, config: &std::path::Path, label: &str) -> String {
    let db = format!("{}_{label}", fx.db);
    fx.psql(&format!("CREATE DATABASE {db}"));
    let out = harness::tidemark(
        &["restore", "--config", config.to_str().unwrap()],
        &["--to", "latest", "--target", &fx.cluster.url(&db)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db
}

/// Stops capture once it has everything, restores `--to latest` and asserts
/// public.docs equals the source's.
fn latest_restores_as_the_source_is(
    fx: &Fixture,
    capture: harness::Capture,
    config: &std::path::Path,
) {
    let want = md5(fx, None);
    fx.wait_caught_up(Duration::from_secs(60));
    assert_eq!(capture.stop(), 0);
    let db = restore_latest(fx, config, "target");
    assert_eq!(md5(fx, Some(&db)), want);
}

/// Waits until the archive restores past `time`: what committed before it is archived.
fn wait_window_past(config: &std::path::Path, time: &str) {
    harness::wait_for(
        Duration::from_secs(60),
        "the archive to pass a point",
        || harness::window_past(config, time),
    );
}

/// Waits until the archive lists a re-read of `table` taken after `time`
/// (any, with "").
fn wait_reread(config: &std::path::Path, table: &str, time: &str) {
    harness::wait_for(Duration::from_secs(60), "a re-read", || {
        harness::list(config)["rereads"]
            .as_array()
            .is_some_and(|r| {
                r.iter()
                    .any(|r| r["time"].as_str().unwrap_or("") > time && r["tables"][0] == table)
            })
    });
}

/// A rewrite's re-read is not lost to a crash: capture killed right after
/// the DDL commits still re-reads the table once started again.
#[test]
fn a_rewrite_is_re_read_across_a_capture_kill() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config_with_archive(&["public.docs"], "");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("ALTER TABLE docs ALTER COLUMN v TYPE bigint USING v * 2");
    fx.wait_caught_up(Duration::from_secs(60));
    capture.kill();
    let capture = fx.start_capture(&config);
    let waited = std::panic::catch_unwind(|| wait_reread(&config, "public.docs", ""));
    if let Err(timeout) = waited {
        eprintln!("capture's log:\n{}", capture.logs());
        std::panic::resume_unwind(timeout);
    }
    fx.psql("UPDATE docs SET v = 0 WHERE id = 1");
    latest_restores_as_the_source_is(&fx, capture, &config);
}

/// Where the role may not create event triggers (not a superuser, as on
/// managed services), capture says so once, and re-reads a table whose
/// columns change in the stream: a later point restores exactly.
#[test]
fn without_event_triggers_a_changed_table_is_re_read() {
    let fx = Fixture::new(SCHEMA);
    let role = format!("cap_{}", fx.db);
    fx.psql(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'capture-pw';
         ALTER TABLE docs OWNER TO {role};
         GRANT CREATE ON DATABASE {} TO {role}",
        fx.db
    ));
    let archive = format!(
        "\n[archive]\nurl = {:?}\nupload_interval = \"200ms\"\n",
        fx.archive_url()
    );
    let url = fx.cluster.url_as(&role, "capture-pw", &fx.db);
    let config = fx.config_with_url(&url, &["public.docs"], &archive);
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    assert!(
        capture.logs().contains("may not create event triggers"),
        "{}",
        capture.logs()
    );
    fx.psql("ALTER TABLE docs ADD COLUMN tier text DEFAULT 'basic'");
    fx.psql("UPDATE docs SET v = v + 1 WHERE id = 1");
    wait_reread(&config, "public.docs", "");
    fx.psql("UPDATE docs SET tier = 'gold' WHERE id = 2");
    latest_restores_as_the_source_is(&fx, capture, &config);
}

/// A table renamed, then rewritten: a restore refused between the rewrite
/// and its re-read (taken under the new name) leaves neither name behind, and
/// past the re-read the table restores whole, once, under its new name.
#[test]
fn a_renamed_then_rewritten_table_restores_once_or_leaves_nothing() {
    let fx = Fixture::new(SCHEMA);
    let config = fx.config_with_archive(&["public.docs"], "");
    let capture = fx.start_capture(&config);
    fx.wait_base_snapshot(&config);
    fx.psql("ALTER TABLE docs RENAME TO documents");
    let time = fx.psql(&format!(
        "BEGIN; ALTER TABLE documents ALTER COLUMN v TYPE bigint USING v * 2; COMMIT; {NOW}"
    ));
    wait_reread(&config, "public.documents", "");
    // A commit past the point carries the window over it.
    fx.psql("UPDATE documents SET v = v + 1 WHERE id = 1");
    let want = state(&fx, None, "documents");
    fx.wait_caught_up(Duration::from_secs(60));
    assert_eq!(capture.stop(), 0);
    let db = format!("{}_target", fx.db);
    fx.psql(&format!("CREATE DATABASE {db}"));
    let out = harness::tidemark(
        &["restore", "--config", config.to_str().unwrap()],
        &["--to", &time, "--target", &fx.cluster.url(&db)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("table public.documents cannot be restored exactly"),
        "{stderr}"
    );
    assert_eq!(
        fx.cluster
            .psql(
                &db,
                "SELECT count(*) FROM pg_class WHERE relname IN ('docs', 'documents')"
            )
            .unwrap(),
        "0"
    );
    // Past the re-read (taken under the new name), the table restores whole, once.
    let db = restore_latest(&fx, &config, "latest");
    assert_eq!(state(&fx, Some(&db), "documents"), want);
    assert_eq!(
        fx.cluster
            .psql(&db, "SELECT to_regclass('public.docs') IS NULL")
            .unwrap(),
        "t"
    );
}
