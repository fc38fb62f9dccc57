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
use std::fmt::Write;

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

    /// The SQL and COPY data that apply the batch to `table` (quoted), using
    /// the temporary table `stage`; the batch is left empty.
    pub fn take(&mut self, table: &str, stage: &str) -> Statements {
        let columns: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let list = columns.join(", ");
        let key_match = self
            .key
            .iter()
            .map(|&i| format!("t.{0} = s.{0}", columns[i]))
            .collect::<Vec<_>>()
            .join(" AND ");

        let mut data = String::with_capacity(self.bytes);
        let mut partial: BTreeSet<String> = BTreeSet::new();
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
            data.push(op);
            data.push('\t');
            copy_text(&mut data, unchanged.as_bytes());
            for value in &values {
                data.push('\t');
                match value {
                    TupleValue::Null | TupleValue::UnchangedToast => data.push_str("\\N"),
                    TupleValue::Text(bytes) => copy_text(&mut data, bytes),
                    TupleValue::Binary(bytes) => {
                        let _ = write!(data, "\\\\x{}", hex::encode(bytes));
                    }
                }
            }
            data.push('\n');
            if !unchanged.is_empty() {
                partial.insert(unchanged);
            }
        }
        self.bytes = 0;

        let mut merge = format!(
            "ANALYZE {stage};\n\
             DELETE FROM {table} t USING {stage} s WHERE s.tidemark_unchanged = '' AND {key_match};\n\
             INSERT INTO {table} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {stage} WHERE tidemark_op = 'u' AND tidemark_unchanged = '';\n"
        );
        for unchanged in partial {
            let sets: Vec<String> = columns
                .iter()
                .zip(unchanged.bytes())
                .filter(|&(_, flag)| flag != UNCHANGED)
                .map(|(c, _)| format!("{c} = s.{c}"))
                .collect();
            let _ = writeln!(
                merge,
                "UPDATE {table} t SET {} FROM {stage} s WHERE s.tidemark_unchanged = {} AND {key_match};",
                sets.join(", "),
                crate::base::table::quote_literal(&unchanged)
            );
        }
        merge += &format!("DROP TABLE {stage};\n");
        Statements {
            create: format!(
                "CREATE TEMP TABLE {stage} AS SELECT NULL::\"char\" AS tidemark_op, NULL::text AS tidemark_unchanged, {list} FROM {table} WITH NO DATA"
            ),
            copy: format!("COPY {stage} FROM STDIN"),
            data: Bytes::from(data),
            merge,
        }
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

/// One table's batch as SQL: create the stage, COPY `data` into it, merge.
#[derive(Debug)]
pub struct Statements {
    pub create: String,
    pub copy: String,
    pub data: Bytes,
    pub merge: String,
}

fn value_len(value: &TupleValue) -> usize {
    match value {
        TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Appends `bytes` escaped for COPY's text format.
fn copy_text(out: &mut String, bytes: &[u8]) {
    for ch in String::from_utf8_lossy(bytes).chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
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

    fn staged(batch: &mut TableBatch) -> (Vec<String>, String) {
        let statements = batch.take("\"public\".\"t\"", "stage");
        let mut lines: Vec<String> = String::from_utf8(statements.data.to_vec())
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        (lines, statements.merge)
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
        let (lines, merge) = staged(&mut batch);
        assert_eq!(
            lines,
            vec![
                "d\t\t2\t\\N\t\\N",
                "u\t\t1\tb1\t2",
                "u\t.u.\t3\t\\N\ttab\\there",
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
        assert_eq!(lines, vec!["d\t\t1\t\\N\t\\N", "u\t\t9\tb\t1"]);
        // Moving a row whose TOASTed value only the target holds needs the target.
        assert_eq!(
            batch.update(Some(&old), &row("9", TupleValue::UnchangedToast, "1")),
            Err(NeedsTarget)
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
