//! Table and column names that break string keys: `.`, `,`, `"`, `/`, `..`,
//! spaces and non-ASCII letters. Captured, archived inside the archive root,
//! and restored exactly.

mod harness;

use std::time::Duration;

use harness::Fixture;

const SCHEMA: &str = r#"
    CREATE SCHEMA "Sch.ema";
    CREATE TABLE "Sch.ema"."t x" (id int PRIMARY KEY, "spa ce" text, "zähler" int);
    CREATE SCHEMA a;
    CREATE TABLE a."b.c" (id int PRIMARY KEY, v text);
    CREATE SCHEMA "a.b";
    CREATE TABLE "a.b".c (id int PRIMARY KEY, v text);
    CREATE TABLE public."t/../../x" (id int PRIMARY KEY, "a,b" text, "q""uote" int, ".." text);
    ALTER TABLE public."t/../../x" ALTER COLUMN "a,b" SET STORAGE EXTERNAL;
    INSERT INTO "Sch.ema"."t x" SELECT g, 'row ' || g, g FROM generate_series(1, 20) g;
    INSERT INTO a."b.c" SELECT g, 'in a' FROM generate_series(1, 10) g;
    INSERT INTO "a.b".c SELECT g, 'in a.b' FROM generate_series(1, 5) g;
    -- Values stored out of line, so an update of another column sends them as unchanged TOAST.
    INSERT INTO public."t/../../x" SELECT g, repeat(md5(g::text), 200), g, 'dots' FROM generate_series(1, 8) g;
"#;

/// The tables as a config lists them: the way PostgreSQL reads a name.
const TABLES: [&str; 4] = [
    r#""Sch.ema"."t x""#,
    r#"a."b.c""#,
    r#""a.b".c"#,
    r#"public."t/../../x""#,
];

fn md5_in(fx: &Fixture, db: &str, table: &str) -> String {
    fx.cluster.psql(db, &harness::table_md5_sql(table)).unwrap()
}

#[tokio::test]
async fn awkward_names_are_captured_archived_and_restored_exactly() {
    let fx = Fixture::new(SCHEMA);
    let archive = fx.archive_dir();
    let config = fx.config(
        &TABLES,
        &format!(
            "\n[archive]\nurl = \"{}\"\nupload_interval = \"200ms\"\n",
            fx.archive_url()
        ),
    );
    let capture = fx.start_capture_async(&config).await;
    fx.base_snapshot(&config).arrives().await;

    fx.psql(
        r#"
        UPDATE "Sch.ema"."t x" SET "spa ce" = 'changed', "zähler" = "zähler" * 10 WHERE id % 2 = 0;
        DELETE FROM "Sch.ema"."t x" WHERE id > 15;
        UPDATE a."b.c" SET v = 'only a' WHERE id <= 3;
        INSERT INTO "a.b".c VALUES (6, 'new in a.b');
        UPDATE public."t/../../x" SET "q""uote" = "q""uote" + 100, ".." = 'moved';
        INSERT INTO public."t/../../x" VALUES (9, 'short', 9, 'nine');
        "#,
    );
    let want: Vec<String> = TABLES.iter().map(|t| md5_in(&fx, &fx.db, t)).collect();
    fx.caught_up(Duration::from_secs(30)).arrives().await;
    assert_eq!(capture.stop(), 0);

    // The history of one of two tables whose joined names are alike.
    let out = harness::tidemark(
        &["history", "--config", config.to_str().unwrap()],
        &["--table", r#""a.b".c"#, "--json"],
    );
    let history = String::from_utf8_lossy(&out.stdout);
    let changes: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(changes.len(), 1, "{history}");
    assert_eq!(changes[0]["table"], r#""a.b".c"#);

    // Each object stays where the layout puts it: nothing climbs out of snapshots/<lsn>/.
    let paths = harness::files_under(&archive);
    assert!(!paths.is_empty());
    for path in &paths {
        let parts: Vec<&str> = path.split('/').collect();
        let depth_ok = match parts[0] {
            "manifests" | "segments" => parts.len() == 2,
            "snapshots" | "audit" => parts.len() == 3,
            _ => false,
        };
        assert!(depth_ok && !parts.contains(&".."), "object at {path}");
    }
    let tables_stored = paths.iter().filter(|p| p.ends_with(".copy.zst")).count();
    assert_eq!(tables_stored, TABLES.len(), "{paths:?}");

    let target = format!("{}_restored", fx.db);
    fx.psql(&format!("CREATE DATABASE {target}"));
    let out = harness::tidemark(
        &["restore", "--config", config.to_str().unwrap()],
        &["--to", "latest", "--target", &fx.cluster.url(&target)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (table, want) in TABLES.iter().zip(&want) {
        assert_eq!(&md5_in(&fx, &target, table), want, "{table}");
    }
    // The column order is the source's, names and all.
    let columns = fx.cluster.psql(
        &target,
        r#"SELECT string_agg(attname, '|' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'public."t/../../x"'::regclass AND attnum > 0"#,
    );
    assert_eq!(columns.unwrap(), r#"id|a,b|q"uote|.."#);

    // One of two tables whose joined names are alike, chosen alone.
    let single = format!("{}_single", fx.db);
    fx.psql(&format!("CREATE DATABASE {single}"));
    let out = harness::tidemark(
        &["restore", "--config", config.to_str().unwrap()],
        &[
            "--to",
            "latest",
            "--target",
            &fx.cluster.url(&single),
            "--table",
            r#"a."b.c""#,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(md5_in(&fx, &single, r#"a."b.c""#), want[1]);
    let other = fx
        .cluster
        .psql(&single, r#"SELECT to_regclass('"a.b".c') IS NULL"#)
        .unwrap();
    assert_eq!(other, "t", "restored a table that was not asked for");
}
