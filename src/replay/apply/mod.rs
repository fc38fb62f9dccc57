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
//! silence. `--allow-inexact` goes on, and says which tables. A table loaded
//! from a re-read (`archive::reread`) takes nothing from the transactions
//! before the re-read's point: the re-read holds them, schema changes included.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use super::fold::Fold;
use super::merge::{NetStage, TableBatch};
use crate::base::exit::ExitCode;
use crate::base::position::{CommitLsn, EndLsn, Lsn, Position};
use crate::base::table::{quote_ident, TableName};
use crate::log::committed::{Change, TxnInfo, TxnSink};
use crate::log::LogError;
use crate::source::pgoutput::Relation;
use sql::statement;

mod schema;
mod sql;

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
    #[error("{0}")]
    Inexact(Box<Inexact>),
    #[error("loading the snapshot of table {table} into the target failed: {message}")]
    Load { table: TableName, message: String },
    #[error("holding the changes of table {table} on local disk failed: {message}; free space under [log] dir, and restore again")]
    Spill { table: TableName, message: String },
}

/// A table whose restored rows may differ from the source's from some transaction on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inexact {
    pub table: TableName,
    pub since: Position,
    /// Where capture read the table again, which ends the stretch; `None`: not yet.
    pub until: Option<Position>,
    pub why: String,
    /// The names replay had given restored tables by then (renames), so a
    /// refused restore can remove them too.
    #[serde(skip)]
    pub renamed_to: Vec<TableName>,
}

impl std::fmt::Display for Inexact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Inexact {
            table, since, why, ..
        } = self;
        match &self.until {
            Some(until) => write!(
                f,
                "table {table} cannot be restored exactly from {since} until {until}, where capture read it again: {why}; restore to a point outside that stretch, or add --allow-inexact"
            ),
            None => write!(
                f,
                "table {table} cannot be restored exactly past {since} until capture reads it again: {why}; restore to an earlier point, wait for the re-read (`tidemark snapshot --table {table}` asks for one now), or add --allow-inexact"
            ),
        }
    }
}

impl ApplyError {
    /// Holding `table`'s folded rows on disk failed.
    pub fn spill(table: &TableName, error: std::io::Error) -> ApplyError {
        ApplyError::Spill {
            table: table.clone(),
            message: error.to_string(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            ApplyError::Log(e) => e.exit_code(),
            ApplyError::Target { .. }
            | ApplyError::UnknownType { .. }
            | ApplyError::Load { .. }
            | ApplyError::Spill { .. } => ExitCode::Failure,
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
    /// Returns once everything asked so far has run, with the first failure.
    fn sync(&mut self) -> Result<(), String>;
    /// Loads `table`'s snapshot whole, which the rebuild held back for a
    /// fold that could not go on, after everything asked so far. Returns
    /// the snapshot's rows.
    fn load(&mut self, table: &TableName) -> Result<u64, String>;
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
    /// Rows inserted into tables without a key, as COPY text; sent after
    /// `batch`. A multiset takes them in any order, so they need no merge.
    appends: HashMap<TableName, Append>,
    append_bytes: usize,
    /// The net effect pending on each keyed table; sent after `batch`.
    pending: HashMap<TableName, TableBatch>,
    /// Net effects sent to the target and not yet merged into their table.
    staged: HashMap<TableName, NetStage>,
    /// Names the next stage.
    next_stage: u64,
    /// Fresh tables whose snapshot waits for the changes to fold into it.
    folds: HashMap<TableName, Fold>,
    /// What all folds hold, kept as they grow: summed per change, it would
    /// cost a pass over every folded table.
    fold_bytes: usize,
    /// What all folds may hold; past it, the largest spills (`relieve_folds`).
    fold_budget: usize,
    /// Snapshot rows loaded by replay itself (those of folded tables).
    pub rows_loaded: u64,
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
    /// Tables loaded from a re-read, and its point: earlier transactions are in it.
    reread_points: HashMap<TableName, EndLsn>,
    /// The first re-read past the target, per table: where an inexact stretch ends.
    next_rereads: HashMap<TableName, Position>,
    /// What the notes within bounds did to the tables themselves.
    pub at_target: super::at_target::TablesAtTarget,
}

const BATCH_BYTES: usize = 1 << 20;

/// Rows for one keyless table's COPY.
struct Append {
    copy: String,
    rows: Vec<u8>,
}
/// Values held in net effects before they are sent to their stage. Small, so
/// the target stages one batch while the next is decoded (measured: 2 MiB
/// restored 414,001 changes in 1.9 s, 8 MiB in 2.2 s, 32 MiB in 2.6 s), and
/// memory stays low; the stage, not this batch, merges keys across flushes.
const PENDING_BYTES: usize = 2 << 20;

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
            appends: HashMap::new(),
            append_bytes: 0,
            pending: HashMap::new(),
            staged: HashMap::new(),
            next_stage: 0,
            folds: HashMap::new(),
            fold_bytes: 0,
            fold_budget: 0,
            rows_loaded: 0,
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
            reread_points: HashMap::new(),
            next_rereads: HashMap::new(),
            at_target: Default::default(),
        }
    }

    /// Tables loaded from re-reads (and their points), and the re-reads past the target.
    pub fn with_rereads(
        mut self,
        points: HashMap<TableName, EndLsn>,
        next: HashMap<TableName, Position>,
    ) -> Self {
        self.reread_points = points;
        self.next_rereads = next;
        self
    }

    /// Whether `table` was loaded from a re-read that holds `txn` already.
    fn reread_holds(&self, txn: &TxnInfo, table: &TableName) -> bool {
        self.reread_points
            .get(table)
            .is_some_and(|point| txn.commit_lsn.precedes(*point))
    }

    /// Fresh tables whose snapshot the executor holds back: their changes
    /// fold into it, while all folds hold at most `budget` bytes.
    pub fn with_folds(mut self, folds: HashMap<TableName, Fold>, budget: usize) -> Self {
        self.fold_bytes = folds.values().map(Fold::bytes).sum();
        self.fold_budget = budget;
        self.folds = folds;
        self
    }

    /// Adds `change` to `table`'s fold, if it has one that can take it;
    /// otherwise the table is loaded and the change goes the usual way.
    fn fold(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        relation: &Relation,
        change: &Change,
    ) -> Result<bool, ApplyError> {
        let Some(fold) = self.folds.get_mut(table) else {
            return Ok(false);
        };
        let before = fold.bytes();
        let folded = fold.fits(relation)
            && match change {
                Change::Insert { new, .. } => fold.insert(new).is_ok(),
                Change::Update { old, new, .. } => fold.update(old.as_ref(), new).is_ok(),
                Change::Delete { old, .. } => fold.delete(old.tuple()).is_ok(),
                Change::Truncate { .. } | Change::Message { .. } => false,
            };
        // A fold may shrink: it compacts as it goes.
        self.fold_bytes = self.fold_bytes - before + fold.bytes();
        if !folded {
            self.unfold(txn, table)?;
        } else if self.fold_bytes > self.fold_budget {
            self.relieve_folds(txn)?;
        }
        Ok(folded)
    }

    /// Brings the folds back within budget: the largest writes its rows to
    /// disk, or, when what the keys hold leaves too little room for rows
    /// (spills would come ever more often), loads its table.
    fn relieve_folds(&mut self, txn: &TxnInfo) -> Result<(), ApplyError> {
        let Some((table, fold)) = self.folds.iter_mut().max_by_key(|(_, f)| f.bytes()) else {
            return Ok(());
        };
        if self.fold_bytes - fold.spillable() > self.fold_budget / 4 * 3 {
            let table = table.clone();
            return self.unfold(txn, &table);
        }
        let before = fold.bytes();
        fold.spill().map_err(|e| ApplyError::spill(table, e))?;
        self.fold_bytes = self.fold_bytes - before + fold.bytes();
        Ok(())
    }

    /// Loads `table`'s snapshot whole and stages its fold, so its changes
    /// go the usual way from here.
    fn unfold(&mut self, txn: &TxnInfo, table: &TableName) -> Result<(), ApplyError> {
        let Some(fold) = self.folds.remove(table) else {
            return Ok(());
        };
        self.fold_bytes -= fold.bytes();
        self.rows_loaded += self.load(table)?;
        if fold.is_empty() {
            return Ok(());
        }
        let mut stage = fold.stage(format!("tidemark_stage_{}", self.next_stage));
        self.next_stage += 1;
        self.execute(txn, &stage.create(&table.quoted()))?;
        let mut rows = fold.into_stage(&mut stage);
        while let Some(data) = rows.next_chunk().map_err(|e| ApplyError::spill(table, e))? {
            self.executor
                .copy_in(&stage.copy(), data)
                .map_err(|message| target_failed(txn, message))?;
        }
        self.staged.insert(table.clone(), stage);
        Ok(())
    }

    fn load(&mut self, table: &TableName) -> Result<u64, ApplyError> {
        self.executor
            .load(table)
            .map_err(|message| ApplyError::Load {
                table: table.clone(),
                message,
            })
    }

    /// The folds still held after `finish`: their tables are loaded by the
    /// caller, snapshot and changes in one pass each, several at once.
    pub fn take_folds(&mut self) -> HashMap<TableName, Fold> {
        std::mem::take(&mut self.folds)
    }

    /// Goes on past changes the stream cannot carry, recording them, instead of refusing.
    pub fn allow_inexact(mut self, allow: bool) -> Self {
        self.allow_inexact = allow;
        self
    }

    pub fn with_progress(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = bar;
        self
    }

    /// Sends the statements, then the net effects, in one target
    /// transaction. Net effects go to each table's stage; a batch that needs
    /// the table as it is (`has_partial`) merges what is staged first, and
    /// itself at once.
    fn flush(&mut self, txn: &TxnInfo) -> Result<(), ApplyError> {
        if self.batch.is_empty()
            && self.appends.is_empty()
            && self.pending.values().all(TableBatch::is_empty)
        {
            return Ok(());
        }
        let sql = format!("BEGIN;\n{}", std::mem::take(&mut self.batch));
        self.execute(txn, &sql)?;
        for (_, append) in std::mem::take(&mut self.appends) {
            self.executor
                .copy_in(&append.copy, Bytes::from(append.rows))
                .map_err(|message| target_failed(txn, message))?;
        }
        self.append_bytes = 0;
        let tables: Vec<TableName> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        for table in tables {
            let partial = self.pending[&table].has_partial();
            if partial {
                self.merge_staged(txn, &table)?;
            }
            if !self.staged.contains_key(&table) {
                let stage =
                    self.pending[&table].stage(format!("tidemark_stage_{}", self.next_stage));
                self.next_stage += 1;
                self.execute(txn, &stage.create(&table.quoted()))?;
                self.staged.insert(table.clone(), stage);
            }
            let (Some(pending), Some(stage)) =
                (self.pending.get_mut(&table), self.staged.get_mut(&table))
            else {
                continue;
            };
            let data = pending.take_into(stage);
            let copy = stage.copy();
            self.executor
                .copy_in(&copy, data)
                .map_err(|message| target_failed(txn, message))?;
            if partial {
                self.merge_staged(txn, &table)?;
            }
        }
        self.execute(txn, "COMMIT")
    }

    /// Merges what is staged for `table` into it, inside the flush's transaction.
    fn merge_staged(&mut self, txn: &TxnInfo, table: &TableName) -> Result<(), ApplyError> {
        match self.staged.remove(table) {
            Some(stage) => self.execute(txn, &stage.merge(&table.quoted())),
            None => Ok(()),
        }
    }

    /// Brings `table` up to date on the target: nothing pending, nothing staged.
    pub(super) fn settle(&mut self, txn: &TxnInfo, table: &TableName) -> Result<(), ApplyError> {
        self.unfold(txn, table)?;
        if self.pending.get(table).is_some_and(|p| !p.is_empty())
            || self.appends.contains_key(table)
        {
            self.flush(txn)?;
        }
        if let Some(stage) = self.staged.remove(table) {
            let sql = format!("BEGIN;\n{}COMMIT;", stage.merge(&table.quoted()));
            self.execute(txn, &sql)?;
        }
        Ok(())
    }

    fn execute(&mut self, txn: &TxnInfo, sql: &str) -> Result<(), ApplyError> {
        self.executor
            .execute(sql)
            .map_err(|message| target_failed(txn, message))
    }

    /// Queues a statement on `table`, after whatever net effect is pending on it.
    fn statement(&mut self, txn: &TxnInfo, table: &TableName, sql: &str) -> Result<(), ApplyError> {
        self.settle(txn, table)?;
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
            self.settle(txn, table)?;
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

    /// Adds a row inserted into a table without a key to its COPY.
    fn append(
        &mut self,
        txn: &TxnInfo,
        table: &TableName,
        relation: &Relation,
        new: &crate::source::pgoutput::Tuple,
    ) -> Result<(), ApplyError> {
        let columns: Vec<String> = relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let copy = format!(
            "COPY {} ({}) FROM STDIN",
            table.quoted(),
            columns.join(", ")
        );
        if self.appends.get(table).is_some_and(|a| a.copy != copy) {
            self.flush(txn)?;
        }
        let append = self.appends.entry(table.clone()).or_insert_with(|| Append {
            copy,
            rows: Vec::new(),
        });
        let before = append.rows.len();
        for (n, value) in new.0.iter().enumerate() {
            if n > 0 {
                append.rows.push(b'\t');
            }
            super::merge::copy_value(&mut append.rows, value);
        }
        append.rows.push(b'\n');
        self.append_bytes += append.rows.len() - before;
        Ok(())
    }

    fn pending_bytes(&self) -> usize {
        self.pending.values().map(TableBatch::bytes).sum()
    }

    /// Sends whatever is batched. Call after the last transaction.
    pub fn finish(&mut self) -> Result<(), ApplyError> {
        let Some(txn) = self.last.clone() else {
            return Ok(());
        };
        self.flush(&txn)?;
        let staged: Vec<TableName> = self.staged.keys().cloned().collect();
        for table in staged {
            self.settle(&txn, &table)?;
        }
        self.executor
            .sync()
            .map_err(|message| target_failed(&txn, message))
    }

    /// Gives up: waits for what was queued to run (or fail), so nothing of
    /// this replay reaches the target after the caller has cleaned up.
    pub fn abandon(&mut self) {
        let _ = self.executor.sync();
    }

    fn past_target(&self, txn: &TxnInfo) -> bool {
        match self.bounds.until {
            Target::Lsn(lsn) => txn.end_lsn > lsn,
            Target::Time(time) => txn.commit_time > time,
            Target::Latest => false,
        }
    }
}

fn target_failed(txn: &TxnInfo, message: String) -> ApplyError {
    ApplyError::Target {
        xid: txn.xid,
        commit_lsn: txn.commit_lsn,
        message,
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
            if !self.tables.contains_key(&table) || self.reread_holds(txn, &table) {
                continue;
            }
            self.follow_schema(txn, &table, relation)?;
            self.applied_changes += 1;
            if self.fold(txn, &table, relation, &change)? {
                continue;
            }
            let batched = match &change {
                Change::Insert { new, .. } => match self.pending_for(txn, &table, relation)? {
                    Some(pending) => Some(pending.insert(new)),
                    None => {
                        self.append(txn, &table, relation, new)?;
                        Some(Ok(()))
                    }
                },
                Change::Update { old, new, .. } => self
                    .pending_for(txn, &table, relation)?
                    .map(|p| p.update(old.as_ref(), new)),
                Change::Delete { old, .. } => self
                    .pending_for(txn, &table, relation)?
                    .map(|p| p.delete(old.tuple())),
                Change::Truncate { .. } => {
                    // What is pending or staged on the table is emptied anyway.
                    self.pending.remove(&table);
                    if let Some(stage) = self.staged.remove(&table) {
                        self.batch += &stage.discard();
                    }
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
        if self.batch.len() + self.append_bytes >= BATCH_BYTES
            || self.pending_bytes() >= PENDING_BYTES
        {
            self.flush(txn)?;
        }
        Ok(())
    }

    /// Past the target, everything later is too (commit order).
    fn satisfied(&self) -> bool {
        self.reached_target
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
        // A rewrite no schema note followed (the columns kept their types).
        let rewritten: Vec<TableName> = self
            .rewritten
            .drain()
            .filter(|t| self.tables.contains_key(t))
            .collect();
        for table in rewritten {
            self.rewritten_inexact(txn, &table, &[])?;
        }
        if self.in_bounds {
            self.applied_txns += 1;
            self.last = Some(txn.clone());
        }
        self.in_bounds = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
