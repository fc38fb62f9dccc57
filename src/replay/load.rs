//! Getting archived data into a database: verified downloads, the schema, and
//! bulk loads of snapshot tables.

use std::path::Path;

use bytes::Bytes;
use futures_util::SinkExt;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::apply::Executor;
use crate::archive::manifest::{self, SegmentEntry, TableObject};
use crate::archive::store::ObjectStore;
use crate::archive::ArchiveError;
use crate::base::table::quote_ident;
use crate::source::schema::SchemaSet;

/// Fetches an object and checks it against the manifest's size and SHA-256.
pub async fn fetch_verified(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    sha256: &str,
) -> Result<Bytes, ArchiveError> {
    let data = store.get(key).await.map_err(|e| match e {
        crate::archive::store::StoreError::NotFound { key, .. } => ArchiveError::Missing { key },
        other => other.into(),
    })?;
    manifest::check_object(
        key,
        data.len() as u64,
        &manifest::sha256_hex(&data),
        size,
        sha256,
    )?;
    Ok(data)
}

/// Downloads segments into `dir` as a local log (decompressed, numbered in order).
pub async fn fetch_segments(
    store: &dyn ObjectStore,
    segments: &[SegmentEntry],
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(), ArchiveError> {
    for (i, entry) in segments.iter().enumerate() {
        let data = fetch_verified(store, &entry.key, entry.size, &entry.sha256).await?;
        bar.inc(entry.size);
        let raw = tokio::task::spawn_blocking(move || zstd::decode_all(&data[..]))
            .await
            .expect("decompressing a segment")
            .map_err(|e| ArchiveError::Corrupt {
                key: entry.key.clone(),
                problem: format!("does not decompress: {e}"),
            })?;
        if manifest::sha256_hex(&raw) != entry.raw_sha256 {
            return Err(ArchiveError::Corrupt {
                key: entry.key.clone(),
                problem: "its decompressed bytes do not match the manifest's raw SHA-256".into(),
            });
        }
        let path = dir.join(crate::log::segment::file_name(i as u64 + 1));
        std::fs::write(&path, raw).map_err(|source| crate::log::LogError::Io { path, source })?;
    }
    Ok(())
}

/// Opens `count` connections to the target: one loads while the others do too.
/// One loading connection per CPU, at most 8: COPY is CPU-bound on both ends.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

pub async fn connect_all(
    target: &crate::pg::ConnInfo,
    count: usize,
) -> Result<Vec<std::sync::Arc<tokio_postgres::Client>>, crate::pg::ConnectError> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        clients.push(std::sync::Arc::new(target.connect().await?));
    }
    Ok(clients)
}

/// Streams `source_sql` (a `COPY ... TO STDOUT`) from one database into
/// `target_sql` (a `COPY ... FROM STDIN`) on another, without holding it.
pub async fn copy_across(
    source: &tokio_postgres::Client,
    source_sql: &str,
    target: &tokio_postgres::Client,
    target_sql: &str,
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::StreamExt;
    let rows = source.copy_out(source_sql).await?;
    let sink = target.copy_in(target_sql).await?;
    futures_util::pin_mut!(rows, sink);
    while let Some(chunk) = rows.next().await {
        sink.send(chunk?).await?;
    }
    sink.finish().await
}

/// Loads snapshot tables with one worker per client, largest tables first so
/// the last to finish is a small one. Returns the rows loaded.
pub async fn load_tables(
    clients: &[std::sync::Arc<tokio_postgres::Client>],
    store: &dyn ObjectStore,
    objects: Vec<&TableObject>,
    work_dir: &Path,
    bar: &ProgressBar,
) -> Result<u64, ArchiveError> {
    let mut queue = objects;
    queue.sort_by_key(|o| o.raw_size);
    let queue = std::sync::Mutex::new(queue);
    let worker = |client: &std::sync::Arc<tokio_postgres::Client>| {
        let queue = &queue;
        let client = client.clone();
        async move {
            let mut rows = 0;
            loop {
                let next = queue.lock().expect("the load queue").pop();
                let Some(object) = next else {
                    return Ok::<u64, ArchiveError>(rows);
                };
                rows += load_table(&client, store, object, work_dir, bar).await?;
            }
        }
    };
    let loaded = futures_util::future::try_join_all(clients.iter().map(worker)).await?;
    Ok(loaded.into_iter().sum())
}

/// Creates the enums, schemas, sequences and tables (columns only: constraints come after the load).
pub async fn create_tables(
    client: &tokio_postgres::Client,
    schema: &SchemaSet,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&(schema.pre_data_sql().join(";\n") + ";"))
        .await
}

/// Adds each table's primary key, so changes find their rows by index.
pub async fn add_primary_keys(
    client: &tokio_postgres::Client,
    schema: &SchemaSet,
) -> Result<(), tokio_postgres::Error> {
    for sql in schema.primary_key_sql() {
        client.batch_execute(&sql).await?;
    }
    Ok(())
}

/// Loads one snapshot table with binary COPY, streaming: the object goes to a
/// temp file in `work_dir`, is verified, and is decompressed in chunks into COPY.
async fn load_table(
    client: &tokio_postgres::Client,
    store: &dyn ObjectStore,
    object: &TableObject,
    work_dir: &Path,
    bar: &ProgressBar,
) -> Result<u64, ArchiveError> {
    let temp =
        tempfile::NamedTempFile::new_in(work_dir).map_err(|source| crate::log::LogError::Dir {
            path: work_dir.to_path_buf(),
            source,
        })?;
    let size = store
        .get_to_file(&object.key, temp.path())
        .await
        .map_err(|e| match e {
            crate::archive::store::StoreError::NotFound { key, .. } => {
                ArchiveError::Missing { key }
            }
            other => other.into(),
        })?;
    let path = temp.path().to_path_buf();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .expect("hashing a snapshot table")
    .map_err(|source| crate::log::LogError::Io {
        path: temp.path().to_path_buf(),
        source,
    })?;
    manifest::check_object(&object.key, size, &actual, object.size, &object.sha256)?;

    let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let path = temp.path().to_path_buf();
    let key = object.key.clone();
    let decompressor = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut decoder = zstd::stream::Decoder::new(file).map_err(|e| e.to_string())?;
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            let n = std::io::Read::read(&mut decoder, &mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            chunk.truncate(n);
            if chunks.blocking_send(Bytes::from(chunk)).is_err() {
                return Ok(());
            }
        }
    });
    let columns: Vec<String> = object.columns.iter().map(|c| quote_ident(c)).collect();
    let table = &object.table;
    let sql = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        table.quoted(),
        columns.join(", ")
    );
    let load = async {
        let sink = client.copy_in(sql.as_str()).await?;
        futures_util::pin_mut!(sink);
        while let Some(chunk) = rx.recv().await {
            bar.inc(chunk.len() as u64);
            sink.send(chunk).await?;
        }
        sink.finish().await
    };
    let loaded = load.await;
    let decompressed = decompressor.await.expect("decompressing a snapshot table");
    if let Err(problem) = decompressed {
        return Err(ArchiveError::Corrupt {
            key,
            problem: format!("does not decompress: {problem}"),
        });
    }
    loaded.map_err(|e| ArchiveError::Corrupt {
        key,
        problem: format!("the target refused its rows: {e}"),
    })
}

/// Runs the applier's SQL on a tokio-postgres client from a blocking thread.
pub struct ClientExecutor {
    pub client: std::sync::Arc<tokio_postgres::Client>,
    pub runtime: tokio::runtime::Handle,
}

impl Executor for ClientExecutor {
    fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string())
            })
    }

    fn copy_in(&mut self, sql: &str, data: Bytes) -> Result<(), String> {
        self.runtime
            .block_on(async {
                let sink = self.client.copy_in(sql).await?;
                futures_util::pin_mut!(sink);
                sink.send(data).await?;
                sink.finish().await
            })
            .map(drop)
            .map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string())
            })
    }

    fn format_type(&mut self, oid: u32, typmod: i32) -> Result<String, String> {
        self.runtime
            .block_on(
                self.client
                    .query_one("SELECT format_type($1, $2)", &[&oid, &typmod]),
            )
            .map(|row| row.get(0))
            .map_err(|e| e.to_string())
    }
}
