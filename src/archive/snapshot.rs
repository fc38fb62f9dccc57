//! Base snapshots: every watched table copied under one exported snapshot,
//! consistent with a replication slot position.
//!
//! Why a snapshot plus the segments after it is exact: a temporary logical
//! slot is created with EXPORT_SNAPSHOT. Its consistent point C is such that
//! the exported snapshot sees exactly the transactions that committed before
//! C, and decoding from C yields exactly those that commit after it. Capture's
//! own slot confirmed no further than C when the temporary slot was created
//! (it cannot confirm what the server has not yet written), so the archived
//! segments hold every transaction that finishes after C.
//!
//! A re-read is the same for some of the tables: taken after a change the
//! stream cannot carry (a rewrite), it holds those tables as of its own C,
//! and restore reads them from it for every point at or after C.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use super::manifest::{sha256_hex, ObjectRef, SnapshotEntry, TableObject};
use super::store::ObjectStore;
use super::ArchiveError;
use crate::base::hashing::HashingWriter;
use crate::base::position::{EndLsn, PgTimestamp};
use crate::base::table::{quote_ident, quote_literal, TableName};
use crate::source::conn::ReplicationConnection;
use crate::source::schema::{self, SchemaSet};
use crate::source::setup;
use crate::source::SourceError;

pub const PREFIX: &str = "snapshots/";
pub const REREAD_PREFIX: &str = "rereads/";

/// A base snapshot holds every watched table; a re-read, some of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Base,
    Reread,
}

impl Kind {
    /// The manifest's `method` for a snapshot of this kind read from the source.
    pub fn method(self) -> &'static str {
        match self {
            Kind::Base => "copy",
            Kind::Reread => "reread",
        }
    }

    /// The folder of a snapshot at `lsn`. Two re-reads may share a point (no
    /// WAL between them), so theirs also names when it was taken.
    fn folder(self, lsn: EndLsn, taken: PgTimestamp) -> String {
        match self {
            Kind::Base => format!("{PREFIX}{:016X}/", lsn.as_u64()),
            Kind::Reread => format!("{REREAD_PREFIX}{:016X}-{:X}/", lsn.as_u64(), taken.0),
        }
    }
}

/// The key of the schema object of the base snapshot at `lsn`.
pub fn schema_key(lsn: EndLsn) -> String {
    format!("{}schema.json", Kind::Base.folder(lsn, PgTimestamp(0)))
}

/// The key of `table`'s rows in the base snapshot at `lsn` (`proto/manifest.md`).
pub fn table_key(lsn: EndLsn, table: &TableName) -> String {
    table_key_in(&Kind::Base.folder(lsn, PgTimestamp(0)), table)
}

fn table_key_in(folder: &str, table: &TableName) -> String {
    format!("{folder}{}.copy.zst", table.key_part())
}

/// Copies every table of `tables` and uploads the snapshot; returns its manifest entry.
pub async fn take(
    pg: &crate::pg::ConnInfo,
    tables: &[TableName],
    kind: Kind,
    store: Arc<dyn ObjectStore>,
    work_dir: &Path,
    parallel: usize,
) -> Result<SnapshotEntry, ArchiveError> {
    let mut conn = ReplicationConnection::connect(pg).await?;
    let slot = format!("tidemark_snapshot_{}", std::process::id());
    let created =
        setup::create_slot(&mut conn, &slot, setup::SlotKind::TemporaryWithSnapshot).await?;
    let snapshot_name = created
        .snapshot_name
        .ok_or_else(|| SourceError::Protocol("the temporary slot exported no snapshot".into()))?;
    let lsn = created.consistent_point;
    tracing::info!(%lsn, tables = tables.len(), method = kind.method(), "taking a snapshot");
    let started = std::time::Instant::now();

    let (schema_set, time) = {
        let client = snapshot_client(pg, &snapshot_name).await?;
        let set = schema::read(&client, tables)
            .await
            .map_err(|e| sql_error(e, pg))?;
        let time: std::time::SystemTime = client
            .query_one("SELECT statement_timestamp()", &[])
            .await
            .map_err(|e| sql_error(e, pg))?
            .get(0);
        (set, PgTimestamp::from_system_time(time))
    };
    let schema_body =
        bytes::Bytes::from(serde_json::to_vec_pretty(&schema_set).expect("schemas serialize"));
    let folder = kind.folder(lsn, PgTimestamp::now());
    let schema_key = format!("{folder}schema.json");
    let schema_ref = ObjectRef {
        key: schema_key.clone(),
        size: schema_body.len() as u64,
        sha256: sha256_hex(&schema_body),
    };
    store
        .put(&schema_key, schema_body, &Default::default())
        .await?;

    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut workers = Vec::new();
    for table in &schema_set.tables {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (pg, store, snapshot_name) = (pg.clone(), store.clone(), snapshot_name.clone());
        let work_dir = work_dir.to_path_buf();
        let table = table.clone();
        let key = table_key_in(&folder, &table.table_name());
        workers.push(tokio::spawn(async move {
            let _permit = permit;
            let client = snapshot_client(&pg, &snapshot_name).await?;
            copy_table(&client, &table, &key, &*store, &work_dir)
                .await
                .map_err(|e| e.with_sql(&pg))
        }));
    }
    let mut objects = Vec::new();
    for worker in workers {
        objects.push(worker.await.expect("a copy worker panicked")?);
    }
    // Closing the replication connection drops the temporary slot and its snapshot.
    drop(conn);
    let entry = SnapshotEntry {
        lsn,
        time,
        method: kind.method().into(),
        schema: schema_ref,
        tables: objects,
    };
    tracing::info!(
        %lsn,
        method = kind.method(),
        bytes = entry.tables.iter().map(|t| t.size).sum::<u64>(),
        seconds = started.elapsed().as_secs_f64(),
        "snapshot stored"
    );
    Ok(entry)
}

fn sql_error(e: tokio_postgres::Error, pg: &crate::pg::ConnInfo) -> ArchiveError {
    SourceError::from_sql(e, &pg.describe(), pg.user()).into()
}

/// A connection whose open transaction sees exactly the exported snapshot.
async fn snapshot_client(
    pg: &crate::pg::ConnInfo,
    snapshot: &str,
) -> Result<tokio_postgres::Client, ArchiveError> {
    let client = pg
        .connect()
        .await
        .map_err(|e| ArchiveError::from(SourceError::from_connect(e, pg)))?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| sql_error(e, pg))?;
    Ok(client)
}

/// A copy failed in the database, or in the archive.
pub enum CopyError {
    Sql(tokio_postgres::Error),
    Archive(ArchiveError),
}

impl CopyError {
    pub fn with_sql(self, pg: &crate::pg::ConnInfo) -> ArchiveError {
        match self {
            CopyError::Sql(e) => sql_error(e, pg),
            CopyError::Archive(e) => e,
        }
    }
}

impl<E: Into<ArchiveError>> From<E> for CopyError {
    fn from(e: E) -> Self {
        CopyError::Archive(e.into())
    }
}

/// COPY one table out of `client`'s transaction in binary, compressing and
/// hashing on a blocking thread into a temp file, then uploads it.
pub async fn copy_table(
    client: &tokio_postgres::Client,
    table: &schema::TableSchema,
    key: &str,
    store: &dyn ObjectStore,
    work_dir: &Path,
) -> Result<TableObject, CopyError> {
    let columns: Vec<String> = table
        .columns
        .iter()
        .filter(|c| c.generated.is_none())
        .map(|c| c.name.clone())
        .collect();
    let column_list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "COPY {} ({column_list}) TO STDOUT (FORMAT binary)",
        table.table_name().quoted()
    );
    let temp =
        tempfile::NamedTempFile::new_in(work_dir).map_err(|source| crate::log::LogError::Dir {
            path: work_dir.to_path_buf(),
            source,
        })?;
    let (chunks, mut rx) = mpsc::channel::<bytes::Bytes>(16);
    let file = temp.reopen().map_err(|source| crate::log::LogError::Io {
        path: temp.path().to_path_buf(),
        source,
    })?;
    let compressor = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, u64, String)> {
        let mut out = HashingWriter::new(std::io::BufWriter::new(file));
        let mut encoder = zstd::stream::Encoder::new(&mut out, 3)?;
        let mut raw = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            raw += chunk.len() as u64;
            encoder.write_all(&chunk)?;
        }
        encoder.finish()?;
        let (mut file, len, sha256) = out.into_parts();
        file.flush()?;
        file.get_ref().sync_all()?;
        Ok((raw, len, sha256))
    });
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(CopyError::Sql)?;
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(CopyError::Sql)?;
        if chunks.send(chunk).await.is_err() {
            break;
        }
    }
    drop(chunks);
    let (raw_size, size, sha256) =
        compressor
            .await
            .expect("the compressor panicked")
            .map_err(|source| crate::log::LogError::Io {
                path: temp.path().to_path_buf(),
                source,
            })?;
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("sha256".to_string(), sha256.clone());
    store.put_file(key, temp.path(), &metadata).await?;
    Ok(TableObject {
        table: table.table_name(),
        key: key.to_string(),
        columns,
        size,
        sha256,
        raw_size,
    })
}

impl SchemaSet {
    pub fn table(&self, name: &TableName) -> Option<&schema::TableSchema> {
        self.tables
            .iter()
            .find(|t| t.schema == name.schema && t.name == name.name)
    }
}
