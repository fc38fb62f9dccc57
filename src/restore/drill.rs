//! `tidemark drill`: a restore rehearsal that proves the archive, measured.
//!
//! A temporary slot exports a snapshot at its consistent point C. Once the
//! archive reaches C, the drill restores to exactly C and compares every table
//! with the source read under that snapshot, so the comparison is exact even
//! while the source keeps changing.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::command::{self, Request, RestoreError};
use crate::archive::inventory;
use crate::archive::manifest;
use crate::archive::store::ObjectStore;
use crate::base::exit::ExitCode;
use crate::base::position::EndLsn;
use crate::base::table::{quote_literal, TableName};
use crate::replay::apply::Target;
use crate::replay::progress::Phases;
use crate::source::conn::ReplicationConnection;
use crate::source::setup;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("the source database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] crate::pg::ConnectError),
    #[error("the archive did not reach the drill's point {0} within {1:?}; is capture running?")]
    NotAdvancing(EndLsn, Duration),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("{0}")]
    Output(#[from] std::io::Error),
}

impl DrillError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DrillError::Restore(e) => e.exit_code(),
            DrillError::Source(e) => e.exit_code(),
            DrillError::Archive(e) => e.exit_code(),
            DrillError::Connect(e) => e.exit_code(),
            DrillError::Sql(_) | DrillError::NotAdvancing(..) | DrillError::Output(_) => {
                ExitCode::Failure
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TableCheck {
    pub table: TableName,
    pub source_rows: i64,
    pub restored_rows: i64,
    pub matches: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub pass: bool,
    /// The point restored to and compared at.
    pub lsn: EndLsn,
    pub tables: Vec<TableCheck>,
    /// Restore wall time: the measured recovery time objective.
    pub rto_seconds: f64,
    /// How long the archive took to cover the drill's point: the live recovery point objective.
    pub rpo_seconds: f64,
    /// How far the archive was behind the source when the drill began.
    pub rpo_bytes: u64,
}

const ARCHIVE_WAIT: Duration = Duration::from_secs(300);

/// Count and an order-independent hash of a table's rows.
async fn fingerprint(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<(i64, String), tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), md5(coalesce(string_agg(h, '' ORDER BY h), '')) FROM (SELECT md5(t::text) AS h FROM {} t) s",
                table.quoted()
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

pub async fn run(
    store: &dyn ObjectStore,
    source: &crate::pg::ConnInfo,
    target: &crate::pg::ConnInfo,
    work_dir: &Path,
    out: &mut impl Write,
    phases: &Phases,
) -> Result<Report, DrillError> {
    let started = Instant::now();
    let mut conn = ReplicationConnection::connect(source).await?;
    let slot = format!("tidemark_drill_{}", std::process::id());
    let created =
        setup::create_slot(&mut conn, &slot, setup::SlotKind::TemporaryWithSnapshot).await?;
    let point = created.consistent_point;
    let snapshot = created.snapshot_name.ok_or_else(|| {
        crate::source::SourceError::Protocol("the drill slot exported no snapshot".into())
    })?;

    let client = source.connect().await?;
    // WAL must move past the point for capture's progress to carry the archive there.
    client
        .batch_execute("SELECT pg_logical_emit_message(false, 'tidemark-drill', '')")
        .await?;
    let behind = match manifest::load_latest(store).await? {
        Some((_, m)) => m
            .segments
            .last()
            .map_or(point.as_u64(), |s| point.0.bytes_since(s.end_lsn.0)),
        None => point.as_u64(),
    };
    loop {
        if let Some((_, m)) = manifest::load_latest(store).await? {
            if let Some(first) = m.snapshots.iter().min_by_key(|s| s.lsn) {
                if inventory::chain_end(&m, first.position()).lsn >= point {
                    break;
                }
            }
        }
        if started.elapsed() > ARCHIVE_WAIT {
            return Err(DrillError::NotAdvancing(point, ARCHIVE_WAIT));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rpo = started.elapsed();
    writeln!(
        out,
        "The archive covers the drill's point {point} after {:.2}s; restoring...",
        rpo.as_secs_f64()
    )?;

    let restoring = Instant::now();
    let request = Request::new(Target::Lsn(point), target.clone());
    let summary = command::run(store, &request, work_dir, out, phases).await?;
    let rto = restoring.elapsed();

    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(&snapshot)
        ))
        .await?;
    let restored = target.connect().await?;
    let mut tables = Vec::new();
    for name in &summary.tables {
        let (source_rows, source_hash) = fingerprint(&client, name).await?;
        let (restored_rows, restored_hash) = fingerprint(&restored, name).await?;
        tables.push(TableCheck {
            table: name.clone(),
            source_rows,
            restored_rows,
            matches: source_rows == restored_rows && source_hash == restored_hash,
        });
    }
    client.batch_execute("COMMIT").await?;
    drop(conn);
    Ok(Report {
        pass: tables.iter().all(|t| t.matches),
        lsn: point,
        tables,
        rto_seconds: rto.as_secs_f64(),
        rpo_seconds: rpo.as_secs_f64(),
        rpo_bytes: behind,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.tables {
            let verdict = if t.matches { "matches" } else { "DIFFERS" };
            writeln!(
                f,
                "  {}: {} rows restored, {} at the source: {verdict}",
                t.table, t.restored_rows, t.source_rows
            )?;
        }
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        writeln!(
            f,
            "{verdict}: restored to {} in {:.2}s (RTO); the archive was {} bytes and {:.2}s behind the source (RPO)",
            self.lsn, self.rto_seconds, self.rpo_bytes, self.rpo_seconds
        )
    }
}
