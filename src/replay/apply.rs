//! Applies committed transactions to a target database as SQL, keyed by
//! replica identity; rows without a key (REPLICA IDENTITY FULL) are matched as
//! a multiset, one row per change.
//!
//! Values arrive in PostgreSQL's text form and go back in as quoted literals,
//! which the server parses with each column's own input function, so every
//! type round-trips exactly. A TOASTed value the change left unchanged is left
//! out of the UPDATE, so the target keeps the last full value.
//!
//! Schema changes follow the source's notes (`source::ddl`), applied at the
//! DDL's own position: a column added with a default reads that default in
//! the rows that existed before, a renamed column keeps its values. What the
//! stream cannot carry (a rewrite, or a new column seen without a note, whose
//! existing rows may read a default nobody told us) makes the table inexact
//! from that transaction on, and the restore refuses it: never wrong rows in
//! silence. `--allow-inexact` goes on, and says which tables.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::merge::TableBatch;
use crate::base::exit::ExitCode;
use crate::base::position::{CommitLsn, EndLsn, Lsn};
use crate::base::table::{quote_ident, quote_literal, TableName};
use crate::log::committed::{Change, TxnInfo, TxnSink};
use crate::log::LogError;
use crate::source::ddl::{self, ColumnChange, Note};
use crate::source::pgoutput::{Column, OldTuple, Relation, Tuple, TupleValue};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("applying transaction {xid} (commit {commit_lsn}) to the target failed: {message}")]
    Target {
        xid: u32,
        commit_lsn: CommitLsn,
        message: String,
    },
    #[error("table {table} gained column {column} of a type the archive cannot name (oid {oid})")]
    UnknownType {
        table: TableName,
        column: String,
        oid: u32,
    },
    #[error("{0}; restore to an earlier point, or to one after a base snapshot taken since (capture takes one when compaction meets this), or add --allow-inexact")]
    Inexact(Inexact),
}

/// A table whose restored rows may differ from the source's from some transaction on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inexact {
    pub table: TableName,
    pub since: crate::base::position::Position,
    pub why: String,
}

impl std::fmt::Display for Inexact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {} cannot be restored exactly past {}: {}",
            self.table, self.since, self.why
        )
    }
}

impl ApplyError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ApplyError::Log(e) => e.exit_code(),
            ApplyError::Target { .. } | ApplyError::UnknownType { .. } => ExitCode::Failure,
            ApplyError::Inexact(_) => ExitCode::BadInput,
        }
    }
}

/// Which transactions to apply: those that commit after the base and finish
/// at or before the target.
///
/// Why these bounds are exact: the snapshot at `after` holds exactly the
/// transactions whose commit record precedes it (`CommitLsn::precedes`), so
/// those are skipped and every later one applied. A target LSN is a position
/// between transactions, so `end_lsn <= target` takes each transaction whole
/// or not at all; a target time takes those whose commit time is at or before
/// it. Commit LSNs and commit times rise together in commit order, so the
/// applier stops at the first transaction past the target.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// The snapshot's point: transactions whose commit record precedes it are already in it.
    pub after: EndLsn,
    pub until: Target,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every transaction that ends at or before this position.
    Lsn(EndLsn),
    Time(crate::base::position::PgTimestamp),
    Latest,
}

/// Runs SQL on the target; the applier is synchronous, so this bridges to the async client.
pub trait Executor {
    fn execute(&mut self, sql: &str) -> Result<(), String>;
    /// Runs `COPY … FROM STDIN` with `data`.
    fn copy_in(&mut self, sql: &str, data: bytes::Bytes) -> Result<(), String>;
    /// `format_type(oid, typmod)` on the target.
    fn format_type(&mut self, oid: u32, typmod: i32) -> Result<String, String>;
}

/// Applies the changes of in-bounds transactions, batching statements.
pub struct Applier<E: Executor> {
    executor: E,
    bounds: Bounds,
    /// Only these tables are applied; the columns each has on the target now, in order.
    tables: HashMap<TableName, Vec<(String, u32)>>,
    /// Type names known from the snapshot's schema, for columns added later.
    type_names: HashMap<u32, String>,
    /// Statements to run in order: changes to keyless tables, truncates, schema changes.
    batch: String,
    /// The net effect pending on each keyed table; applied after `batch`.
    pending: HashMap<TableName, TableBatch>,
    in_bounds: bool,
    pub applied_txns: u64,
    pub applied_changes: u64,
    /// The last transaction applied.
    pub last: Option<TxnInfo>,
    /// Set once a transaction past the target is seen: everything after is too.
    pub reached_target: bool,
    /// Advanced to each applied transaction's end, in WAL bytes past `bounds.after`.
    progress: indicatif::ProgressBar,
    /// Go on past a change the stream cannot carry (and record it) instead of refusing.
    allow_inexact: bool,
    /// The tables that went inexact, when allowed.
    pub inexact: Vec<Inexact>,
    /// Tables rewritten in the current transaction (a rewrite note came first).
    rewritten: HashSet<TableName>,
    /// The newest sampled value of each sequence (`source::sequences`) within bounds.
    pub sequences: crate::source::sequences::Sample,
}

const BATCH_BYTES: usize = 1 << 20;
/// Values held in net effects before they are applied: bigger batches merge
/// more changes per key and cost fewer round trips.
const PENDING_BYTES: usize = 32 << 20;

impl<E: Executor> Applier<E> {
    pub fn new(
        executor: E,
        bounds: Bounds,
        tables: HashMap<TableName, Vec<(String, u32)>>,
        type_names: HashMap<u32, String>,
    ) -> Self {
        Applier {
            executor,
            bounds,
            tables,
            type_names,
            batch: String::new(),
            pending: HashMap::new(),
            in_bounds: false,
            applied_txns: 0,
            applied_changes: 0,
            last: None,
            reached_target: false,
            progress: indicatif::ProgressBar::hidden(),
            allow_inexact: false,
            inexact: Vec::new(),
            rewritten: HashSet::new(),
            sequences: Default::default(),
        }
    }

    /// Goes on past changes the stream cannot carry, recording them, instead of refusing.
    pub fn allow_inexact(mut self, allow: bool) -> Self {
        self.allow_inexact = allow;
        self
    }

    /// Refuses the restore of `table` from `txn` on, or, when allowed, records it once.
    fn inexact(&mut self, txn: &TxnInfo, table: &TableName, why: String) -> Result<(), ApplyError> {
        let inexact = Inexact {
            table: table.clone(),
            since: crate::base::position::Position {
                commit_time: txn.commit_time,
                lsn: txn.end_lsn,
            },
            why,
        };
        if !self.allow_inexact {
            return Err(ApplyError::Inexact(inexact));
        }
        if !self.inexact.iter().any(|i| &i.table == table) {
            tracing::warn!(%inexact, "going on (--allow-inexact)");
            self.inexact.push(inexact);
        }
        Ok(())
    }

    /// Applies a schema note at its place in the stream.
    fn follow_note(&mut self, txn: &TxnInfo, note: &Note) -> Result<(), ApplyError> {
        let table = note.table();
        let Some(current) = self.tables.get(&table).cloned() else {
            return Ok(());
        };
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
        if !sql.is_empty() {
            self.statement(txn, &table, &sql)?;
        }
        self.pending.remove(&table);
        // Type oids are learnt from the next Relation message.
        self.tables.insert(
            table,
            note.after.iter().map(|c| (c.name.clone(), 0)).collect(),
        );
        Ok(())
    }

    pub fn with_progress(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = bar;
        self
    }

    /// Applies the statements, then the net effects, in one target transaction.
    fn flush(&mut self, txn: &TxnInfo) -> Result<(), ApplyError> {
        if self.batch.is_empty() && self.pending.values().all(TableBatch::is_empty) {
            return Ok(());
        }
        let failed = |message| ApplyError::Target {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
            message,
        };
        let sql = format!("BEGIN;\n{}", std::mem::take(&mut self.batch));
        self.executor.execute(&sql).map_err(failed)?;
        for (i, (table, pending)) in self
            .pending
            .iter_mut()
            .filter(|(_, p)| !p.is_empty())
            .enumerate()
        {
            let statements = pending.take(&table.quoted(), &format!("tidemark_stage_{i}"));
            self.executor.execute(&statements.create).map_err(failed)?;
            self.executor
                .copy_in(&statements.copy, statements.data)
                .map_err(failed)?;
            self.executor.execute(&statements.merge).map_err(failed)?;
        }
        self.executor.execute("COMMIT").map_err(failed)
    }

    /// Queues a statement on `table`, after whatever net effect is pending on it.
    fn statement(&mut self, txn: &TxnInfo, table: &TableName, sql: &str) -> Result<(), ApplyError> {
        if self.pending.get(table).is_some_and(|p| !p.is_empty()) {
            self.flush(txn)?;
        }
        self.batch += sql;
        Ok(())
    }

    /// The net effect to add `relation`'s change to, if its table has a key.
    fn pending_for(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        relation: &Relation,
    ) -> Result<Option<&mut TableBatch>, ApplyError> {
        if self.pending.get(table).is_some_and(|p| !p.fits(relation)) {
            self.flush(txn)?;
            self.pending.remove(table);
        }
        if !self.pending.contains_key(table) {
            match TableBatch::new(relation) {
                Some(batch) => self.pending.insert(table.clone(), batch),
                None => return Ok(None),
            };
        }
        Ok(self.pending.get_mut(table))
    }

    fn pending_bytes(&self) -> usize {
        self.pending.values().map(TableBatch::bytes).sum()
    }

    /// Sends whatever is batched. Call after the last transaction.
    pub fn finish(&mut self) -> Result<(), ApplyError> {
        match self.last.clone() {
            Some(txn) => self.flush(&txn),
            None => Ok(()),
        }
    }

    fn past_target(&self, txn: &TxnInfo) -> bool {
        match self.bounds.until {
            Target::Lsn(lsn) => txn.end_lsn > lsn,
            Target::Time(time) => txn.commit_time > time,
            Target::Latest => false,
        }
    }

    /// A logical message in the stream: tidemark's schema notes are applied, others ignored.
    fn follow_message(
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
            ddl::REWRITE_PREFIX => {
                let rewrite: ddl::Rewrite =
                    serde_json::from_slice(content).map_err(|e| unreadable(e.to_string()))?;
                let table = TableName::new(rewrite.schema, rewrite.name);
                if !self.tables.contains_key(&table) {
                    return Ok(());
                }
                self.rewritten.insert(table.clone());
                self.inexact(txn, &table, "it was rewritten (ALTER TYPE, a volatile default), and the rewritten values are not in the stream".into())
            }
            _ => Ok(()),
        }
    }

    /// Brings the target table's columns in line with the relation, as the source's were.
    fn follow_schema(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        relation: &Relation,
    ) -> Result<(), ApplyError> {
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
        // Pending changes were made with the old columns.
        if self.pending.get(table).is_some_and(|p| !p.is_empty()) {
            self.flush(txn)?;
        }
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
fn statement(table: &TableName, relation: &Relation, change: &Change) -> String {
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

impl<E: Executor> TxnSink for Applier<E> {
    type Error = ApplyError;

    fn begin(&mut self, txn: &TxnInfo) -> Result<(), ApplyError> {
        self.rewritten.clear();
        // Already in the snapshot: its commit record precedes the snapshot's point.
        if txn.commit_lsn.precedes(self.bounds.after) {
            self.in_bounds = false;
            return Ok(());
        }
        if self.reached_target || self.past_target(txn) {
            self.reached_target = true;
            self.in_bounds = false;
            return Ok(());
        }
        self.in_bounds = true;
        self.progress
            .set_position(txn.end_lsn.0.bytes_since(self.bounds.after.0));
        Ok(())
    }

    fn change(&mut self, txn: &TxnInfo, _lsn: Lsn, change: Change) -> Result<(), ApplyError> {
        if !self.in_bounds {
            return Ok(());
        }
        let relations: Vec<Arc<Relation>> = match &change {
            Change::Insert { relation, .. }
            | Change::Update { relation, .. }
            | Change::Delete { relation, .. } => {
                vec![relation.clone()]
            }
            Change::Truncate { relations, .. } => relations.clone(),
            Change::Message { prefix, content } => {
                return self.follow_message(txn, prefix, content)
            }
        };
        for relation in &relations {
            let table = relation.table();
            if !self.tables.contains_key(&table) {
                continue;
            }
            self.follow_schema(txn, &table, relation)?;
            self.applied_changes += 1;
            let batched = match &change {
                Change::Insert { new, .. } => self
                    .pending_for(txn, &table, relation)?
                    .map(|p| p.insert(new)),
                Change::Update { old, new, .. } => self
                    .pending_for(txn, &table, relation)?
                    .map(|p| p.update(old.as_ref(), new)),
                Change::Delete { old, .. } => self
                    .pending_for(txn, &table, relation)?
                    .map(|p| p.delete(old.tuple())),
                Change::Truncate { .. } => {
                    // What is pending on the table is emptied anyway.
                    self.pending.remove(&table);
                    None
                }
                Change::Message { .. } => unreachable!("handled above"),
            };
            if batched == Some(Ok(())) {
                continue;
            }
            let sql = statement(&table, relation, &change);
            self.statement(txn, &table, &sql)?;
        }
        if self.batch.len() >= BATCH_BYTES || self.pending_bytes() >= PENDING_BYTES {
            self.flush(txn)?;
        }
        Ok(())
    }

    fn incomplete(&mut self, txn: &TxnInfo) -> Result<(), ApplyError> {
        // Harmless if the snapshot holds it, or if it is past the target.
        if txn.commit_lsn.precedes(self.bounds.after)
            || self.reached_target
            || self.past_target(txn)
        {
            return Ok(());
        }
        Err(LogError::Incomplete {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
        }
        .into())
    }

    fn commit(&mut self, txn: &TxnInfo) -> Result<(), ApplyError> {
        if self.in_bounds {
            self.applied_txns += 1;
            self.last = Some(txn.clone());
        }
        self.in_bounds = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{CommitLsn, EndLsn, Lsn};
    use crate::source::pgoutput::build::{text, text_relation};
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
        let (_, inexact) =
            run_with(vec![(txn(150, 160), rewrite())], Target::Latest, true).unwrap();
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
            .find("COPY tidemark_stage_0 FROM STDIN\nu\t\t2\tx\n")
            .expect("the insert staged");
        assert!(truncate < staged, "{all}");
        assert!(all.ends_with("COMMIT"), "{all}");
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
}
