//! The net effect of many keyed changes on one table, applied as one COPY
//! into a staging table and three set-based statements.
//!
//! Why the result is exact: the target is offline and only primary keys exist
//! during replay, so nothing observes the intermediate states and only each
//! key's final state matters. Per key, the last change wins: a delete leaves it
//! deleted, an insert or update leaves its full row. An update that changes
//! the key deletes the old key. A TOASTed value the update left unchanged is
//! taken from the key's earlier row in the batch; without one, the target
//! still holds it, so that row is updated in place, setting only the columns
//! the change carried. Applying the final states in any order gives the same
//! table, because each touches only its own key.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;

use bytes::Bytes;

use crate::base::table::quote_ident;
use crate::source::pgoutput::{OldTuple, Relation, Tuple, TupleValue};

/// What a key ends the batch as.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Net {
    Deleted,
    Row(Vec<TupleValue>),
}

/// A change this batch cannot take: an update that moves a row to a new key
/// while leaving a TOASTed value that only the target holds.
#[derive(Debug, PartialEq, Eq)]
pub struct NeedsTarget;

/// The pending net effect on one table with a key.
pub struct TableBatch {
    columns: Vec<String>,
    key: Vec<usize>,
    rows: HashMap<Vec<TupleValue>, Net>,
    bytes: usize,
    /// A row stored since the last take kept an unchanged TOAST value (it
    /// may since have been replaced: then merging early costs time, not exactness).
    partial: bool,
}

impl TableBatch {
    /// `None` for tables without a key, whose rows form a multiset.
    pub fn new(relation: &Relation) -> Option<Self> {
        let key: Vec<usize> = relation
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key())
            .map(|(i, _)| i)
            .collect();
        if key.is_empty() || relation.replica_identity == b'f' {
            return None;
        }
        Some(TableBatch {
            columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            key,
            rows: HashMap::new(),
            bytes: 0,
            partial: false,
        })
    }

    /// Whether the relation still has the columns and key this batch was made for.
    pub fn fits(&self, relation: &Relation) -> bool {
        relation.columns.len() == self.columns.len()
            && relation
                .columns
                .iter()
                .zip(&self.columns)
                .enumerate()
                .all(|(i, (c, name))| c.name == *name && c.is_key() == self.key.contains(&i))
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Roughly the bytes of values held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn key_of(&self, tuple: &Tuple) -> Result<Vec<TupleValue>, NeedsTarget> {
        self.key
            .iter()
            .map(|&i| match &tuple.0[i] {
                TupleValue::UnchangedToast => Err(NeedsTarget),
                v => Ok(v.clone()),
            })
            .collect()
    }

    fn set(&mut self, key: Vec<TupleValue>, net: Net) {
        self.partial |=
            matches!(&net, Net::Row(values) if values.contains(&TupleValue::UnchangedToast));
        self.bytes += 16 * self.columns.len()
            + match &net {
                Net::Row(values) => values.iter().map(value_len).sum(),
                Net::Deleted => 0,
            };
        self.rows.insert(key, net);
    }

    pub fn insert(&mut self, new: &Tuple) -> Result<(), NeedsTarget> {
        let key = self.key_of(new)?;
        self.set(key, Net::Row(new.0.clone()));
        Ok(())
    }

    pub fn update(&mut self, old: Option<&OldTuple>, new: &Tuple) -> Result<(), NeedsTarget> {
        let new_key = self.key_of(new)?;
        let old_key = match old {
            Some(old) => self.key_of(old.tuple())?,
            None => new_key.clone(),
        };
        let mut values = new.0.clone();
        if let Some(Net::Row(before)) = self.rows.get(&old_key) {
            for (value, earlier) in values.iter_mut().zip(before) {
                if *value == TupleValue::UnchangedToast {
                    *value = earlier.clone();
                }
            }
        }
        if old_key != new_key {
            if values.contains(&TupleValue::UnchangedToast) {
                return Err(NeedsTarget);
            }
            self.set(old_key, Net::Deleted);
        }
        self.set(new_key, Net::Row(values));
        Ok(())
    }

    pub fn delete(&mut self, old: &Tuple) -> Result<(), NeedsTarget> {
        let key = self.key_of(old)?;
        self.set(key, Net::Deleted);
        Ok(())
    }

    /// A stage on the target to collect this table's net effects in, flush
    /// after flush, until they are merged into the table at once.
    pub fn stage(&self, name: String) -> NetStage {
        NetStage::new(name, &self.columns, self.key.clone())
    }

    /// Whether a row keeps a TOASTed value only the target holds: such a
    /// batch must meet the table as it is, so earlier flushes merge first.
    pub fn has_partial(&self) -> bool {
        self.partial
    }

    /// The batch as rows of `stage`'s COPY, tagged with the stage's next
    /// flush number; the batch is left empty.
    pub fn take_into(&mut self, stage: &mut NetStage) -> Bytes {
        let flush = stage.next_flush();
        let mut data = Vec::with_capacity(self.bytes + 16 * self.rows.len());
        for (key, net) in self.rows.drain() {
            let (op, values) = match net {
                Net::Deleted => {
                    let mut values = vec![TupleValue::Null; self.columns.len()];
                    for (&i, v) in self.key.iter().zip(key) {
                        values[i] = v;
                    }
                    ('d', values)
                }
                Net::Row(values) => ('u', values),
            };
            let unchanged = unchanged_mask(&values);
            let _ = write!(data, "{flush}\t{op}\t");
            copy_text(&mut data, unchanged.as_bytes());
            for value in &values {
                data.push(b'\t');
                copy_value(&mut data, value);
            }
            data.push(b'\n');
            if !unchanged.is_empty() {
                stage.partial.insert(unchanged);
            }
        }
        self.bytes = 0;
        self.partial = false;
        Bytes::from(data)
    }
}

/// One table's net effects on the target, in a temporary table, tagged with
/// the flush that sent them. Merging takes each key's row from the latest
/// flush (`DISTINCT ON`), so one pass over the table applies them all: a
/// join over the whole table once, not once per flush.
pub struct NetStage {
    name: String,
    columns: Vec<String>,
    key: Vec<usize>,
    flushes: u64,
    partial: BTreeSet<String>,
}

impl NetStage {
    /// A stage for a table of `columns` (unquoted), keyed by the columns at `key`.
    pub fn new(name: String, columns: &[String], key: Vec<usize>) -> NetStage {
        NetStage {
            name,
            columns: columns.iter().map(|c| quote_ident(c)).collect(),
            key,
            flushes: 0,
            partial: BTreeSet::new(),
        }
    }

    /// The number of the flush about to be sent.
    pub fn next_flush(&mut self) -> u64 {
        self.flushes += 1;
        self.flushes
    }

    /// Creates the stage shaped like `table` (quoted).
    pub fn create(&self, table: &str) -> String {
        format!(
            "CREATE TEMP TABLE {} AS SELECT NULL::bigint AS tidemark_flush, NULL::\"char\" AS tidemark_op, NULL::text AS tidemark_unchanged, {} FROM {table} WITH NO DATA",
            self.name,
            self.columns.join(", ")
        )
    }

    pub fn copy(&self) -> String {
        format!("COPY {} FROM STDIN", self.name)
    }

    /// Drops the stage unmerged: its table was truncated.
    pub fn discard(&self) -> String {
        format!("DROP TABLE {};\n", self.name)
    }

    /// Merges the stage into `table` (quoted) and drops it.
    pub fn merge(&self, table: &str) -> String {
        let list = self.columns.join(", ");
        let keys: Vec<&str> = self.key.iter().map(|&i| self.columns[i].as_str()).collect();
        let key_match = keys
            .iter()
            .map(|k| format!("t.{k} = s.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let stage = &self.name;
        let mut merge = String::from("SET LOCAL work_mem = '64MB';\n");
        // Within one flush each key has one row; across flushes the latest wins.
        let latest = if self.flushes > 1 {
            let keys = keys.join(", ");
            let latest = format!("{stage}_latest");
            let _ = writeln!(
                merge,
                "CREATE TEMP TABLE {latest} AS SELECT DISTINCT ON ({keys}) * FROM {stage} ORDER BY {keys}, tidemark_flush DESC;"
            );
            latest
        } else {
            stage.clone()
        };
        let _ = write!(
            merge,
            "ANALYZE {latest};\n\
             DELETE FROM {table} t USING {latest} s WHERE s.tidemark_unchanged = '' AND {key_match};\n\
             INSERT INTO {table} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {latest} WHERE tidemark_op = 'u' AND tidemark_unchanged = '';\n"
        );
        for unchanged in &self.partial {
            let sets: Vec<String> = self
                .columns
                .iter()
                .zip(unchanged.bytes())
                .filter(|&(_, flag)| flag != UNCHANGED)
                .map(|(c, _)| format!("{c} = s.{c}"))
                .collect();
            let _ = writeln!(
                merge,
                "UPDATE {table} t SET {} FROM {latest} s WHERE s.tidemark_unchanged = {} AND {key_match};",
                sets.join(", "),
                crate::base::table::quote_literal(unchanged)
            );
        }
        if latest != *stage {
            let _ = writeln!(merge, "DROP TABLE {latest};");
        }
        let _ = writeln!(merge, "DROP TABLE {stage};");
        merge
    }
}

const UNCHANGED: u8 = b'u';

/// Which columns an update left as they were: one character per column,
/// `u` where the value is unchanged TOAST, `.` elsewhere; empty when none is.
/// Positions, not names, so no column name can be misread as two.
fn unchanged_mask(values: &[TupleValue]) -> String {
    if !values.contains(&TupleValue::UnchangedToast) {
        return String::new();
    }
    values
        .iter()
        .map(|v| {
            if *v == TupleValue::UnchangedToast {
                char::from(UNCHANGED)
            } else {
                '.'
            }
        })
        .collect()
}

fn value_len(value: &TupleValue) -> usize {
    match value {
        TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Appends one value in COPY's text format; an unchanged TOAST value
/// reads as NULL (the stage's mask says which it was).
pub(super) fn copy_value(out: &mut Vec<u8>, value: &TupleValue) {
    match value {
        TupleValue::Null | TupleValue::UnchangedToast => out.extend_from_slice(b"\\N"),
        TupleValue::Text(bytes) => copy_text(out, bytes),
        TupleValue::Binary(bytes) => {
            out.extend_from_slice(b"\\\\x");
            out.extend_from_slice(hex::encode(bytes).as_bytes());
        }
    }
}

/// Appends `bytes` escaped for COPY's text format. Byte by byte: the four
/// escaped characters are ASCII, which never occurs inside a multi-byte
/// UTF-8 character, so every other byte goes through exactly as it came.
pub(super) fn copy_text(out: &mut Vec<u8>, bytes: &[u8]) {
    let mut rest = bytes;
    while let Some(at) = rest
        .iter()
        .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pgoutput::build::{text, text_relation};

    fn relation() -> Relation {
        text_relation(&[("id", true), ("big", false), ("n", false)], b'd')
    }

    fn row(id: &str, big: TupleValue, n: &str) -> Tuple {
        Tuple(vec![text(id), big, text(n)])
    }

    /// The batch's rows as staged (sorted), and the merge SQL.
    fn staged(batch: &mut TableBatch) -> (Vec<String>, String) {
        let mut stage = batch.stage("stage".into());
        let data = batch.take_into(&mut stage);
        let mut lines: Vec<String> = String::from_utf8(data.to_vec())
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        (lines, stage.merge("\"public\".\"t\""))
    }

    #[test]
    fn the_last_change_to_each_key_wins() {
        let mut batch = TableBatch::new(&relation()).unwrap();
        batch.insert(&row("1", text("b1"), "1")).unwrap();
        batch
            .update(None, &row("1", TupleValue::UnchangedToast, "2"))
            .unwrap();
        batch.insert(&row("2", text("b2"), "1")).unwrap();
        batch
            .delete(&Tuple(vec![text("2"), TupleValue::Null, TupleValue::Null]))
            .unwrap();
        batch
            .update(None, &row("3", TupleValue::UnchangedToast, "tab\there"))
            .unwrap();
        assert!(
            batch.has_partial(),
            "row 3 keeps a TOAST value only the target has"
        );
        let (lines, merge) = staged(&mut batch);
        assert!(!batch.has_partial());
        assert_eq!(
            lines,
            vec![
                "1\td\t\t2\t\\N\t\\N",
                "1\tu\t\t1\tb1\t2",
                "1\tu\t.u.\t3\t\\N\ttab\\there",
            ]
        );
        assert!(
            merge.contains(r#"UPDATE "public"."t" t SET "id" = s."id", "n" = s."n" FROM stage s WHERE s.tidemark_unchanged = '.u.' AND t."id" = s."id";"#),
            "{merge}"
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn a_key_change_deletes_the_old_key() {
        let mut batch = TableBatch::new(&relation()).unwrap();
        let old = OldTuple::Key(Tuple(vec![text("1"), TupleValue::Null, TupleValue::Null]));
        batch.update(Some(&old), &row("9", text("b"), "1")).unwrap();
        let (lines, _) = staged(&mut batch);
        assert_eq!(lines, vec!["1\td\t\t1\t\\N\t\\N", "1\tu\t\t9\tb\t1"]);
        // Moving a row whose TOASTed value only the target holds needs the target.
        assert_eq!(
            batch.update(Some(&old), &row("9", TupleValue::UnchangedToast, "1")),
            Err(NeedsTarget)
        );
    }

    #[test]
    fn flushes_merge_at_once_with_the_latest_row_of_each_key() {
        let mut batch = TableBatch::new(&relation()).unwrap();
        let mut stage = batch.stage("stage".into());
        batch.insert(&row("1", text("a"), "1")).unwrap();
        let first = batch.take_into(&mut stage);
        assert!(!stage.merge("t").contains("DISTINCT ON"));
        batch.insert(&row("1", text("b"), "2")).unwrap();
        let second = batch.take_into(&mut stage);
        assert_eq!(
            (&first[..], &second[..]),
            (&b"1\tu\t\t1\ta\t1\n"[..], &b"2\tu\t\t1\tb\t2\n"[..])
        );
        let merge = stage.merge("t");
        assert!(
            merge.contains(
                r#"SELECT DISTINCT ON ("id") * FROM stage ORDER BY "id", tidemark_flush DESC"#
            ),
            "{merge}"
        );
        assert!(
            merge.ends_with("DROP TABLE stage_latest;\nDROP TABLE stage;\n"),
            "{merge}"
        );
    }

    #[test]
    fn tables_without_a_key_are_not_batched() {
        let mut full = relation();
        full.replica_identity = b'f';
        assert!(TableBatch::new(&full).is_none());
        let mut keyless = relation();
        keyless.columns[0].flags = 0;
        assert!(TableBatch::new(&keyless).is_none());
        let batch = TableBatch::new(&relation()).unwrap();
        let mut renamed = relation();
        renamed.columns[2].name = "m".into();
        assert!(batch.fits(&relation()) && !batch.fits(&renamed));
    }
}
