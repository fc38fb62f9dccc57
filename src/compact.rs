//! Compaction: a new base snapshot at X from the newest snapshot plus the
//! archived segments up to X, without reading the source database.
//!
//! The merge runs in a throwaway PostgreSQL cluster: the snapshot is loaded,
//! the committed transactions after it are applied in commit order, keyed by
//! replica identity (rows without a key as a multiset), and each table is
//! copied out again. PostgreSQL does the external sort and merge, so memory
//! stays bounded for tables larger than RAM. Every type keeps its exact
//! representation, an unchanged TOAST value keeps the last full value, and
//! columns added or dropped mid-stream follow the source's Relation messages.
//! X is the end of the contiguous segment chain, so the result is exactly the
//! source's state after the last transaction finishing at or before X.

use std::path::Path;
use std::sync::Arc;

use crate::archive::manifest::{self, Manifest, ObjectRef, SnapshotEntry};
use crate::archive::snapshot;
use crate::archive::store::ObjectStore;
use crate::archive::ArchiveError;
use crate::base::exit::ExitCode;
use crate::log::audit::{AuditLog, Outcome};
use crate::replay::apply::{ApplyError, Target};
use crate::replay::rebuild::{self, RebuildError};
use crate::replay::scratch::ScratchServer;
use crate::source::schema;

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("compaction needs a scratch PostgreSQL: {0}")]
    ScratchCluster(#[from] crate::replay::scratch::ScratchError),
    #[error("compaction's scratch database failed: {0}")]
    ScratchSql(#[from] tokio_postgres::Error),
    #[error("cannot connect to compaction's scratch database: {0}")]
    ScratchConnect(#[from] crate::pg::ConnectError),
    #[error(transparent)]
    Rebuild(#[from] crate::replay::rebuild::RebuildError),
}

impl CompactError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CompactError::Archive(e) => e.exit_code(),
            CompactError::ScratchCluster(e) => e.exit_code(),
            CompactError::Rebuild(e) => e.exit_code(),
            CompactError::ScratchSql(_) | CompactError::ScratchConnect(_) => ExitCode::Failure,
        }
    }
}

pub struct Compacted {
    pub snapshot: SnapshotEntry,
    pub transactions: u64,
    pub changes: u64,
}

impl Compacted {
    /// What the audit log says of it.
    pub fn audit_details(&self, took: std::time::Duration) -> serde_json::Value {
        serde_json::json!({
            "lsn": self.snapshot.lsn,
            "time": self.snapshot.time,
            "transactions": self.transactions,
            "changes": self.changes,
            "bytes": self.snapshot.tables.iter().map(|t| t.size).sum::<u64>(),
            "seconds": took.as_secs_f64(),
        })
    }
}

/// Builds a snapshot at the end of the chain after the newest snapshot; `None` if there is nothing new.
pub async fn compact(
    store: Arc<dyn ObjectStore>,
    manifest: &Manifest,
    work_dir: &Path,
) -> Result<Option<Compacted>, CompactError> {
    if manifest.snapshots.is_empty() {
        return Ok(None);
    }
    let plan = rebuild::plan(manifest, Target::Latest)?;
    let end = plan.chain_end;
    if end.lsn <= plan.snapshot.lsn {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    tracing::info!(from = %plan.snapshot.lsn, to = %end.lsn, segments = plan.segments.len(), "compacting");

    let scratch = tokio::task::spawn_blocking(|| ScratchServer::start(&[]))
        .await
        .expect("starting the scratch cluster")?;
    let clients = crate::replay::load::connect_all(
        &scratch.conn_info("postgres")?,
        crate::replay::load::default_jobs(),
    )
    .await?;
    let client = clients[0].clone();
    let rebuilt = rebuild::rebuild(&*store, &plan, &clients, work_dir).await?;

    // The schema as it now is: columns from the scratch tables, the rest as the base had it.
    let names: Vec<_> = rebuilt
        .schema
        .tables
        .iter()
        .map(|t| t.table_name())
        .collect();
    let current = schema::read(&client, &names).await?;
    let mut new_schema = rebuilt.schema.clone();
    for (table, now) in new_schema.tables.iter_mut().zip(current.tables) {
        table.columns = now.columns;
    }
    let schema_body =
        bytes::Bytes::from(serde_json::to_vec_pretty(&new_schema).expect("schemas serialize"));
    let schema_key = snapshot::schema_key(end.lsn);
    let schema_ref = ObjectRef {
        key: schema_key.clone(),
        size: schema_body.len() as u64,
        sha256: manifest::sha256_hex(&schema_body),
    };
    store
        .put(&schema_key, schema_body, &Default::default())
        .await
        .map_err(ArchiveError::from)?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let mut objects = Vec::new();
    for table in &new_schema.tables {
        let key = snapshot::table_key(end.lsn, &table.table_name());
        let object = snapshot::copy_table(&client, table, &key, &*store, work_dir)
            .await
            .map_err(|e| match e {
                snapshot::CopyError::Sql(e) => CompactError::ScratchSql(e),
                snapshot::CopyError::Archive(e) => CompactError::Archive(e),
            })?;
        objects.push(object);
    }
    client.batch_execute("COMMIT").await?;
    drop(client);
    drop(scratch);
    let snapshot = SnapshotEntry {
        lsn: end.lsn,
        time: end.commit_time,
        method: "compaction".into(),
        schema: schema_ref,
        tables: objects,
    };
    tracing::info!(
        lsn = %end.lsn,
        transactions = rebuilt.transactions,
        changes = rebuilt.changes,
        seconds = started.elapsed().as_secs_f64(),
        "compaction stored a new base snapshot"
    );
    metrics::histogram!(crate::telemetry::COMPACTION_SECONDS)
        .record(started.elapsed().as_secs_f64());
    Ok(Some(Compacted {
        snapshot,
        transactions: rebuilt.transactions,
        changes: rebuilt.changes,
    }))
}

/// Compacts every `interval` until `shutdown` (a new base snapshot from the
/// archive alone), then prunes by `retention` if it is set. A table the
/// archive alone cannot carry past a change is asked of `rereads`.
pub async fn compact_periodically(
    uploader: Arc<crate::archive::uploader::Uploader>,
    rereads: crate::archive::reread::Requests,
    interval: std::time::Duration,
    retention: Option<crate::config::RetentionPolicy>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let audit = AuditLog::in_dir(uploader.log_dir());
        let started = std::time::Instant::now();
        let result = async {
            let manifest = uploader.manifest().await?;
            match compact(uploader.store().clone(), &manifest, uploader.log_dir()).await? {
                Some(done) => {
                    let details = done.audit_details(started.elapsed());
                    uploader.add_snapshot(done.snapshot).await?;
                    Ok::<_, CompactError>(Some(details))
                }
                None => Ok(None),
            }
        }
        .await;
        match &result {
            Ok(Some(details)) => audit.record("compact", Outcome::Ok, details.clone()),
            Ok(None) => {}
            Err(e) => audit.record(
                "compact",
                Outcome::Failed,
                serde_json::json!({ "error": e.to_string() }),
            ),
        }
        match result {
            // The archive alone cannot carry the table past this change: read it again.
            Err(CompactError::Rebuild(RebuildError::Apply(ApplyError::Inexact(inexact)))) => {
                tracing::warn!(%inexact, "compaction waits for a re-read of the table");
                if inexact.until.is_none() {
                    let _ = rereads.send(inexact.table.clone());
                }
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::ERRORS, "kind" => "compaction").increment(1);
                tracing::error!(%error, "compaction failed; the next interval retries");
            }
            Ok(_) => {}
        }
        if let Some(policy) = &retention {
            match uploader.prune(policy).await {
                Ok(plan) if plan.is_empty() => {}
                Ok(plan) => audit.record("prune", Outcome::Ok, serde_json::json!(plan)),
                Err(error) => {
                    metrics::counter!(crate::telemetry::ERRORS, "kind" => "prune").increment(1);
                    tracing::error!(%error, "pruning failed; the next interval retries");
                    audit.record(
                        "prune",
                        Outcome::Failed,
                        serde_json::json!({ "error": error.to_string() }),
                    );
                }
            }
        }
        match crate::archive::orphans::delete_old(&**uploader.store()).await {
            Ok(deleted) if deleted.is_empty() => {}
            Ok(deleted) => audit.record(
                "prune",
                Outcome::Ok,
                serde_json::json!({ "deleted_orphans": deleted }),
            ),
            Err(error) => {
                metrics::counter!(crate::telemetry::ERRORS, "kind" => "prune").increment(1);
                tracing::error!(%error, "deleting orphans failed; the next interval retries");
            }
        }
    }
}
