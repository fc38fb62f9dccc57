//! The tables as they were at the target, beyond their rows: what schema
//! notes within bounds did to them (`source::ddl`). Replay renames and drops
//! as it meets them; the rest (keys, constraints, indexes, defaults, NOT
//! NULL) is settled once at the end, from each table's newest note, so a
//! restore builds them as they were at the target rather than as the
//! snapshot had them.

use std::collections::HashMap;

use crate::base::table::{quote_ident, TableName};
use crate::source::ddl::Note;
use crate::source::schema::SchemaSet;

#[derive(Clone, Debug, Default)]
pub struct TablesAtTarget {
    /// In order: (old name, new name).
    pub renamed: Vec<(TableName, TableName)>,
    /// Tables dropped at the source, or no longer watched, before the target.
    pub left_out: Vec<LeftOut>,
    /// The newest note of each table, under its name at the target.
    pub definitions: HashMap<TableName, Note>,
}

/// A table a restore to the target leaves out, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeftOut {
    pub table: TableName,
    pub since: crate::base::position::Position,
    pub why: &'static str,
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is left out: {} at {}",
            self.table, self.why, self.since
        )
    }
}

impl TablesAtTarget {
    /// Brings `schema` (the snapshot's, as loaded) to the target: names,
    /// dropped tables, and each noted table's keys, constraints, indexes,
    /// defaults and NOT NULLs. Returns the SQL that sets defaults and NOT
    /// NULLs on the target where they differ from what it was created with.
    pub fn settle(&self, schema: &mut SchemaSet) -> Vec<String> {
        for (from, to) in &self.renamed {
            // Loaded from a re-read under the new name: the old one is gone.
            if schema.tables.iter().any(|t| &t.table_name() == to) {
                schema.tables.retain(|t| &t.table_name() != from);
            } else if let Some(table) = schema.tables.iter_mut().find(|t| &t.table_name() == from) {
                table.schema = to.schema.clone();
                table.name = to.name.clone();
            }
        }
        schema
            .tables
            .retain(|t| !self.left_out.iter().any(|l| l.table == t.table_name()));
        let mut sql = Vec::new();
        for table in &mut schema.tables {
            let Some(note) = self.definitions.get(&table.table_name()) else {
                continue;
            };
            if let Some(definition) = &note.definition {
                table.primary_key = definition.primary_key.clone();
                table.constraints = definition.constraints.clone();
                table.indexes = definition.indexes.clone();
            }
            let quoted = table.table_name().quoted();
            for column in &note.after {
                let (Some(not_null), name) = (column.not_null, quote_ident(&column.name)) else {
                    continue;
                };
                // A column the snapshot did not have under this name (added
                // or renamed since) is set whichever way it was created.
                let created = table.columns.iter_mut().find(|c| c.name == column.name);
                let (had_default, had_not_null) = match &created {
                    Some(c) => (Some(c.default.clone()), Some(c.not_null)),
                    None => (None, None),
                };
                if had_default != Some(column.default.clone()) {
                    sql.push(match &column.default {
                        Some(default) => {
                            format!(
                                "ALTER TABLE {quoted} ALTER COLUMN {name} SET DEFAULT {default}"
                            )
                        }
                        None => format!("ALTER TABLE {quoted} ALTER COLUMN {name} DROP DEFAULT"),
                    });
                }
                if had_not_null != Some(not_null) {
                    let verb = if not_null { "SET" } else { "DROP" };
                    sql.push(format!(
                        "ALTER TABLE {quoted} ALTER COLUMN {name} {verb} NOT NULL"
                    ));
                }
                if let Some(created) = created {
                    created.default = column.default.clone();
                    created.not_null = not_null;
                }
            }
        }
        sql
    }
}
