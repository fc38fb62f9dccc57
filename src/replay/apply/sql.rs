//! The SQL a single change becomes, for keyless tables and statement replay.

use crate::base::table::{quote_ident, quote_literal, TableName};
use crate::log::committed::Change;
use crate::source::pgoutput::{OldTuple, Relation, Tuple, TupleValue};

fn literal(value: &TupleValue) -> Option<String> {
    match value {
        TupleValue::Null => Some("NULL".into()),
        TupleValue::UnchangedToast => None,
        TupleValue::Text(bytes) => Some(quote_literal(&String::from_utf8_lossy(bytes))),
        TupleValue::Binary(bytes) => Some(format!("'\\x{}'", hex::encode(bytes))),
    }
}

/// `WHERE` (or a ctid subquery) matching the row an update or delete names.
fn row_match(quoted: &str, relation: &Relation, old: Option<&OldTuple>, new: &Tuple) -> String {
    let (tuple, full) = match old {
        Some(OldTuple::Full(t)) => (t, true),
        Some(OldTuple::Key(t)) => (t, false),
        None => (new, false),
    };
    if full {
        let conditions: Vec<String> = relation
            .columns
            .iter()
            .zip(&tuple.0)
            .filter_map(|(c, v)| {
                let column = quote_ident(&c.name);
                match v {
                    TupleValue::Null => Some(format!("{column} IS NULL")),
                    TupleValue::UnchangedToast => None,
                    v => literal(v).map(|l| format!("{column}::text = {l}")),
                }
            })
            .collect();
        return format!(
            "ctid = (SELECT ctid FROM {quoted} WHERE {} LIMIT 1)",
            conditions.join(" AND ")
        );
    }
    let conditions: Vec<String> = relation
        .columns
        .iter()
        .zip(&tuple.0)
        .filter(|(c, _)| c.is_key())
        .filter_map(|(c, v)| literal(v).map(|l| format!("{} = {l}", quote_ident(&c.name))))
        .collect();
    conditions.join(" AND ")
}

/// One change as a statement that finds its row on the target.
pub(super) fn statement(table: &TableName, relation: &Relation, change: &Change) -> String {
    let quoted = table.quoted();
    match change {
        Change::Insert { new, .. } => {
            let (columns, values): (Vec<String>, Vec<String>) = relation
                .columns
                .iter()
                .zip(&new.0)
                .filter_map(|(c, v)| literal(v).map(|l| (quote_ident(&c.name), l)))
                .unzip();
            format!(
                "INSERT INTO {quoted} ({}) OVERRIDING SYSTEM VALUE VALUES ({});\n",
                columns.join(", "),
                values.join(", ")
            )
        }
        Change::Update { old, new, .. } => {
            let sets: Vec<String> = relation
                .columns
                .iter()
                .zip(&new.0)
                .filter_map(|(c, v)| literal(v).map(|l| format!("{} = {l}", quote_ident(&c.name))))
                .collect();
            format!(
                "UPDATE {quoted} SET {} WHERE {};\n",
                sets.join(", "),
                row_match(&quoted, relation, old.as_ref(), new)
            )
        }
        Change::Delete { old, .. } => {
            format!(
                "DELETE FROM {quoted} WHERE {};\n",
                row_match(&quoted, relation, Some(old), old.tuple())
            )
        }
        Change::Truncate { .. } => format!("TRUNCATE {quoted};\n"),
        Change::Message { .. } => String::new(),
    }
}
