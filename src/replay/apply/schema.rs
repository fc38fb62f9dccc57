//! How the applier follows the source's schema: the notes capture emits at
//! each DDL, the Relation messages, and what neither can vouch for.

use super::{Applier, ApplyError, Executor, Inexact};
use crate::base::table::{quote_ident, quote_literal, TableName};
use crate::log::committed::TxnInfo;
use crate::source::ddl::{self, ColumnChange, Note};
use crate::source::pgoutput::{Column, Relation};

impl<E: Executor> Applier<E> {
    /// Refuses the restore of `table` from `txn` on, or, when allowed, records it once.
    fn inexact(&mut self, txn: &TxnInfo, table: &TableName, why: String) -> Result<(), ApplyError> {
        let inexact = Inexact {
            table: table.clone(),
            since: crate::base::position::Position {
                commit_time: txn.commit_time,
                lsn: txn.end_lsn,
            },
            until: self.next_rereads.get(table).copied(),
            why,
            renamed_to: self
                .at_target
                .renamed
                .iter()
                .map(|(_, to)| to.clone())
                .collect(),
        };
        if !self.allow_inexact {
            return Err(ApplyError::Inexact(Box::new(inexact)));
        }
        if !self.inexact.iter().any(|i| &i.table == table) {
            tracing::warn!(%inexact, "going on (--allow-inexact)");
            self.inexact.push(inexact);
        }
        Ok(())
    }

    /// Applies a schema note at its place in the stream.
    fn follow_note(&mut self, txn: &TxnInfo, note: &Note) -> Result<(), ApplyError> {
        let table = note.table_before();
        let Some(current) = self.tables.get(&table).cloned() else {
            return Ok(());
        };
        if self.reread_holds(txn, &table) {
            return Ok(());
        }
        if note.dropped {
            return self.leave_out(txn, &table, "it was dropped at the source");
        }
        let changes = match note.changes() {
            Some(changes) => changes,
            // Without the columns before, names are all there is: adds and drops
            // are clear, but a column gone and one come may be a rename.
            None => {
                let added: Vec<_> = note
                    .after
                    .iter()
                    .filter(|c| !current.iter().any(|(n, _)| *n == c.name))
                    .cloned()
                    .collect();
                let dropped: Vec<_> = current
                    .iter()
                    .filter(|(n, _)| !note.after.iter().any(|c| &c.name == n))
                    .map(|(n, _)| n.clone())
                    .collect();
                if !added.is_empty() && !dropped.is_empty() {
                    return self.inexact(txn, &table, format!(
                        "columns {} went and {} came in one change, which may be a rename, and the note does not say",
                        dropped.join(", "),
                        added.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
                dropped
                    .into_iter()
                    .map(ColumnChange::Dropped)
                    .chain(added.into_iter().map(ColumnChange::Added))
                    .collect()
            }
        };
        let quoted = table.quoted();
        let mut sql = String::new();
        for change in &changes {
            match change {
                ColumnChange::Added(column) => {
                    let name = quote_ident(&column.name);
                    sql += &format!("ALTER TABLE {quoted} ADD COLUMN {name} {}", column.type_sql);
                    // Rows from before the DDL read the column's missing value.
                    if let Some(missing) = &column.missing {
                        sql += &format!(
                            " DEFAULT {}::{};\nALTER TABLE {quoted} ALTER COLUMN {name} DROP DEFAULT",
                            quote_literal(missing),
                            column.type_sql
                        );
                    }
                    sql += ";\n";
                }
                ColumnChange::Dropped(name) => {
                    sql += &format!("ALTER TABLE {quoted} DROP COLUMN {};\n", quote_ident(name));
                }
                ColumnChange::Renamed { from, to } => {
                    sql += &format!(
                        "ALTER TABLE {quoted} RENAME COLUMN {} TO {};\n",
                        quote_ident(from),
                        quote_ident(to)
                    );
                }
                ColumnChange::Retyped { name, type_sql } => {
                    if self.rewritten.contains(&table) {
                        continue;
                    }
                    // No rewrite: the stored values did not change, so the same cast is exact.
                    let name = quote_ident(name);
                    sql += &format!(
                        "ALTER TABLE {quoted} ALTER COLUMN {name} TYPE {type_sql} USING {name}::{type_sql};\n"
                    );
                }
            }
        }
        // Changes pending or staged were made with the old columns.
        self.settle(txn, &table)?;
        if !sql.is_empty() {
            self.statement(txn, &table, &sql)?;
        }
        self.pending.remove(&table);
        // Type oids are learnt from the next Relation message.
        self.tables.insert(
            table.clone(),
            note.after.iter().map(|c| (c.name.clone(), 0)).collect(),
        );
        if self.rewritten.remove(&table) {
            let columns: Vec<&str> = changes
                .iter()
                .filter_map(|c| match c {
                    ColumnChange::Added(column) => Some(column.name.as_str()),
                    ColumnChange::Retyped { name, .. } => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            self.rewritten_inexact(txn, &table, &columns)?;
        }
        let renamed = note.table();
        if renamed != table && !self.follow_rename(txn, &table, &renamed)? {
            return Ok(());
        }
        self.at_target.definitions.insert(renamed, note.clone());
        Ok(())
    }

    /// A rewritten table: the new values of `columns` (all, if none are
    /// known) are not in the stream.
    pub(super) fn rewritten_inexact(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        columns: &[&str],
    ) -> Result<(), ApplyError> {
        let which = match columns {
            [] => "its values".to_string(),
            [one] => format!("the values of column {one}"),
            many => format!("the values of columns {}", many.join(", ")),
        };
        self.inexact(
            txn,
            table,
            format!("it was rewritten (ALTER TYPE, a volatile default), and {which} may differ: the stream does not carry them"),
        )
    }

    /// The table is gone from the source, or from what capture watches: from
    /// here on it is not restored.
    fn leave_out(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        why: &'static str,
    ) -> Result<(), ApplyError> {
        self.pending.remove(table);
        if let Some(stage) = self.staged.remove(table) {
            self.batch += &stage.discard();
        }
        self.statement(txn, table, &format!("DROP TABLE {};\n", table.quoted()))?;
        self.tables.remove(table);
        self.at_target.definitions.remove(table);
        self.at_target
            .left_out
            .push(super::super::at_target::LeftOut {
                table: table.clone(),
                since: crate::base::position::Position {
                    commit_time: txn.commit_time,
                    lsn: txn.end_lsn,
                },
                why,
            });
        Ok(())
    }

    /// The table took a new name (or schema); the target's follows. If a
    /// re-read taken under the new name was loaded already, the table under
    /// the old name is dropped instead, and this returns false.
    fn follow_rename(
        &mut self,
        txn: &TxnInfo,
        from: &TableName,
        to: &TableName,
    ) -> Result<bool, ApplyError> {
        self.settle(txn, from)?;
        self.pending.remove(from);
        self.at_target.renamed.push((from.clone(), to.clone()));
        if self.tables.contains_key(to) {
            self.statement(txn, from, &format!("DROP TABLE {};\n", from.quoted()))?;
            self.tables.remove(from);
            self.at_target.definitions.remove(from);
            return Ok(false);
        }
        let mut sql = String::new();
        let mut moved = from.clone();
        if to.schema != from.schema {
            sql += &format!(
                "CREATE SCHEMA IF NOT EXISTS {};\nALTER TABLE {} SET SCHEMA {};\n",
                quote_ident(&to.schema),
                from.quoted(),
                quote_ident(&to.schema)
            );
            moved = TableName::new(&to.schema, &from.name);
        }
        if to.name != from.name {
            sql += &format!(
                "ALTER TABLE {} RENAME TO {};\n",
                moved.quoted(),
                quote_ident(&to.name)
            );
        }
        self.statement(txn, from, &sql)?;
        if let Some(columns) = self.tables.remove(from) {
            self.tables.insert(to.clone(), columns);
        }
        if let Some(point) = self.reread_points.remove(from) {
            self.reread_points.insert(to.clone(), point);
        }
        if let Some(definition) = self.at_target.definitions.remove(from) {
            self.at_target.definitions.insert(to.clone(), definition);
        }
        Ok(true)
    }

    /// A logical message in the stream: tidemark's schema notes are applied, others ignored.
    pub(super) fn follow_message(
        &mut self,
        txn: &TxnInfo,
        prefix: &str,
        content: &[u8],
    ) -> Result<(), ApplyError> {
        let unreadable = |message: String| ApplyError::Target {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
            message,
        };
        match prefix {
            ddl::NOTE_PREFIX => {
                let note = Note::parse(content).map_err(unreadable)?;
                self.follow_note(txn, &note)
            }
            crate::source::sequences::PREFIX => {
                let sample = crate::source::sequences::parse(content).map_err(unreadable)?;
                self.sequences.extend(sample);
                Ok(())
            }
            ddl::UNWATCHED_PREFIX => {
                let left: ddl::Tables =
                    serde_json::from_slice(content).map_err(|e| unreadable(e.to_string()))?;
                for table in left.tables {
                    if self.tables.contains_key(&table) && !self.reread_holds(txn, &table) {
                        self.leave_out(txn, &table, "it left [source] tables")?;
                    }
                }
                Ok(())
            }
            ddl::REWRITE_PREFIX => {
                let rewrite: ddl::Rewrite =
                    serde_json::from_slice(content).map_err(|e| unreadable(e.to_string()))?;
                let table = TableName::new(rewrite.schema, rewrite.name);
                if !self.tables.contains_key(&table) || self.reread_holds(txn, &table) {
                    return Ok(());
                }
                // Judged at the schema note that follows (it names the
                // columns), or at commit if none does.
                self.rewritten.insert(table);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Brings the target table's columns in line with the relation, as the source's were.
    pub(super) fn follow_schema(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        relation: &Relation,
    ) -> Result<(), ApplyError> {
        // Nearly every change: the columns are as last seen.
        let as_known = self.tables.get(table).is_some_and(|current| {
            current.len() == relation.columns.len()
                && current
                    .iter()
                    .zip(&relation.columns)
                    .all(|((name, oid), c)| *name == c.name && *oid == c.type_oid)
        });
        if as_known {
            return Ok(());
        }
        let current = self.tables.get(table).cloned().unwrap_or_default();
        let wanted: Vec<&Column> = relation.columns.iter().collect();
        let same_names = current.len() == wanted.len()
            && current.iter().zip(&wanted).all(|((n, _), c)| *n == c.name);
        if same_names {
            // A type that changed with no note: the old rows' values may have too.
            let retyped: Vec<&str> = current
                .iter()
                .zip(&wanted)
                .filter(|((_, oid), c)| *oid != 0 && *oid != c.type_oid)
                .map(|((n, _), _)| n.as_str())
                .collect();
            if !retyped.is_empty() {
                let why = format!(
                    "column {} changed type, and no schema note says how its values were converted",
                    retyped.join(", ")
                );
                self.inexact(txn, table, why)?;
            }
            self.remember_columns(table, &wanted);
            return Ok(());
        }
        let added: Vec<&str> = wanted
            .iter()
            .filter(|c| !current.iter().any(|(n, _)| *n == c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !added.is_empty() {
            let why = format!("column {} appeared with no schema note, so what the rows before it read there (a default?) is unknown", added.join(", "));
            self.inexact(txn, table, why)?;
        }
        // Changes pending or staged were made with the old columns.
        self.settle(txn, table)?;
        self.pending.remove(table);
        let quoted = table.quoted();
        for (name, _) in &current {
            if !wanted.iter().any(|c| &c.name == name) {
                self.batch += &format!("ALTER TABLE {quoted} DROP COLUMN {};\n", quote_ident(name));
            }
        }
        for column in &wanted {
            if current.iter().any(|(n, _)| *n == column.name) {
                continue;
            }
            let type_sql = match self.type_names.get(&column.type_oid) {
                Some(name) if column.type_modifier < 0 => name.clone(),
                _ if column.type_oid < 16384 => self
                    .executor
                    .format_type(column.type_oid, column.type_modifier)
                    .map_err(|message| ApplyError::Target {
                        xid: txn.xid,
                        commit_lsn: txn.commit_lsn,
                        message,
                    })?,
                Some(name) => name.clone(),
                None => {
                    return Err(ApplyError::UnknownType {
                        table: table.clone(),
                        column: column.name.clone(),
                        oid: column.type_oid,
                    })
                }
            };
            self.batch += &format!(
                "ALTER TABLE {quoted} ADD COLUMN {} {type_sql};\n",
                quote_ident(&column.name)
            );
        }
        self.remember_columns(table, &wanted);
        Ok(())
    }

    /// The target table's columns are now the relation's.
    fn remember_columns(&mut self, table: &TableName, wanted: &[&Column]) {
        self.tables.insert(
            table.clone(),
            wanted
                .iter()
                .map(|c| (c.name.clone(), c.type_oid))
                .collect(),
        );
    }
}
