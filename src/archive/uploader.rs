//! Seals → uploads: archives every sealed local segment, then writes a new
//! manifest listing them, then deletes the local copies.
//!
//! Why nothing is lost between the log and the store: a local segment is
//! deleted only once a stored manifest lists it, and a crash before that
//! leaves it to the next pass, which recognises what is already archived by
//! its hash. Object keys name their content, so a retried upload rewrites
//! nothing.
//!
//! What a gap means: each segment starts at the resume position where the
//! previous one was sealed, and entries are listed in log order, so an entry
//! whose start is not its predecessor's end marks history the archive does
//! not hold (local segments lost before upload, e.g. a replaced log dir).
//! The uploader still lists what it has, logs the gap, and `list`, `verify`
//! and every restore plan report it; a restore never bridges it.

use crate::base::retry::Retry;
use crate::log::audit::{AuditLog, Outcome};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex, Notify};

use super::manifest::{self, Manifest, Quiet, SegmentEntry, SnapshotEntry, SourceId};
use super::store::ObjectStore;
use super::ArchiveError;
use crate::base::position::{EndLsn, PgTimestamp};
use crate::log::segment;
use crate::log::{LogError, SegmentIndex};

pub const SEGMENT_PREFIX: &str = "segments/";

/// Old manifests are trimmed every this many commits (one per upload pass while busy).
const TRIM_EVERY: u64 = 64;

/// zstd's level for segments: fast, and most of the gain of higher levels.
pub const SEGMENT_ZSTD_LEVEL: i32 = 3;

pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    log_dir: PathBuf,
    source: SourceId,
    /// The current manifest, read from the store on first use.
    manifest: Mutex<Option<Manifest>>,
    progress: Arc<crate::telemetry::Progress>,
    /// The oldest segment another reader of the log (the Kafka feed) still needs.
    retain_from: Option<tokio::sync::watch::Receiver<u64>>,
    /// Archived segments kept for that reader, so they are not prepared again.
    kept: std::sync::Mutex<std::collections::BTreeSet<u64>>,
}

/// A sealed segment read, verified, compressed and hashed.
struct Prepared {
    base_ack: EndLsn,
    restart: EndLsn,
    index: SegmentIndex,
    raw_size: u64,
    raw_sha256: String,
    compressed: Bytes,
    sha256: String,
}

impl Uploader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        log_dir: &Path,
        source: SourceId,
        progress: Arc<crate::telemetry::Progress>,
    ) -> Uploader {
        Uploader {
            store,
            log_dir: log_dir.to_path_buf(),
            source,
            manifest: Mutex::new(None),
            progress,
            retain_from: None,
            kept: Default::default(),
        }
    }

    /// Keeps archived segments from `retain_from` on in the local log.
    pub fn keep_for(mut self, retain_from: tokio::sync::watch::Receiver<u64>) -> Uploader {
        self.retain_from = Some(retain_from);
        self
    }

    /// Reads the current manifest; refuses an archive that belongs to another database.
    async fn load(&self) -> Result<Manifest, ArchiveError> {
        let Some((_, found)) = manifest::load_latest(&*self.store).await? else {
            return Ok(Manifest::new(self.source.clone()));
        };
        if found.source.system_identifier != self.source.system_identifier
            || found.source.database != self.source.database
        {
            return Err(ArchiveError::ForeignArchive {
                store: self.store.describe(),
                found: format!(
                    "{} on system {}",
                    found.source.database, found.source.system_identifier
                ),
                expected: format!(
                    "{} on system {}",
                    self.source.database, self.source.system_identifier
                ),
            });
        }
        Ok(found)
    }

    /// Checks the archive can be used: reachable (or only unavailable for now) and ours.
    pub async fn check(&self) -> Result<(), ArchiveError> {
        let mut cached = self.manifest.lock().await;
        match self.load().await {
            Ok(m) => {
                *cached = Some(m);
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "archive store unavailable at start; capture continues locally and uploads once it is back");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The log dir, where compaction keeps its work files.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Archives every sealed local segment not yet archived; returns how many it uploaded.
    pub async fn archive_sealed(&self) -> Result<usize, ArchiveError> {
        let mut segments = segment::list(&self.log_dir)?;
        segments.pop(); // the open segment
        if segments.is_empty() {
            return Ok(0);
        }
        let mut manifest = self.manifest.lock().await;
        let mut next = match manifest.as_ref() {
            Some(m) => m.clone(),
            None => self.load().await?,
        };
        let mut done: Vec<(u64, PathBuf)> = Vec::new();
        let mut uploaded = 0;
        for (seq, path) in segments {
            if self.kept.lock().expect("kept segments").contains(&seq) {
                done.push((seq, path));
                continue;
            }
            let prepared = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || prepare(&path))
                    .await
                    .expect("preparing a segment")?
            };
            if next
                .segments
                .iter()
                .rev()
                .any(|e| e.raw_sha256 == prepared.raw_sha256)
            {
                // Archived before a crash cut short the local delete.
                done.push((seq, path));
                continue;
            }
            if let Some(last) = next.segments.last() {
                if last.end_lsn != prepared.base_ack {
                    tracing::error!(
                        archived_to = %last.end_lsn,
                        segment_from = %prepared.base_ack,
                        "the archive has a gap: this segment does not continue the last archived one; restores across it will be refused"
                    );
                }
            }
            let key = format!(
                "{SEGMENT_PREFIX}{:016X}-{:016X}-{}.seg.zst",
                prepared.base_ack.as_u64(),
                prepared.index.ack_lsn.as_u64(),
                &prepared.sha256[..16]
            );
            let entry = SegmentEntry {
                key: key.clone(),
                start_lsn: prepared.base_ack,
                end_lsn: prepared.index.ack_lsn,
                restart_lsn: prepared.restart,
                first_commit_time: prepared.index.first_commit_time,
                last_commit_time: prepared.index.last_commit_time,
                records: prepared.index.records,
                size: prepared.compressed.len() as u64,
                sha256: prepared.sha256.clone(),
                raw_size: prepared.raw_size,
                raw_sha256: prepared.raw_sha256,
                prev_sha256: next.segments.last().map(|e| e.sha256.clone()),
            };
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert("sha256".to_string(), entry.sha256.clone());
            metadata.insert("start-lsn".to_string(), entry.start_lsn.to_string());
            metadata.insert("end-lsn".to_string(), entry.end_lsn.to_string());
            if let Some(t) = entry.first_commit_time {
                metadata.insert("first-commit-time".to_string(), t.to_rfc3339());
            }
            if let Some(t) = entry.last_commit_time {
                metadata.insert("last-commit-time".to_string(), t.to_rfc3339());
            }
            // A retry after a failed manifest write finds the object already there
            // (keys name their content's hash).
            if self.store.head(&key).await?.is_none() {
                let started = std::time::Instant::now();
                self.store.put(&key, prepared.compressed, &metadata).await?;
                metrics::histogram!(crate::telemetry::UPLOAD_SECONDS)
                    .record(started.elapsed().as_secs_f64());
            }
            next.segments.push(entry);
            // Whatever it said of the stretch past the old end, the segment now says.
            next.quiet = None;
            done.push((seq, path));
            uploaded += 1;
        }
        if uploaded > 0 {
            self.commit(&mut next).await?;
            if let Some(last) = next.segments.last() {
                self.progress.archived.send_replace(last.end_lsn);
            }
            if let Some(time) = next.segments.last().and_then(|e| e.last_commit_time) {
                self.progress.archived(time);
            }
        }
        *manifest = Some(next);
        let needed_from = self.retain_from.as_ref().map_or(u64::MAX, |r| *r.borrow());
        let (delete, keep): (Vec<_>, Vec<_>) =
            done.into_iter().partition(|(seq, _)| *seq < needed_from);
        {
            let mut kept = self.kept.lock().expect("kept segments");
            kept.retain(|seq| *seq >= needed_from);
            kept.extend(keep.iter().map(|(seq, _)| *seq));
        }
        for (_, path) in &delete {
            std::fs::remove_file(path).map_err(|source| LogError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(uploaded)
    }

    /// Records that the source was quiet past the last archived segment, if
    /// `quiet` continues it and says more than the manifest does: a manifest
    /// instead of a segment of heartbeats, so idling adds no objects (the
    /// manifests themselves are trimmed to the newest few).
    pub async fn record_quiet(&self, quiet: Quiet) -> Result<(), ArchiveError> {
        let mut manifest = self.manifest.lock().await;
        let mut next = match manifest.as_ref() {
            Some(m) => m.clone(),
            None => self.load().await?,
        };
        // Where the archive's newest chain ends: the last segment, or a newer
        // snapshot with no segment after it yet.
        let archived_to = next
            .segments
            .last()
            .map(|s| s.end_lsn)
            .into_iter()
            .chain(next.snapshots.iter().map(|s| s.lsn))
            .max();
        let Some(archived_to) = archived_to else {
            return Ok(());
        };
        // Below `after`, what was sealed is not all archived yet; at or past
        // `until`, a segment since says more than the quiet stretch does.
        if archived_to < quiet.after || quiet.until.lsn <= archived_to {
            return Ok(());
        }
        if next.quiet.is_some_and(|q| q.until.lsn >= quiet.until.lsn) {
            return Ok(());
        }
        next.quiet = Some(Quiet {
            after: archived_to,
            until: quiet.until,
        });
        self.commit(&mut next).await?;
        self.progress.archived(quiet.until.commit_time);
        *manifest = Some(next);
        Ok(())
    }

    /// Stores `next` as the following manifest: the commit point of everything it lists.
    async fn commit(&self, next: &mut Manifest) -> Result<(), ArchiveError> {
        let key = manifest::store_next(&*self.store, next).await?;
        tracing::debug!(manifest = %key, "manifest stored");
        super::last_upload::record(&self.log_dir, &key, next);
        if next.sequence.is_multiple_of(TRIM_EVERY) {
            super::retention::trim_manifests(&*self.store).await?;
        }
        Ok(())
    }

    /// A copy of the current manifest, read from the store if not yet loaded.
    pub async fn manifest(&self) -> Result<Manifest, ArchiveError> {
        let mut manifest = self.manifest.lock().await;
        if manifest.is_none() {
            *manifest = Some(self.load().await?);
        }
        Ok(manifest.clone().expect("just loaded"))
    }

    /// Whether the archive has no base snapshot yet (and so no restore point).
    pub async fn needs_snapshot(&self) -> Result<bool, ArchiveError> {
        let mut manifest = self.manifest.lock().await;
        if manifest.is_none() {
            *manifest = Some(self.load().await?);
        }
        Ok(manifest.as_ref().is_some_and(|m| m.snapshots.is_empty()))
    }

    /// Writes the next manifest: the current one changed by `change`.
    pub async fn update(&self, change: impl FnOnce(&mut Manifest)) -> Result<(), ArchiveError> {
        let mut manifest = self.manifest.lock().await;
        let mut next = match manifest.as_ref() {
            Some(m) => m.clone(),
            None => self.load().await?,
        };
        change(&mut next);
        self.commit(&mut next).await?;
        *manifest = Some(next);
        Ok(())
    }

    /// Lists a stored base snapshot in a new manifest.
    pub async fn add_snapshot(&self, entry: SnapshotEntry) -> Result<(), ArchiveError> {
        self.update(|m| m.snapshots.push(entry)).await
    }

    /// Prunes what `policy` no longer needs: the manifest first, the objects after.
    pub async fn prune(
        &self,
        policy: &crate::config::RetentionPolicy,
    ) -> Result<super::retention::PrunePlan, ArchiveError> {
        let started = std::time::Instant::now();
        let plan = super::retention::plan(&self.manifest().await?, policy, PgTimestamp::now());
        if !plan.is_empty() {
            self.update(|m| plan.apply_to(m)).await?;
            super::retention::delete(&*self.store, &plan).await?;
            tracing::info!(
                snapshots = plan.deleted_snapshots.len(),
                segments = plan.deleted_segments,
                bytes = plan.deleted_bytes,
                "pruned what retention no longer needs"
            );
        }
        metrics::histogram!(crate::telemetry::PRUNE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(plan)
    }

    /// The newest archived resume LSN and commit time.
    pub async fn head(&self) -> Option<(EndLsn, Option<PgTimestamp>)> {
        let manifest = self.manifest.lock().await;
        manifest
            .as_ref()?
            .segments
            .last()
            .map(|e| (e.end_lsn, e.last_commit_time))
    }
}

/// Verifies a sealed segment record by record, then compresses and hashes it in chunks.
fn prepare(path: &Path) -> Result<Prepared, ArchiveError> {
    let segment::Sealed {
        base_ack,
        restart,
        index,
    } = segment::verify_sealed(path)?;

    let io_err = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let mut raw_hash = Sha256::new();
    let mut raw_size = 0u64;
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), SEGMENT_ZSTD_LEVEL).map_err(io_err)?;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            break;
        }
        raw_hash.update(&chunk[..n]);
        raw_size += n as u64;
        std::io::Write::write_all(&mut encoder, &chunk[..n]).map_err(io_err)?;
    }
    let compressed = encoder.finish().map_err(io_err)?;
    Ok(Prepared {
        base_ack,
        restart,
        index,
        raw_size,
        raw_sha256: hex::encode(raw_hash.finalize()),
        sha256: manifest::sha256_hex(&compressed),
        compressed: Bytes::from(compressed),
    })
}

/// Reads `tables` from the source under a temporary slot's snapshot, and
/// lists it: as a base snapshot, or as a re-read of those tables.
pub async fn take_snapshot(
    uploader: &Uploader,
    pg: &crate::pg::ConnInfo,
    tables: &[crate::base::table::TableName],
    kind: super::snapshot::Kind,
) -> Result<SnapshotEntry, ArchiveError> {
    let parallel = tables.len().clamp(1, 4);
    let taken = async {
        let entry = super::snapshot::take(
            pg,
            tables,
            kind,
            uploader.store.clone(),
            &uploader.log_dir,
            parallel,
        )
        .await?;
        let details = serde_json::json!({
            "lsn": entry.lsn,
            "time": entry.time,
            "method": entry.method,
            "tables": tables,
            "bytes": entry.tables.iter().map(|t| t.size).sum::<u64>(),
        });
        let listed = entry.clone();
        uploader
            .update(|m| match kind {
                super::snapshot::Kind::Base => m.snapshots.push(listed),
                super::snapshot::Kind::Reread => m.rereads.push(listed),
            })
            .await
            .map(|()| (entry, details))
    }
    .await;
    let details = match &taken {
        Ok((_, details)) => details.clone(),
        Err(e) => {
            serde_json::json!({ "tables": tables, "method": kind.method(), "error": e.to_string() })
        }
    };
    AuditLog::in_dir(&uploader.log_dir).record("snapshot", Outcome::of(&taken), details);
    taken.map(|(entry, _)| entry)
}

pub async fn snapshot_when_missing(
    uploader: Arc<Uploader>,
    pg: crate::pg::ConnInfo,
    tables: Vec<crate::base::table::TableName>,
) {
    let mut retry = Retry::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let result = async {
            if !uploader.needs_snapshot().await? {
                return Ok(());
            }
            take_snapshot(&uploader, &pg, &tables, super::snapshot::Kind::Base)
                .await
                .map(drop)
        }
        .await;
        match result {
            Ok(()) => return,
            Err(error) if error.is_retryable() => {
                let backoff = retry.next_delay();
                tracing::warn!(%error, retry_in_s = backoff.as_secs(), "base snapshot failed; retrying");
                tokio::time::sleep(backoff).await;
            }
            Err(error) => {
                tracing::error!(%error, "base snapshot failed; the archive has no restore point until a snapshot succeeds (restart capture to retry)");
                return;
            }
        }
    }
}

/// Runs the uploader until `shutdown`: on every seal, and every `interval`.
/// Store outages are retried with backoff; capture keeps writing locally meanwhile.
pub async fn run(
    uploader: Arc<Uploader>,
    sealed: Arc<Notify>,
    quiet: watch::Receiver<Option<Quiet>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Retry::new(interval, Duration::from_secs(30).max(interval));
    loop {
        let passed = async {
            uploader.archive_sealed().await?;
            let said = *quiet.borrow();
            match said {
                Some(said) => uploader.record_quiet(said).await,
                None => Ok(()),
            }
        };
        let wait = match passed.await {
            Ok(_) => {
                retry.reset();
                interval
            }
            Err(error) => {
                metrics::counter!(crate::telemetry::UPLOAD_FAILURES).increment(1);
                metrics::counter!(crate::telemetry::ERRORS, "kind" => "archive").increment(1);
                let backoff = retry.next_delay();
                if error.is_retryable() {
                    tracing::warn!(%error, retry_in_s = backoff.as_secs_f64(), "archive store unavailable; capture continues locally");
                } else {
                    tracing::error!(%error, retry_in_s = backoff.as_secs_f64(), "archiving failed; capture continues locally");
                }
                backoff
            }
        };
        tokio::select! {
            _ = sealed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
