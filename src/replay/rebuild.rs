//! Planning and running a rebuild: the newest snapshot at or before the
//! target, the contiguous segments after it, loaded and applied into a database.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::apply::{Applier, ApplyError, Bounds, Executor, Inexact, Target};
use super::fold::Fold;
use super::load;
use super::pipeline::{CopyFailed, PipelinedExecutor};
use super::progress::{Phases, Unit};
use crate::archive::inventory;
use crate::archive::manifest::{Manifest, SegmentEntry, SnapshotEntry};
use crate::archive::store::ObjectStore;
use crate::archive::ArchiveError;
use crate::base::exit::ExitCode;
use crate::base::position::{EndLsn, Position};
use crate::base::table::{quote_ident, TableName};
use crate::log::committed::Assembler;
use crate::source::schema::SchemaSet;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("nothing is restorable yet: the archive has no base snapshot; let capture run until `tidemark list` shows a window")]
    NoSnapshot,
    #[error("{target} is outside the restore window ({earliest} to {latest}); pick a point inside it (`tidemark list` shows the window)")]
    OutsideWindow {
        target: String,
        earliest: String,
        latest: String,
    },
    #[error("the archive no longer holds segments ({from}, {to}], where a transaction still open at the snapshot began; restore from a later snapshot, or keep more with [retention]")]
    MissingHistory { from: EndLsn, to: EndLsn },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("the target database failed: {0}")]
    Target(#[from] tokio_postgres::Error),
}

impl RebuildError {
    pub fn exit_code(&self) -> ExitCode {
        use RebuildError::*;
        match self {
            NoSnapshot | OutsideWindow { .. } | MissingHistory { .. } => ExitCode::BadInput,
            Archive(e) => e.exit_code(),
            Apply(e) => e.exit_code(),
            Target(_) => ExitCode::Failure,
        }
    }
}

/// What a rebuild reads: one snapshot, the re-reads after it, and the segments after it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub snapshot: SnapshotEntry,
    /// Re-reads after the snapshot and at or before the target, oldest first:
    /// each table loads from the newest that holds it.
    pub rereads: Vec<SnapshotEntry>,
    /// For each table, the first re-read past the target: where a stretch the
    /// stream could not carry ends.
    pub next_rereads: HashMap<TableName, Position>,
    pub segments: Vec<SegmentEntry>,
    pub bounds: Bounds,
    /// The newest point the chain reaches.
    pub chain_end: Position,
}

fn describe(target: Target) -> String {
    match target {
        Target::Lsn(lsn) => format!("LSN {lsn}"),
        Target::Time(time) => format!("time {time}"),
        Target::Latest => "latest".into(),
    }
}

/// The segments a rebuild from `from` to `to` reads: the chain after the
/// snapshot, preceded by the segments where transactions still open at the
/// chain's start began (its first segment's restart point).
pub fn chain_segments(
    manifest: &Manifest,
    from: EndLsn,
    to: EndLsn,
) -> Result<Vec<SegmentEntry>, RebuildError> {
    let all = &manifest.segments;
    let Some(first) = all
        .iter()
        .position(|s| s.end_lsn > from && s.start_lsn < to)
    else {
        return Ok(Vec::new());
    };
    let last = all
        .iter()
        .rposition(|s| s.end_lsn > from && s.start_lsn < to)
        .unwrap_or(first);
    let restart = all[first].restart_lsn;
    let start = all[..first]
        .iter()
        .position(|s| s.start_lsn >= restart)
        .unwrap_or(first);
    let missing = |from: EndLsn, to: EndLsn| RebuildError::MissingHistory { from, to };
    if restart < all[start].start_lsn {
        return Err(missing(restart, all[start].start_lsn));
    }
    for pair in all[start..=first].windows(2) {
        if pair[1].start_lsn != pair[0].end_lsn {
            return Err(missing(pair[0].end_lsn, pair[1].start_lsn));
        }
    }
    Ok(all[start..=last].to_vec())
}

/// The error for a target outside the window; `latest` narrows the window's end.
fn outside_window(manifest: &Manifest, target: Target, latest: Option<Position>) -> RebuildError {
    let Some(window) = inventory::inventory(Some(("", manifest))).window else {
        return RebuildError::NoSnapshot;
    };
    let latest = latest.unwrap_or(window.latest);
    RebuildError::OutsideWindow {
        target: describe(target),
        earliest: format!("{} ({})", window.earliest.commit_time, window.earliest.lsn),
        latest: format!("{} ({})", latest.commit_time, latest.lsn),
    }
}

/// Picks the newest snapshot at or before `target` and the contiguous chain after it.
pub fn plan(manifest: &Manifest, target: Target) -> Result<Plan, RebuildError> {
    let at_or_before = |s: &&SnapshotEntry| match target {
        Target::Lsn(lsn) => s.lsn <= lsn,
        Target::Time(time) => s.time <= time,
        Target::Latest => true,
    };
    let Some(snapshot) = manifest
        .snapshots
        .iter()
        .filter(at_or_before)
        .max_by_key(|s| s.lsn)
    else {
        return Err(outside_window(manifest, target, None));
    };
    let chain_end = inventory::chain_end(manifest, snapshot.position());
    let beyond = match target {
        Target::Lsn(lsn) => lsn > chain_end.lsn,
        Target::Time(time) => time > chain_end.commit_time,
        Target::Latest => false,
    };
    if beyond {
        return Err(outside_window(manifest, target, Some(chain_end)));
    }
    // Past an LSN target nothing is read: a transaction ending at or before
    // it has every record in a segment that starts before it.
    let read_to = match target {
        Target::Lsn(lsn) => lsn.min(chain_end.lsn),
        Target::Time(_) | Target::Latest => chain_end.lsn,
    };
    let segments = chain_segments(manifest, snapshot.lsn, read_to)?;
    let after_base = |r: &&SnapshotEntry| r.lsn > snapshot.lsn && r.lsn <= chain_end.lsn;
    let mut rereads: Vec<SnapshotEntry> = manifest
        .rereads
        .iter()
        .filter(after_base)
        .filter(at_or_before)
        .cloned()
        .collect();
    rereads.sort_by_key(|r| r.lsn);
    let mut next_rereads = HashMap::new();
    let mut later: Vec<&SnapshotEntry> = manifest
        .rereads
        .iter()
        .filter(|r| r.lsn > snapshot.lsn && !at_or_before(r))
        .collect();
    later.sort_by_key(|r| r.lsn);
    for reread in later {
        for table in &reread.tables {
            next_rereads
                .entry(table.table.clone())
                .or_insert_with(|| reread.position());
        }
    }
    Ok(Plan {
        snapshot: snapshot.clone(),
        rereads,
        next_rereads,
        segments,
        bounds: Bounds {
            after: snapshot.lsn,
            until: match target {
                Target::Latest => Target::Lsn(chain_end.lsn),
                other => other,
            },
        },
        chain_end,
    })
}

pub struct Rebuilt {
    pub schema: SchemaSet,
    pub transactions: u64,
    pub changes: u64,
    pub rows_loaded: u64,
    /// Wall time of the snapshot load (tables, rows, primary keys).
    pub load_seconds: f64,
    /// Wall time of replaying the segments (they download during the load).
    pub replay_seconds: f64,
    /// With `allow_inexact`: the tables whose rows may differ from the source's, and since when.
    pub inexact: Vec<Inexact>,
    /// The newest sample of each owned sequence at or before the target.
    pub sequences: crate::source::sequences::Sample,
    /// Tables dropped at the source, or no longer watched, before the target.
    pub left_out: Vec<super::at_target::LeftOut>,
}

/// Which tables a rebuild restores, and whether it creates them.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// `None`: every table in the snapshot.
    pub tables: Option<Vec<TableName>>,
    /// The tables exist already (`--data-only`): load into them as they are.
    pub data_only: bool,
    /// Go on past a schema change the stream cannot carry, and report it, instead of refusing.
    pub allow_inexact: bool,
    /// Fold changes into fresh tables' snapshots (`fold`): faster, for up to
    /// `fold::BUDGET` more memory. Compaction keeps its memory low instead.
    pub fold: bool,
}

impl Plan {
    /// Where each table's rows load from: the newest re-read that holds it, or the snapshot.
    pub fn sources(&self) -> HashMap<&TableName, &SnapshotEntry> {
        let mut sources = HashMap::new();
        for entry in std::iter::once(&self.snapshot).chain(&self.rereads) {
            for object in &entry.tables {
                sources.insert(&object.table, entry);
            }
        }
        sources
    }

    /// For each table loaded from a re-read, the re-read's point: the
    /// transactions before it are in the re-read already.
    fn reread_points(&self) -> HashMap<TableName, EndLsn> {
        self.sources()
            .into_iter()
            .filter(|(_, entry)| entry.lsn != self.snapshot.lsn)
            .map(|(table, entry)| (table.clone(), entry.lsn))
            .collect()
    }
}

/// The plan's schema, verified: the snapshot's, with each table a re-read
/// holds as that re-read found it.
pub async fn plan_schema(store: &dyn ObjectStore, plan: &Plan) -> Result<SchemaSet, RebuildError> {
    let mut schema = snapshot_schema(store, &plan.snapshot).await?;
    for reread in &plan.rereads {
        let read = snapshot_schema(store, reread).await?;
        for table in read.tables {
            match schema
                .tables
                .iter_mut()
                .find(|t| t.table_name() == table.table_name())
            {
                Some(known) => *known = table,
                None => schema.tables.push(table),
            }
        }
        for found in read.enums {
            if !schema
                .enums
                .iter()
                .any(|e| e.schema == found.schema && e.name == found.name)
            {
                schema.enums.push(found);
            }
        }
    }
    Ok(schema)
}

/// A snapshot's schema, verified.
pub async fn snapshot_schema(
    store: &dyn ObjectStore,
    snapshot: &SnapshotEntry,
) -> Result<SchemaSet, RebuildError> {
    let body = load::fetch_verified(
        store,
        &snapshot.schema.key,
        snapshot.schema.size,
        &snapshot.schema.sha256,
    )
    .await?;
    Ok(
        serde_json::from_slice(&body).map_err(|e| ArchiveError::Corrupt {
            key: snapshot.schema.key.clone(),
            problem: e.to_string(),
        })?,
    )
}

/// Loads the plan's snapshot into the (empty) database `clients` reach and
/// applies the segments. The first client applies; all of them load.
pub async fn rebuild(
    store: &dyn ObjectStore,
    plan: &Plan,
    clients: &[Arc<tokio_postgres::Client>],
    work_dir: &Path,
) -> Result<Rebuilt, RebuildError> {
    rebuild_scoped(
        store,
        plan,
        clients,
        work_dir,
        &Scope::default(),
        &Phases::hidden(),
    )
    .await
}

/// Like `rebuild`, for some tables, into new or existing tables.
pub async fn rebuild_scoped(
    store: &dyn ObjectStore,
    plan: &Plan,
    clients: &[Arc<tokio_postgres::Client>],
    work_dir: &Path,
    scope: &Scope,
    phases: &Phases,
) -> Result<Rebuilt, RebuildError> {
    let client = clients[0].clone();
    let full = plan_schema(store, plan).await?;
    let schema = match &scope.tables {
        Some(tables) => full.only(tables),
        None => full,
    };
    if !scope.data_only {
        load::create_tables(&client, &schema).await?;
    }
    let loading = std::time::Instant::now();
    let objects: Vec<_> = plan
        .sources()
        .into_iter()
        .filter(|(table, _)| schema.table(table).is_some())
        .filter_map(|(table, entry)| entry.tables.iter().find(|o| &o.table == table))
        .collect();
    // A table this rebuild creates loads once its changes are folded into
    // its snapshot, when its key allows (`fold`); the others load now, while
    // the segments download. A fold that outgrows its budget loads then.
    let mut folds = HashMap::new();
    let (held, objects): (Vec<_>, Vec<_>) = objects.into_iter().partition(|object| {
        let fold = schema
            .table(&object.table)
            .filter(|_| scope.fold && !scope.data_only)
            .and_then(|table| Fold::new(object, table, work_dir));
        fold.map(|fold| folds.insert(object.table.clone(), fold))
            .is_some()
    });
    let bar = phases.bar(
        "snapshot load",
        objects.iter().map(|o| o.raw_size).sum(),
        Unit::Bytes,
    );
    // The segments download while the snapshot loads: one waits on the
    // store, the other on the target.
    let (rows_loaded, segments, held) = tokio::join!(
        async {
            let rows = load::load_tables(clients, store, objects, work_dir, &bar).await;
            bar.finish();
            rows
        },
        fetch(store, plan, work_dir, phases),
        load::fetch_tables(store, held, work_dir),
    );
    let (rows_loaded, segments, held) = (rows_loaded?, segments?, held?);
    let load_seconds = loading.elapsed().as_secs_f64();
    let replaying = std::time::Instant::now();
    let executor =
        PipelinedExecutor::start(client, tokio::runtime::Handle::current()).with_held(held.clone());
    let mut replayed = apply(
        plan,
        &schema,
        segments,
        executor,
        folds,
        phases,
        scope.allow_inexact,
    )
    .await?;
    let folded = std::mem::take(&mut replayed.folds);
    let rows_folded = load_folded(clients, &held, folded).await?;
    let mut schema = schema;
    let settle_sql = replayed.at_target.settle(&mut schema);
    // Built once over the final rows: replay's merges join the table whole,
    // and a key index kept through them would cost more than it saves.
    if !scope.data_only {
        for sql in settle_sql {
            clients[0].batch_execute(&sql).await?;
        }
        load::add_primary_keys(&clients[0], &schema).await?;
    }
    Ok(Rebuilt {
        schema,
        transactions: replayed.transactions,
        changes: replayed.changes,
        rows_loaded: rows_loaded + replayed.rows_loaded + rows_folded,
        load_seconds,
        replay_seconds: replaying.elapsed().as_secs_f64(),
        inexact: replayed.inexact,
        sequences: replayed.sequences,
        left_out: replayed.at_target.left_out.clone(),
    })
}

/// Counts the transactions and changes a restore of `tables` would apply,
/// by replaying the plan's segments into nothing.
pub async fn count(
    store: &dyn ObjectStore,
    plan: &Plan,
    tables: &[TableName],
    work_dir: &Path,
    allow_inexact: bool,
) -> Result<Replayed, RebuildError> {
    let schema = plan_schema(store, plan).await?.only(tables);
    let segments = fetch(store, plan, work_dir, &Phases::hidden()).await?;
    apply(
        plan,
        &schema,
        segments,
        Discard,
        HashMap::new(),
        &Phases::hidden(),
        allow_inexact,
    )
    .await
}

/// What a replay applied (or, counting, would apply).
pub struct Replayed {
    pub transactions: u64,
    pub changes: u64,
    pub inexact: Vec<Inexact>,
    pub sequences: crate::source::sequences::Sample,
    pub at_target: super::at_target::TablesAtTarget,
    /// Snapshot rows replay loaded itself (of folds it gave up).
    pub rows_loaded: u64,
    /// Tables whose changes all folded: loaded after replay.
    pub folds: HashMap<TableName, Fold>,
}

/// Loads each folded table, one worker per client, largest first: its
/// snapshot without the keys its changes touched, and, on its own
/// connection when there is one free, those keys' final rows. Returns the
/// snapshot rows read.
async fn load_folded(
    clients: &[Arc<tokio_postgres::Client>],
    held: &load::HeldTables,
    folds: HashMap<TableName, Fold>,
) -> Result<u64, RebuildError> {
    enum Part {
        Snapshot(Box<(load::HeldTable, Option<super::fold::SnapshotFilter>)>),
        Rows(TableName, String, super::fold::FinalRows),
    }
    let mut queue = Vec::new();
    for (table, fold) in folds {
        let Some(snapshot) = load::take_held(held, &table) else {
            continue;
        };
        let columns: Vec<String> = fold.columns().iter().map(|c| quote_ident(c)).collect();
        let copy = format!(
            "COPY {} ({}) FROM STDIN",
            table.quoted(),
            columns.join(", ")
        );
        // With no key touched, the snapshot's bytes go through unread.
        let touched = !fold.is_empty();
        let (filter, rows) = fold.into_parts();
        let filter = touched.then_some(filter);
        let size = snapshot.object.raw_size;
        queue.push((size, Part::Snapshot(Box::new((snapshot, filter)))));
        for rows in rows {
            queue.push((rows.size(), Part::Rows(table.clone(), copy.clone(), rows)));
        }
    }
    load::largest_first(
        clients,
        queue,
        |(size, _)| *size,
        |client, (_, part)| async move {
            match part {
                Part::Snapshot(part) => {
                    let (snapshot, filter) = *part;
                    let hidden = indicatif::ProgressBar::hidden();
                    Ok(load::copy_table(&client, &snapshot, filter, &hidden).await?)
                }
                Part::Rows(table, copy, rows) => {
                    copy_final_rows(&client, &table, &copy, rows).await?;
                    Ok::<u64, RebuildError>(0)
                }
            }
        },
    )
    .await
}

/// Streams a fold's final rows into its table, read from memory and spill
/// files on a blocking thread while the target takes the previous chunk.
async fn copy_final_rows(
    client: &tokio_postgres::Client,
    table: &TableName,
    copy: &str,
    mut rows: super::fold::FinalRows,
) -> Result<(), RebuildError> {
    let read = move |send: &dyn Fn(bytes::Bytes) -> bool| {
        while let Some(chunk) = rows.next_chunk()? {
            if !send(chunk) {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let hidden = indicatif::ProgressBar::hidden();
    match super::pipeline::copy_produced(client, copy, &hidden, read).await {
        Ok(_) => Ok(()),
        Err(CopyFailed::Produce(e)) => Err(ApplyError::spill(table, e).into()),
        Err(CopyFailed::Target(e)) => Err(RebuildError::Target(e)),
    }
}

/// Runs the applier's SQL nowhere, for counting.
struct Discard;

impl Executor for Discard {
    fn execute(&mut self, _sql: &str) -> Result<(), String> {
        Ok(())
    }

    fn copy_in(&mut self, _sql: &str, _data: bytes::Bytes) -> Result<(), String> {
        Ok(())
    }

    fn format_type(&mut self, _oid: u32, _typmod: i32) -> Result<String, String> {
        Ok("text".into())
    }

    fn sync(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn load(&mut self, _table: &TableName) -> Result<u64, String> {
        Ok(0)
    }
}

/// Fetches the plan's segments into a temporary local log under `work_dir`.
async fn fetch(
    store: &dyn ObjectStore,
    plan: &Plan,
    work_dir: &Path,
    phases: &Phases,
) -> Result<tempfile::TempDir, RebuildError> {
    let segment_dir = tempfile::tempdir_in(work_dir).map_err(|source| {
        ArchiveError::from(crate::log::LogError::Dir {
            path: work_dir.to_path_buf(),
            source,
        })
    })?;
    let bar = phases.bar(
        "segment fetch",
        plan.segments.iter().map(|s| s.size).sum(),
        Unit::Bytes,
    );
    load::fetch_segments(store, &plan.segments, segment_dir.path(), &bar).await?;
    bar.finish();
    Ok(segment_dir)
}

/// Applies the in-bounds transactions of the fetched segments on `schema`'s
/// tables through `executor`.
async fn apply<E: Executor + Send + 'static>(
    plan: &Plan,
    schema: &SchemaSet,
    segment_dir: tempfile::TempDir,
    executor: E,
    folds: HashMap<TableName, Fold>,
    phases: &Phases,
    allow_inexact: bool,
) -> Result<Replayed, RebuildError> {
    let tables: HashMap<TableName, Vec<(String, u32)>> = schema
        .tables
        .iter()
        .map(|t| {
            let columns = t
                .columns
                .iter()
                .filter(|c| c.generated.is_none())
                .map(|c| (c.name.clone(), c.type_oid))
                .collect();
            (t.table_name(), columns)
        })
        .collect();
    let type_names: HashMap<u32, String> = schema
        .tables
        .iter()
        .flat_map(|t| t.columns.iter().map(|c| (c.type_oid, c.type_sql.clone())))
        .filter(|(oid, _)| *oid >= 16384)
        .collect();
    let bounds = plan.bounds;
    // Only a table this rebuild loads from its re-read is held by it.
    let mut rereads = plan.reread_points();
    rereads.retain(|table, _| tables.contains_key(table));
    let next_rereads = plan.next_rereads.clone();
    let end = plan.target_lsn().unwrap_or(plan.chain_end.lsn);
    let bar = phases.bar(
        "change replay",
        end.0.bytes_since(bounds.after.0),
        Unit::Bytes,
    );
    let dir = segment_dir.path().to_path_buf();
    let applied = tokio::task::spawn_blocking(move || -> Result<Replayed, ApplyError> {
        let mut applier = Applier::new(executor, bounds, tables, type_names)
            .with_rereads(rereads, next_rereads)
            .with_folds(folds, super::fold::BUDGET)
            .with_progress(bar.clone())
            .allow_inexact(allow_inexact);
        let applied = Assembler::run(&dir, &mut applier).and_then(|()| applier.finish());
        if let Err(error) = applied {
            applier.abandon();
            return Err(error);
        }
        bar.finish();
        Ok(Replayed {
            transactions: applier.applied_txns,
            changes: applier.applied_changes,
            inexact: std::mem::take(&mut applier.inexact),
            sequences: std::mem::take(&mut applier.sequences),
            at_target: std::mem::take(&mut applier.at_target),
            rows_loaded: applier.rows_loaded,
            folds: applier.take_folds(),
        })
    })
    .await
    .expect("applying segments")?;
    Ok(applied)
}

impl Plan {
    /// The LSN the rebuilt state corresponds to, when the target is an LSN.
    pub fn target_lsn(&self) -> Option<EndLsn> {
        match self.bounds.until {
            Target::Lsn(lsn) => Some(lsn),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::test_entries::{segment, snapshot};
    use crate::base::position::PgTimestamp;
    use crate::base::position::{EndLsn, Lsn};

    fn manifest() -> Manifest {
        crate::archive::manifest::test_entries::manifest(
            vec![snapshot(100, 10), snapshot(300, 30)],
            vec![
                segment(50, 200, 20),
                segment(200, 400, 40),
                segment(400, 500, 50),
            ],
        )
    }

    /// Where each segment of a plan starts.
    fn starts(plan: &Plan) -> Vec<u64> {
        plan.segments.iter().map(|s| s.start_lsn.as_u64()).collect()
    }

    #[test]
    fn picks_the_newest_snapshot_at_or_before_the_target() {
        let m = manifest();
        let p = plan(&m, Target::Time(PgTimestamp(25))).unwrap();
        assert_eq!(p.snapshot.lsn, EndLsn(Lsn(100)));
        assert_eq!(p.segments.len(), 3);
        let p = plan(&m, Target::Lsn(EndLsn(Lsn(450)))).unwrap();
        assert_eq!(p.snapshot.lsn, EndLsn(Lsn(300)));
        assert_eq!(starts(&p), vec![200, 400]);
        let p = plan(&m, Target::Latest).unwrap();
        assert_eq!(p.bounds.until, Target::Lsn(EndLsn(Lsn(500))));
        // Nothing past an LSN target is read: the segment starting at it holds no transaction ending by it.
        let p = plan(&m, Target::Lsn(EndLsn(Lsn(400)))).unwrap();
        assert_eq!(starts(&p), vec![200]);
        let p = plan(&m, Target::Lsn(EndLsn(Lsn(150)))).unwrap();
        assert_eq!(starts(&p), vec![50]);
    }

    #[test]
    fn a_chain_reads_back_to_where_its_open_transactions_began() {
        let mut m = manifest();
        m.segments[2].restart_lsn = EndLsn(Lsn(200));
        let p = plan(&m, Target::Lsn(EndLsn(Lsn(450)))).unwrap();
        assert_eq!(p.snapshot.lsn, EndLsn(Lsn(300)));
        assert_eq!(starts(&p), vec![200, 400]);
        m.segments[1].restart_lsn = EndLsn(Lsn(50));
        let p = plan(&m, Target::Lsn(EndLsn(Lsn(450)))).unwrap();
        assert_eq!(starts(&p), vec![50, 200, 400]);
        m.segments.remove(0);
        assert!(matches!(
            plan(&m, Target::Lsn(EndLsn(Lsn(450)))),
            Err(RebuildError::MissingHistory { .. })
        ));
    }

    #[test]
    fn targets_outside_the_window_name_it() {
        let m = manifest();
        let before = plan(&m, Target::Time(PgTimestamp(5)))
            .unwrap_err()
            .to_string();
        assert!(before.contains("outside the restore window"), "{before}");
        assert!(plan(&m, Target::Lsn(EndLsn(Lsn(501)))).is_err());
        let mut empty = m.clone();
        empty.snapshots.clear();
        assert!(matches!(
            plan(&empty, Target::Latest),
            Err(RebuildError::NoSnapshot)
        ));
    }
}
