//! Getting archived data into a database: verified downloads, the schema, and
//! bulk loads of snapshot tables.

use std::path::Path;

use bytes::Bytes;
use futures_util::SinkExt;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::fold::SnapshotFilter;
use super::pipeline::CopyFailed;
use crate::archive::manifest::{self, SegmentEntry, TableObject};
use crate::archive::store::ObjectStore;
use crate::archive::ArchiveError;
use crate::base::hashing::HashingWriter;
use crate::base::table::quote_ident;
use crate::source::schema::SchemaSet;

/// A store error for an object the manifest lists: one the store does not
/// have is missing from the archive.
fn listed(error: crate::archive::store::StoreError) -> ArchiveError {
    match error {
        crate::archive::store::StoreError::NotFound { key, .. } => ArchiveError::Missing { key },
        other => other.into(),
    }
}

/// Fetches an object and checks it against the manifest's size and SHA-256.
pub async fn fetch_verified(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    sha256: &str,
) -> Result<Bytes, ArchiveError> {
    let data = store.get(key).await.map_err(listed)?;
    manifest::check_object(
        key,
        data.len() as u64,
        &manifest::sha256_hex(&data),
        size,
        sha256,
    )?;
    Ok(data)
}

/// Segments downloaded at once: a store's latency is paid per object.
const SEGMENTS_AT_ONCE: usize = 4;

/// Downloads segments into `dir` as a local log (decompressed, numbered in
/// order), several at once. Each object streams to a file, is checked against
/// the manifest's size and SHA-256, and is decompressed file to file while
/// its raw SHA-256 is taken: memory stays at buffer sizes whatever the
/// segment size.
pub async fn fetch_segments(
    store: &dyn ObjectStore,
    segments: &[SegmentEntry],
    dir: &Path,
    bar: &ProgressBar,
) -> Result<(), ArchiveError> {
    use futures_util::{StreamExt, TryStreamExt};
    // Built first: a stream that makes them in a closure trips the compiler's Send check.
    let fetches: Vec<_> = segments
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let path = dir.join(crate::log::segment::file_name(i as u64 + 1));
            fetch_segment(store, entry, path, bar)
        })
        .collect();
    futures_util::stream::iter(fetches)
        .buffer_unordered(SEGMENTS_AT_ONCE)
        .try_collect::<()>()
        .await
}

/// Downloads one segment to `path`, verified and decompressed.
async fn fetch_segment(
    store: &dyn ObjectStore,
    entry: &SegmentEntry,
    path: std::path::PathBuf,
    bar: &ProgressBar,
) -> Result<(), ArchiveError> {
    let stored = path.with_extension("stored");
    store
        .get_to_file(&entry.key, &stored)
        .await
        .map_err(listed)?;
    let owned = entry.clone();
    tokio::task::spawn_blocking(move || decompress_verified(&stored, &path, &owned))
        .await
        .expect("decompressing a segment")?;
    bar.inc(entry.size);
    Ok(())
}

/// Checks the stored object at `stored`, decompresses it into `path`, checks
/// the raw bytes, and removes `stored`.
fn decompress_verified(
    stored: &Path,
    path: &Path,
    entry: &SegmentEntry,
) -> Result<(), ArchiveError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::from(crate::log::LogError::Io { path, source })
    };
    let mut sink = HashingWriter::new(std::io::sink());
    std::io::copy(
        &mut std::fs::File::open(stored).map_err(io(stored))?,
        &mut sink,
    )
    .map_err(io(stored))?;
    let (_, size, sha256) = sink.into_parts();
    manifest::check_object(&entry.key, size, &sha256, entry.size, &entry.sha256)?;
    let corrupt = |problem: String| ArchiveError::Corrupt {
        key: entry.key.clone(),
        problem,
    };
    let mut decoder =
        zstd::stream::read::Decoder::new(std::fs::File::open(stored).map_err(io(stored))?)
            .map_err(io(stored))?;
    let mut raw = HashingWriter::new(std::io::BufWriter::new(
        std::fs::File::create(path).map_err(io(path))?,
    ));
    std::io::copy(&mut decoder, &mut raw).map_err(|e| match e.raw_os_error() {
        // The system refused a read or a write (a full disk, say): not the object's fault.
        Some(_) => io(path)(e),
        None => corrupt(format!("does not decompress: {e}")),
    })?;
    std::io::Write::flush(&mut raw).map_err(io(path))?;
    if raw.into_parts().2 != entry.raw_sha256 {
        return Err(corrupt(
            "its decompressed bytes do not match the manifest's raw SHA-256".into(),
        ));
    }
    std::fs::remove_file(stored).map_err(io(stored))?;
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
    largest_first(
        clients,
        objects,
        |o| o.raw_size,
        |client, object| async move { load_table(&client, store, object, work_dir, bar).await },
    )
    .await
}

/// Runs `work` on every item, one worker per client, largest first by
/// `size`, so the last to finish is a small one. Returns the sum of what
/// each run returned.
pub async fn largest_first<T, E, Fut>(
    clients: &[std::sync::Arc<tokio_postgres::Client>],
    mut items: Vec<T>,
    size: impl Fn(&T) -> u64,
    work: impl Fn(std::sync::Arc<tokio_postgres::Client>, T) -> Fut,
) -> Result<u64, E>
where
    Fut: std::future::Future<Output = Result<u64, E>>,
{
    items.sort_by_key(|item| size(item));
    let queue = std::sync::Mutex::new(items);
    let worker = |client: &std::sync::Arc<tokio_postgres::Client>| {
        let (queue, work, client) = (&queue, &work, client.clone());
        async move {
            let mut total = 0;
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some(item) = next else {
                    return Ok::<u64, E>(total);
                };
                total += work(client.clone(), item).await?;
            }
        }
    };
    let done = futures_util::future::try_join_all(clients.iter().map(worker)).await?;
    Ok(done.into_iter().sum())
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
    let held = fetch_table(store, object, work_dir).await?;
    copy_table(client, &held, None, bar).await
}

/// Snapshot tables held back for folds, by table: the applier takes one to
/// load it whole, the rebuild takes the rest to load them folded.
pub type HeldTables = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<crate::base::table::TableName, HeldTable>>,
>;

/// A snapshot table downloaded and verified, waiting to be loaded.
pub struct HeldTable {
    pub object: TableObject,
    file: tempfile::NamedTempFile,
}

/// Downloads `object` into a temp file in `work_dir` and checks it against the manifest.
pub async fn fetch_table(
    store: &dyn ObjectStore,
    object: &TableObject,
    work_dir: &Path,
) -> Result<HeldTable, ArchiveError> {
    let file =
        tempfile::NamedTempFile::new_in(work_dir).map_err(|source| crate::log::LogError::Dir {
            path: work_dir.to_path_buf(),
            source,
        })?;
    let size = store
        .get_to_file(&object.key, file.path())
        .await
        .map_err(listed)?;
    let path = file.path().to_path_buf();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .expect("hashing a snapshot table")
    .map_err(|source| crate::log::LogError::Io {
        path: file.path().to_path_buf(),
        source,
    })?;
    manifest::check_object(&object.key, size, &actual, object.size, &object.sha256)?;
    Ok(HeldTable {
        object: object.clone(),
        file,
    })
}

/// Downloads the objects of tables held back for folds, a few at once.
pub async fn fetch_tables(
    store: &dyn ObjectStore,
    objects: Vec<&TableObject>,
    work_dir: &Path,
) -> Result<HeldTables, ArchiveError> {
    use futures_util::{StreamExt, TryStreamExt};
    let fetches: Vec<_> = objects
        .into_iter()
        .map(|object| fetch_table(store, object, work_dir))
        .collect();
    let held: Vec<HeldTable> = futures_util::stream::iter(fetches)
        .buffer_unordered(SEGMENTS_AT_ONCE)
        .try_collect()
        .await?;
    let by_table = held
        .into_iter()
        .map(|h| (h.object.table.clone(), h))
        .collect();
    Ok(std::sync::Arc::new(std::sync::Mutex::new(by_table)))
}

/// Takes `table`'s held snapshot, if it is still held.
pub fn take_held(held: &HeldTables, table: &crate::base::table::TableName) -> Option<HeldTable> {
    held.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(table)
}

/// Decompresses a held table into binary COPY, without the rows `filter`
/// leaves out. Returns the snapshot's rows (kept or not).
pub async fn copy_table(
    client: &tokio_postgres::Client,
    held: &HeldTable,
    filter: Option<SnapshotFilter>,
    bar: &ProgressBar,
) -> Result<u64, ArchiveError> {
    let path = held.file.path().to_path_buf();
    let object = &held.object;
    let decompress = move |send: &dyn Fn(Bytes) -> bool| -> Result<Option<u64>, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut decoder = zstd::stream::Decoder::new(file).map_err(|e| e.to_string())?;
        let mut filter = filter;
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            let n = std::io::Read::read(&mut decoder, &mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return filter.map(|f| f.finish()).transpose();
            }
            chunk.truncate(n);
            if let Some(filter) = &mut filter {
                let mut kept = Vec::with_capacity(n);
                filter.push(&chunk, &mut kept)?;
                chunk = kept;
            }
            if !chunk.is_empty() && !send(Bytes::from(chunk)) {
                return Ok(None);
            }
        }
    };
    let columns: Vec<String> = object.columns.iter().map(|c| quote_ident(c)).collect();
    let sql = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        object.table.quoted(),
        columns.join(", ")
    );
    let key = object.key.clone();
    match super::pipeline::copy_produced(client, &sql, bar, decompress).await {
        Ok((rows_read, copied)) => Ok(rows_read.unwrap_or(copied)),
        Err(CopyFailed::Produce(problem)) => Err(ArchiveError::Corrupt {
            key,
            problem: format!("does not decompress: {problem}"),
        }),
        Err(CopyFailed::Target(e)) => Err(ArchiveError::Corrupt {
            key,
            problem: format!("the target refused its rows: {e}"),
        }),
    }
}

#[cfg(test)]
mod segment_tests {
    use super::*;
    use crate::archive::store::local::LocalStore;
    use crate::base::position::{EndLsn, Lsn};

    const RAW: &[u8] = b"a segment's bytes, as the log wrote them";

    fn entry(stored: &[u8]) -> SegmentEntry {
        SegmentEntry {
            key: "segments/one.seg.zst".into(),
            start_lsn: EndLsn(Lsn(1)),
            end_lsn: EndLsn(Lsn(2)),
            restart_lsn: EndLsn(Lsn(1)),
            first_commit_time: None,
            last_commit_time: None,
            records: 1,
            size: stored.len() as u64,
            sha256: manifest::sha256_hex(stored),
            raw_size: RAW.len() as u64,
            raw_sha256: manifest::sha256_hex(RAW),
            prev_sha256: None,
        }
    }

    async fn fetch(store: &LocalStore, entry: &SegmentEntry) -> Result<Vec<u8>, ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        fetch_segments(
            store,
            std::slice::from_ref(entry),
            dir.path(),
            &ProgressBar::hidden(),
        )
        .await?;
        Ok(std::fs::read(dir.path().join(crate::log::segment::file_name(1))).unwrap())
    }

    /// Streams through files, and refuses a stored object or its contents
    /// that differ from the manifest, by name.
    #[tokio::test]
    async fn segments_stream_and_every_mismatch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().to_path_buf());
        let stored = zstd::encode_all(RAW, 3).unwrap();
        let good = entry(&stored);
        store
            .put(&good.key, Bytes::from(stored.clone()), &Default::default())
            .await
            .unwrap();
        assert_eq!(fetch(&store, &good).await.unwrap(), RAW);

        let mut other_raw = good.clone();
        other_raw.raw_sha256 = manifest::sha256_hex(b"something else");
        let error = fetch(&store, &other_raw).await.unwrap_err().to_string();
        assert!(
            error.contains("segments/one.seg.zst") && error.contains("raw SHA-256"),
            "{error}"
        );

        let mut flipped = stored.clone();
        *flipped.last_mut().unwrap() ^= 1;
        store
            .put(&good.key, Bytes::from(flipped), &Default::default())
            .await
            .unwrap();
        let error = fetch(&store, &good).await.unwrap_err().to_string();
        assert!(error.contains("segments/one.seg.zst"), "{error}");

        let garbage = b"not zstd at all".to_vec();
        store
            .put(&good.key, Bytes::from(garbage.clone()), &Default::default())
            .await
            .unwrap();
        let error = fetch(&store, &entry(&garbage))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not decompress"), "{error}");
    }
}
