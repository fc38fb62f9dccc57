//! `tidemark restore`: a target point, checks on the target database, the
//! rebuild, then the schema objects best built after the data.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::replace::{self, SafetyCopy};
use crate::archive::manifest::{self, Manifest};
use crate::archive::store::ObjectStore;
use crate::base::exit::ExitCode;
use crate::base::position::{EndLsn, PgTimestamp};
use crate::base::table::TableName;
use crate::pg::{ConnInfo, ConnectError};
use crate::replay::apply::ApplyError;
use crate::replay::apply::Target;
use crate::replay::load;
use crate::replay::progress::{Phases, Unit};
use crate::replay::rebuild::{self, Plan, RebuildError, Scope};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("--to {0:?} is not a restore point; give an RFC 3339 time with a zone (2026-11-21T10:15:00Z), a time as PostgreSQL prints it (2026-11-21 10:15:00+00), an LSN (0/3A2F1C8) or latest")]
    BadTarget(String),
    #[error("the archive is empty: capture has not uploaded anything yet")]
    EmptyArchive,
    #[error("table {table} is not in the archive; it holds {archived}")]
    UnknownTable { table: String, archived: String },
    #[error("the target database is the source ({database} on system {system}); restoring into it would overwrite live data. Restore into another database, or add --force --i-know-this-is-the-source")]
    TargetIsSource { database: String, system: String },
    #[error("table {table} already exists in the target; restore into an empty database, or add --data-only to load into the existing tables")]
    TableExists { table: String },
    #[error("table {table} does not exist in the target, which --data-only needs; drop --data-only to create it")]
    TableMissing { table: String },
    #[error(
        "table {table} in the target already holds rows; empty it, or add --force to replace them"
    )]
    TableNotEmpty { table: String },
    #[error("--where with --data-only rebuilds the tables in a scratch database first, and the target server refused to create it ({0}); grant CREATEDB, or restore into an empty database and copy the rows across")]
    NoScratchDatabase(String),
    #[error("--where {predicate:?} does not apply to table {table}: {message}; write one boolean expression over the columns of the restored tables, e.g. tenant_id = 42")]
    BadPredicate {
        predicate: String,
        table: String,
        message: String,
    },
    #[error("--target is required: the database to restore into, e.g. postgres://user@host/recovered (the password in PGPASSWORD or ~/.pgpass)")]
    NoTarget,
    #[error("cannot connect to the target database: {0}; check --target")]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("the target database failed: {0}")]
    Target(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Output(#[from] std::io::Error),
}

impl RestoreError {
    pub fn exit_code(&self) -> ExitCode {
        use RestoreError::*;
        match self {
            BadTarget(_) | EmptyArchive | UnknownTable { .. } | TargetIsSource { .. } => {
                ExitCode::BadInput
            }
            TableExists { .. } | TableMissing { .. } | TableNotEmpty { .. } => ExitCode::BadInput,
            NoScratchDatabase(_) | BadPredicate { .. } | Connect(_) | NoTarget => {
                ExitCode::BadInput
            }
            Rebuild(e) => e.exit_code(),
            Archive(e) => e.exit_code(),
            Target(_) | Output(_) => ExitCode::Failure,
        }
    }
}

impl RestoreError {
    /// Whether the person running restore must change something (exit 2).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            RestoreError::Archive(_)
                | RestoreError::Target(_)
                | RestoreError::Output(_)
                | RestoreError::Rebuild(
                    RebuildError::Archive(_) | RebuildError::Apply(_) | RebuildError::Target(_)
                )
        )
    }
}

/// Parses `--to`: RFC 3339, PostgreSQL's printed form, an LSN, or `latest`.
pub fn parse_target(text: &str) -> Result<Target, RestoreError> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("latest") {
        return Ok(Target::Latest);
    }
    if let Ok(lsn) = text.parse::<EndLsn>() {
        return Ok(Target::Lsn(lsn));
    }
    if let Ok(time) = text.parse::<PgTimestamp>() {
        return Ok(Target::Time(time));
    }
    // PostgreSQL prints `2026-11-21 10:15:00.123+00` (zone hours, maybe minutes).
    let mut normalized = text.replacen(' ', "T", 1);
    if let Some(sign) = normalized.rfind(['+', '-']).filter(|&i| i > 10) {
        if normalized.len() - sign == 3 {
            normalized.push_str(":00");
        }
    }
    normalized
        .parse::<PgTimestamp>()
        .map(Target::Time)
        .map_err(|_| RestoreError::BadTarget(text.to_string()))
}

pub struct Request {
    pub to: Target,
    /// Keep only rows satisfying this SQL predicate (e.g. one tenant's).
    pub predicate: Option<String>,
    /// Where to restore; only a dry run may go without.
    pub target: Option<ConnInfo>,
    pub tables: Vec<TableName>,
    pub dry_run: bool,
    pub data_only: bool,
    pub force: bool,
    pub into_source: bool,
    /// Connections loading snapshot tables at once.
    pub jobs: usize,
    /// Restore past schema changes the stream cannot carry, and name the tables that may differ.
    pub allow_inexact: bool,
}

impl Request {
    /// Everything restored to `to` into `target`, with the defaults.
    pub fn new(to: Target, target: ConnInfo) -> Request {
        Request {
            to,
            predicate: None,
            target: Some(target),
            tables: Vec::new(),
            dry_run: false,
            data_only: false,
            force: false,
            into_source: false,
            jobs: load::default_jobs(),
            allow_inexact: false,
        }
    }
}

/// What a restore will do (`--dry-run`) or did.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub snapshot_lsn: EndLsn,
    pub snapshot_time: PgTimestamp,
    pub tables: Vec<TableName>,
    pub objects: usize,
    pub bytes: u64,
    pub segments: usize,
    /// Records in the segments: an upper bound on the changes to apply.
    pub segment_records: u64,
    /// Uncompressed bytes of the snapshot tables to load.
    pub snapshot_bytes: u64,
    pub rows_loaded: u64,
    /// Transactions and changes applied (with --dry-run: that would be).
    pub transactions: u64,
    pub changes: u64,
    /// With --dry-run: the expected wall time, from reference rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_seconds: Option<f64>,
    /// Snapshot load (segments download meanwhile), and replay.
    pub load_seconds: f64,
    pub replay_seconds: f64,
    pub seconds: f64,
    /// With --allow-inexact: tables whose rows may differ from the source's, and since when.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inexact: Vec<crate::replay::apply::Inexact>,
    /// Into live tables: where the rows it replaced were saved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub safety_copies: Vec<SafetyCopy>,
    /// Tables dropped at the source, or no longer watched, before the target: not restored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<crate::replay::at_target::LeftOut>,
}

impl Summary {
    /// Takes in what a rebuild did, and the wall time since `started`.
    fn record(&mut self, rebuilt: &rebuild::Rebuilt, started: std::time::Instant) {
        self.rows_loaded = rebuilt.rows_loaded;
        self.transactions = rebuilt.transactions;
        self.changes = rebuilt.changes;
        self.load_seconds = rebuilt.load_seconds;
        self.replay_seconds = rebuilt.replay_seconds;
        self.seconds = started.elapsed().as_secs_f64();
        self.inexact = rebuilt.inexact.clone();
        self.left_out = rebuilt.left_out.clone();
        self.tables
            .retain(|t| !self.left_out.iter().any(|l| &l.table == t));
    }
}

/// Rates a restore reaches on a 2-core machine with a local target, measured
/// by `tidemark bench`; they make --dry-run's estimate.
const REFERENCE_LOAD_BYTES_PER_S: f64 = 150e6;
const REFERENCE_CHANGES_PER_S: f64 = 120e3;

fn summarize(plan: &Plan, tables: &[TableName]) -> Summary {
    let objects: Vec<&manifest::TableObject> = plan
        .sources()
        .into_iter()
        .filter(|(table, _)| tables.contains(table))
        .filter_map(|(table, entry)| entry.tables.iter().find(|o| &o.table == table))
        .collect();
    Summary {
        snapshot_lsn: plan.snapshot.lsn,
        snapshot_time: plan.snapshot.time,
        tables: tables.to_vec(),
        objects: 1 + plan.rereads.len() + objects.len() + plan.segments.len(),
        bytes: plan.snapshot.schema.size
            + plan.rereads.iter().map(|r| r.schema.size).sum::<u64>()
            + objects.iter().map(|o| o.size).sum::<u64>()
            + plan.segments.iter().map(|s| s.size).sum::<u64>(),
        segments: plan.segments.len(),
        segment_records: plan.segments.iter().map(|s| s.records).sum(),
        snapshot_bytes: objects.iter().map(|o| o.raw_size).sum(),
        estimated_seconds: None,
        load_seconds: 0.0,
        replay_seconds: 0.0,
        rows_loaded: 0,
        transactions: 0,
        changes: 0,
        seconds: 0.0,
        safety_copies: Vec::new(),
        inexact: Vec::new(),
        left_out: Vec::new(),
    }
}

pub async fn run(
    store: &dyn ObjectStore,
    request: &Request,
    work_dir: &Path,
    out: &mut impl Write,
    phases: &Phases,
) -> Result<Summary, RestoreError> {
    let started = std::time::Instant::now();
    let (_, manifest) = manifest::load_latest(store)
        .await?
        .ok_or(RestoreError::EmptyArchive)?;
    let plan = rebuild::plan(&manifest, request.to)?;
    let schema = rebuild::plan_schema(store, &plan).await?;
    let archived: Vec<TableName> = schema.tables.iter().map(|t| t.table_name()).collect();
    for table in &request.tables {
        if !archived.contains(table) {
            return Err(RestoreError::UnknownTable {
                table: table.to_string(),
                archived: archived
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let tables = if request.tables.is_empty() {
        archived
    } else {
        request.tables.clone()
    };
    let mut summary = summarize(&plan, &tables);
    if request.dry_run {
        let counted =
            rebuild::count(store, &plan, &tables, work_dir, request.allow_inexact).await?;
        summary.transactions = counted.transactions;
        summary.changes = counted.changes;
        summary.inexact = counted.inexact;
        summary.estimated_seconds = Some(
            summary.snapshot_bytes as f64 / REFERENCE_LOAD_BYTES_PER_S
                + counted.changes as f64 / REFERENCE_CHANGES_PER_S,
        );
        return Ok(summary);
    }

    let target = request.target.as_ref().ok_or(RestoreError::NoTarget)?;
    let clients = load::connect_all(target, request.jobs).await?;
    let client = clients[0].clone();
    check_target(&client, &manifest, &tables, request).await?;
    if let Some(predicate) = &request.predicate {
        replace::check_predicate(&client, &schema, &tables, predicate, request.data_only).await?;
    }

    writeln!(
        out,
        "Restoring {} tables from the snapshot at {} ({})...",
        tables.len(),
        plan.snapshot.lsn,
        plan.snapshot.time
    )?;
    if request.data_only {
        let predicate = request.predicate.as_deref().unwrap_or("true");
        let (rebuilt, copies) = replace::replace_rows(
            store, &plan, &schema, &tables, predicate, request, &client, work_dir, phases, out,
        )
        .await?;
        summary.record(&rebuilt, started);
        summary.safety_copies = copies;
        return Ok(summary);
    }
    let scope = Scope {
        tables: Some(tables.clone()),
        data_only: request.data_only,
        allow_inexact: request.allow_inexact,
        fold: true,
    };
    let rebuilt =
        match rebuild::rebuild_scoped(store, &plan, &clients, work_dir, &scope, phases).await {
            Ok(rebuilt) => rebuilt,
            // Refused: the tables this restore made hold rows that may be wrong; none stay.
            Err(RebuildError::Apply(ApplyError::Inexact(refusal))) => {
                for table in tables.iter().chain(&refusal.renamed_to) {
                    client
                        .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", table.quoted()))
                        .await?;
                }
                return Err(RebuildError::Apply(ApplyError::Inexact(refusal)).into());
            }
            Err(e) => return Err(e.into()),
        };
    writeln!(
        out,
        "Replayed {} transactions ({} changes); building indexes and constraints...",
        rebuilt.transactions, rebuilt.changes
    )?;
    // A row's membership depends only on its own columns, so the rows that
    // satisfy the predicate at the target are exactly the full state filtered.
    // The tables as they were at the target: renamed, dropped, and with the keys,
    // constraints and indexes they had then.
    let restored = rebuilt.schema.clone();
    if let Some(predicate) = &request.predicate {
        for table in restored.tables.iter().map(|t| t.table_name()) {
            let sql = format!(
                "DELETE FROM {} WHERE ({predicate}) IS NOT TRUE",
                table.quoted()
            );
            client
                .execute(&sql, &[])
                .await
                .map_err(|e| replace::bad_predicate(predicate, &table, &e))?;
        }
    }
    let mut finishing = restored.sequence_values_sql(&rebuilt.sequences);
    if !request.data_only {
        finishing.splice(0..0, restored.post_data_sql());
    }
    let bar = phases.bar("indexes & rules", finishing.len() as u64, Unit::Steps);
    for sql in finishing {
        client.batch_execute(&sql).await?;
        bar.inc(1);
    }
    bar.finish();
    summary.record(&rebuilt, started);
    for inexact in &summary.inexact {
        writeln!(out, "Not exact (--allow-inexact): {inexact}")?;
    }
    for left in &summary.left_out {
        writeln!(out, "Not restored: {left}")?;
    }
    Ok(summary)
}

async fn check_target(
    client: &tokio_postgres::Client,
    manifest: &Manifest,
    tables: &[TableName],
    request: &Request,
) -> Result<(), RestoreError> {
    let row = client
        .query_one(
            "SELECT system_identifier::text, current_database()::text FROM pg_control_system()",
            &[],
        )
        .await?;
    let (system, database): (String, String) = (row.get(0), row.get(1));
    if system == manifest.source.system_identifier
        && database == manifest.source.database
        && !(request.force && request.into_source)
    {
        return Err(RestoreError::TargetIsSource { database, system });
    }
    for table in tables {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
            .await?
            .get(0);
        match (exists, request.data_only) {
            (true, false) => {
                return Err(RestoreError::TableExists {
                    table: table.to_string(),
                })
            }
            (false, true) => {
                return Err(RestoreError::TableMissing {
                    table: table.to_string(),
                })
            }
            (true, true) => {
                let has_rows: bool = client
                    .query_one(
                        &format!("SELECT EXISTS (SELECT 1 FROM {})", table.quoted()),
                        &[],
                    )
                    .await?
                    .get(0);
                if has_rows && !request.force {
                    return Err(RestoreError::TableNotEmpty {
                        table: table.to_string(),
                    });
                }
            }
            (false, false) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_in_every_accepted_form() {
        assert_eq!(parse_target("latest").unwrap(), Target::Latest);
        assert_eq!(
            parse_target("0/3A2F1C8").unwrap(),
            Target::Lsn(EndLsn(crate::base::position::Lsn(0x3A2F1C8)))
        );
        let rfc = parse_target("2026-11-21T10:15:00Z").unwrap();
        assert_eq!(parse_target("2026-11-21 10:15:00+00").unwrap(), rfc);
        assert_eq!(parse_target("2026-11-21 11:15:00+01").unwrap(), rfc);
        assert_eq!(parse_target("2026-11-21 15:45:00+05:30").unwrap(), rfc);
        assert!(matches!(
            parse_target("2026-11-21 10:15:00.5+00").unwrap(),
            Target::Time(_)
        ));
        for bad in ["yesterday", "2026-11-21 10:15:00", "0/XYZ", ""] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
