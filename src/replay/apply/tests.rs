//! Tests of the applier against a recording executor.

use super::*;
use crate::base::position::{CommitLsn, EndLsn, Lsn};
use crate::source::ddl;
use crate::source::pgoutput::build::{text, text_relation};
use crate::source::pgoutput::{OldTuple, Tuple, TupleValue};
use bytes::Bytes;

#[derive(Default)]
struct Recorder(Vec<String>);
impl Executor for &mut Recorder {
    fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.0.push(sql.to_string());
        Ok(())
    }
    fn copy_in(&mut self, sql: &str, data: Bytes) -> Result<(), String> {
        self.0
            .push(format!("{sql}\n{}", String::from_utf8_lossy(&data)));
        Ok(())
    }
    fn format_type(&mut self, oid: u32, _: i32) -> Result<String, String> {
        Ok(format!("type{oid}"))
    }
    fn sync(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn load(&mut self, table: &TableName) -> Result<u64, String> {
        self.0.push(format!("LOAD {table} whole"));
        Ok(0)
    }
}

fn relation(columns: &[(&str, bool)], identity: u8) -> Arc<Relation> {
    Arc::new(text_relation(columns, identity))
}

fn txn(commit: u64, end: u64) -> TxnInfo {
    TxnInfo {
        xid: 7,
        commit_lsn: CommitLsn(Lsn(commit)),
        end_lsn: EndLsn(Lsn(end)),
        commit_time: crate::base::position::PgTimestamp(end as i64),
    }
}

fn run(changes: Vec<(TxnInfo, Change)>, until: Target) -> Vec<String> {
    run_with(changes, until, false).unwrap().0
}

fn run_with(
    changes: Vec<(TxnInfo, Change)>,
    until: Target,
    allow_inexact: bool,
) -> Result<(Vec<String>, Vec<Inexact>), ApplyError> {
    let mut recorder = Recorder::default();
    let inexact = {
        let tables = HashMap::from([(
            TableName::new("public", "t"),
            vec![("id".to_string(), 25), ("v".to_string(), 25)],
        )]);
        let mut applier = Applier::new(
            &mut recorder,
            Bounds {
                after: EndLsn(Lsn(100)),
                until,
            },
            tables,
            HashMap::new(),
        )
        .allow_inexact(allow_inexact);
        for (t, change) in changes {
            applier.begin(&t)?;
            applier.change(&t, Lsn(0), change)?;
            applier.commit(&t)?;
        }
        applier.finish()?;
        applier.inexact
    };
    Ok((recorder.0, inexact))
}

fn note(prefix: &str, json: &str) -> Change {
    Change::Message {
        prefix: prefix.into(),
        content: bytes::Bytes::copy_from_slice(json.as_bytes()),
    }
}

#[test]
fn schema_notes_add_with_the_missing_value_and_rename_in_place() {
    let note_json = r#"{"schema": "public", "name": "t",
        "before": [{"attnum": 1, "name": "id", "type": "text"}, {"attnum": 2, "name": "v", "type": "text"}],
        "after": [{"attnum": 1, "name": "id", "type": "text"}, {"attnum": 2, "name": "w", "type": "text"},
                  {"attnum": 3, "name": "tier", "type": "text", "missing": "it's"}]}"#;
    let rel = relation(&[("id", true), ("w", false), ("tier", false)], b'd');
    let sql = run(
        vec![
            (txn(150, 160), note(ddl::NOTE_PREFIX, note_json)),
            (
                txn(170, 180),
                Change::Insert {
                    relation: rel,
                    new: Tuple(vec![text("1"), text("a"), text("b")]),
                },
            ),
        ],
        Target::Latest,
    )
    .join("");
    assert!(sql.contains("RENAME COLUMN \"v\" TO \"w\""), "{sql}");
    assert!(
        sql.contains("ADD COLUMN \"tier\" text DEFAULT 'it''s'::text;\nALTER TABLE \"public\".\"t\" ALTER COLUMN \"tier\" DROP DEFAULT;"),
        "{sql}"
    );
    // The Relation that follows matches the note: no drop, no second add.
    assert!(!sql.contains("DROP COLUMN"), "{sql}");
    assert_eq!(sql.matches("ADD COLUMN").count(), 1, "{sql}");
}

#[test]
fn what_the_stream_cannot_carry_is_refused_naming_the_table() {
    let rewrite = || note(ddl::REWRITE_PREFIX, r#"{"schema": "public", "name": "t"}"#);
    let refused = run_with(vec![(txn(150, 160), rewrite())], Target::Latest, false);
    match refused {
        Err(ApplyError::Inexact(inexact)) => {
            assert_eq!(inexact.table, TableName::new("public", "t"));
            assert_eq!(inexact.since.lsn, EndLsn(Lsn(160)));
            assert!(ApplyError::Inexact(inexact)
                .to_string()
                .contains("--allow-inexact"));
        }
        other => panic!("{other:?}"),
    }
    let (_, inexact) = run_with(vec![(txn(150, 160), rewrite())], Target::Latest, true).unwrap();
    assert_eq!(inexact.len(), 1);
    // A change past the target is never read, so nothing is refused.
    let before = run_with(
        vec![(txn(150, 160), rewrite())],
        Target::Lsn(EndLsn(Lsn(140))),
        false,
    );
    assert!(before.is_ok());
}

#[test]
fn keyed_changes_merge_to_their_last_state_in_order_with_statements() {
    let rel = relation(&[("id", true), ("v", false)], b'd');
    let insert = |id: &str, v: &str| Change::Insert {
        relation: rel.clone(),
        new: Tuple(vec![text(id), text(v)]),
    };
    let sql = run(
        vec![
            (txn(150, 160), insert("1", "it's")),
            (
                txn(170, 180),
                Change::Update {
                    relation: rel.clone(),
                    old: None,
                    new: Tuple(vec![text("1"), TupleValue::UnchangedToast]),
                },
            ),
            (
                txn(190, 200),
                Change::Truncate {
                    relations: vec![rel.clone()],
                    options: 0,
                },
            ),
            (txn(210, 220), insert("2", "x")),
        ],
        Target::Latest,
    );
    // What the truncate emptied is never sent; what came after is merged after it.
    let all = sql.join("");
    assert!(!all.contains("it's"), "{all}");
    let truncate = all.find("TRUNCATE \"public\".\"t\";").expect("a truncate");
    let staged = all
        .find("COPY tidemark_stage_0 FROM STDIN\n1\tu\t\t2\tx\n")
        .expect("the insert staged");
    assert!(truncate < staged, "{all}");
    // Staged net effects are merged into the table before the replay ends.
    let merged = all
        .rfind("INSERT INTO \"public\".\"t\"")
        .expect("the stage merged");
    assert!(staged < merged, "{all}");
    assert!(
        all.ends_with("DROP TABLE tidemark_stage_0;\nCOMMIT;"),
        "{all}"
    );
}

#[test]
fn bounds_skip_what_the_snapshot_holds_and_what_is_past_the_target() {
    let rel = relation(&[("id", true), ("v", false)], b'd');
    let insert = |id: &str| Change::Insert {
        relation: rel.clone(),
        new: Tuple(vec![text(id), TupleValue::Null]),
    };
    let sql = run(
        vec![
            (txn(90, 99), insert("before")),
            (txn(120, 130), insert("in")),
            (txn(140, 150), insert("after")),
        ],
        Target::Lsn(EndLsn(Lsn(130))),
    )
    .join("");
    assert!(
        sql.contains("\tin\t") && !sql.contains("before") && !sql.contains("after"),
        "{sql}"
    );
}

#[test]
fn full_identity_deletes_one_matching_row_and_columns_follow_the_source() {
    let rel = relation(&[("id", true), ("v", true), ("extra", true)], b'f');
    let delete = || {
        vec![(
            txn(150, 160),
            Change::Delete {
                relation: rel.clone(),
                old: OldTuple::Full(Tuple(vec![text("1"), TupleValue::Null, text("x")])),
            },
        )]
    };
    // A column that appears with no schema note: what older rows read there is unknown.
    assert!(matches!(
        run_with(delete(), Target::Latest, false),
        Err(ApplyError::Inexact(_))
    ));
    let (sql, inexact) = run_with(delete(), Target::Latest, true).unwrap();
    assert!(
        inexact[0].why.contains("column extra appeared"),
        "{inexact:?}"
    );
    let sql = sql.join("");
    assert!(
        sql.contains("ALTER TABLE \"public\".\"t\" ADD COLUMN \"extra\" type25;"),
        "{sql}"
    );
    assert!(
        sql.contains("DELETE FROM \"public\".\"t\" WHERE ctid = (SELECT ctid FROM \"public\".\"t\" WHERE \"id\"::text = '1' AND \"v\" IS NULL AND \"extra\"::text = 'x' LIMIT 1);"),
        "{sql}"
    );
}

/// Runs `changes` with public.t (bigint key) folded into its snapshot, in
/// at most `budget` bytes.
fn run_folded(changes: Vec<(TxnInfo, Change)>, budget: usize) -> Vec<String> {
    let object = crate::archive::manifest::TableObject {
        table: TableName::new("public", "t"),
        key: "snapshot/t".into(),
        columns: vec!["id".into(), "v".into()],
        size: 0,
        sha256: String::new(),
        raw_size: 0,
    };
    let schema = crate::source::schema::test_table("t", &[("id", 20), ("v", 25)], &["id"]);
    let fold = crate::replay::fold::Fold::new(&object, &schema, &std::env::temp_dir()).unwrap();
    let mut recorder = Recorder::default();
    let mut folded = Vec::new();
    {
        let tables = HashMap::from([(
            TableName::new("public", "t"),
            vec![("id".to_string(), 25), ("v".to_string(), 25)],
        )]);
        let bounds = Bounds {
            after: EndLsn(Lsn(100)),
            until: Target::Latest,
        };
        let mut applier = Applier::new(&mut recorder, bounds, tables, HashMap::new()).with_folds(
            HashMap::from([(TableName::new("public", "t"), fold)]),
            budget,
        );
        for (t, change) in changes {
            applier.begin(&t).unwrap();
            applier.change(&t, Lsn(0), change).unwrap();
            applier.commit(&t).unwrap();
        }
        applier.finish().unwrap();
        // What is still folded loads after replay: its final rows, as that load sends them.
        for (table, fold) in applier.take_folds() {
            let mut text = String::new();
            for mut rows in fold.into_parts().1 {
                while let Some(chunk) = rows.next_chunk().unwrap() {
                    text += &String::from_utf8_lossy(&chunk);
                }
            }
            folded.push(format!("FOLDED {table}\n{text}"));
        }
    }
    recorder.0.extend(folded);
    recorder.0
}

#[test]
fn a_fresh_table_loads_once_with_its_changes_folded_in() {
    let rel = relation(&[("id", true), ("v", false)], b'd');
    let insert = |id: &str, v: &str| Change::Insert {
        relation: rel.clone(),
        new: Tuple(vec![text(id), text(v)]),
    };
    let sql = run_folded(
        vec![
            (txn(150, 160), insert("1", "a")),
            (txn(170, 180), insert("1", "b")),
            (txn(190, 200), insert("2", "c")),
        ],
        FOLD_BUDGET,
    );
    assert_eq!(
        sql.len(),
        1,
        "nothing loaded, staged or merged during replay: {sql:?}"
    );
    let mut lines = sql[0].lines();
    assert_eq!(lines.next(), Some("FOLDED public.t"));
    let folded = lines.collect::<std::collections::BTreeSet<_>>();
    assert_eq!(folded, ["1\tb", "2\tc"].into_iter().collect());

    // A TOASTed value the change left out is only in the snapshot: load it whole, then stage.
    let toast = Change::Update {
        relation: rel.clone(),
        old: None,
        new: Tuple(vec![text("1"), TupleValue::UnchangedToast]),
    };
    let sql = run_folded(
        vec![(txn(150, 160), insert("2", "c")), (txn(170, 180), toast)],
        FOLD_BUDGET,
    );
    assert_eq!(sql[0], "LOAD public.t whole", "{sql:?}");
    let all = sql.join("\n");
    assert!(all.contains("1\tu\t\t2\tc"), "the fold staged: {all}");
    assert!(
        all.contains("UPDATE \"public\".\"t\" t SET \"id\" = s.\"id\""),
        "{all}"
    );
    assert!(!all.contains("FOLDED"), "{all}");
}

const FOLD_BUDGET: usize = crate::replay::fold::BUDGET;

#[test]
fn a_fold_past_its_budget_spills_its_rows_and_past_that_loads_its_table() {
    let rel = relation(&[("id", true), ("v", false)], b'd');
    let inserts = |n: usize, v: &str| -> Vec<(TxnInfo, Change)> {
        (0..n)
            .map(|i| {
                let insert = Change::Insert {
                    relation: rel.clone(),
                    new: Tuple(vec![text(&i.to_string()), text(v)]),
                };
                (txn(150 + 20 * i as u64, 160 + 20 * i as u64), insert)
            })
            .collect()
    };
    // Rows outweigh keys: they go to disk, and the fold still loads once.
    let sql = run_folded(inserts(3000, &"v".repeat(1000)), 2 << 20);
    assert_eq!(sql.len(), 1, "nothing loaded or staged: {:?}", &sql[..2]);
    assert_eq!(sql[0].lines().count(), 3001, "every row, once");

    // Keys alone fill the budget: the table loads, its fold stages as the
    // first flush (rows read back from disk), and later keys follow as changes.
    let sql = run_folded(inserts(100_000, "v"), 2 << 20);
    assert_eq!(sql[0], "LOAD public.t whole");
    let all = sql.join("\n");
    assert!(!all.contains("FOLDED"), "nothing is left folded");
    let staged: Vec<(&str, usize)> = all
        .lines()
        .filter_map(|l| {
            let (flush, row) = l.split_once("\tu\t\t")?;
            Some((flush, row.strip_suffix("\tv")?.parse().ok()?))
        })
        .collect();
    let keys: HashSet<usize> = staged.iter().map(|&(_, id)| id).collect();
    assert_eq!((staged.len(), keys.len()), (100_000, 100_000));
    assert!(staged.contains(&("1", 0)) && !staged.contains(&("1", 99_999)));
}
