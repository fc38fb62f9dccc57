//! `tidemark verify`: re-reads every object in the store. Every manifest is
//! checked against its own hash and the configured keys; every object any of
//! them lists, against its size and SHA-256; the current manifest's segment
//! hash chain and LSN continuity too, and `--deep` decodes every record and
//! every snapshot row frame. Objects no manifest lists are orphans, listed
//! apart with their age.

use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

use super::manifest::{self, Manifest};
use super::store::{ObjectStore, StoreError};
use crate::base::position::EndLsn;
use crate::log::record::RecordKind;
use crate::log::segment::{self, SegmentReader};
use crate::source::pgoutput;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub manifest: Option<String>,
    pub objects_checked: usize,
    pub bytes_checked: u64,
    /// Every object that failed a check, named.
    pub problems: Vec<Problem>,
    /// How many objects each encryption key id sealed (`cleartext` for none).
    pub key_ids: std::collections::BTreeMap<String, usize>,
    /// Manifests checked: the current one and every older one still stored.
    pub manifests_checked: usize,
    /// Objects no manifest lists (an interrupted upload's leftovers); `prune` deletes old ones.
    pub orphans: Vec<super::orphans::Orphan>,
    /// The chain from the oldest snapshot to the head: runs found, and gaps missing.
    pub continuity: Vec<Range>,
    /// Archived audit-log batches whose chain was checked.
    pub audit_batches: usize,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Range {
    pub from: EndLsn,
    pub to: EndLsn,
    /// `found` or `missing`.
    pub status: &'static str,
}

/// Checks the archive; `work_dir` holds temporary copies during `deep` checks.
pub async fn verify(
    store: &dyn ObjectStore,
    deep: bool,
    work_dir: &Path,
) -> Result<Report, StoreError> {
    let mut report = Report::default();
    let newest = store
        .list(manifest::PREFIX)
        .await?
        .into_iter()
        .filter_map(|o| Some((manifest::parse_key(&o.key)?.0, o.key)))
        .max();
    let Some((_, key)) = newest else {
        report.ok = true;
        return Ok(report);
    };
    report.manifest = Some(key.clone());
    // A manifest that does not open (cleartext, or under a key not configured)
    // stops verify with its reason: nothing it lists can be checked.
    let (body, sealed_by) = store.get_sealed(&key).await?;
    report.count(body.len(), sealed_by);
    report.manifests_checked += 1;
    let decoded = Manifest::decode(&key, &body)
        .and_then(|m| manifest::check_key_id(&key, &m, &store.key_ids()).map(|()| m));
    let manifest = match decoded {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(Problem {
                key,
                problem: e.to_string(),
            });
            return Ok(report);
        }
    };

    for snapshot in manifest.snapshots.iter().chain(&manifest.rereads) {
        let objects = std::iter::once((
            &snapshot.schema.key,
            snapshot.schema.size,
            &snapshot.schema.sha256,
            None,
        ))
        .chain(
            snapshot
                .tables
                .iter()
                .map(|t| (&t.key, t.size, &t.sha256, Some(t.raw_size))),
        );
        for (key, size, sha, raw_size) in objects {
            let Some(data) = checked(store, key, size, sha, &mut report).await? else {
                continue;
            };
            if let (true, Some(raw_size)) = (deep, raw_size) {
                if let Err(problem) = deep_check_copy(&data, raw_size) {
                    report.problems.push(Problem {
                        key: key.clone(),
                        problem,
                    });
                }
            }
        }
    }

    let mut previous: Option<&manifest::SegmentEntry> = None;
    for entry in &manifest.segments {
        if let Some(prev) = previous {
            if entry.prev_sha256.as_deref() != Some(prev.sha256.as_str()) {
                report.problems.push(Problem {
                    key: entry.key.clone(),
                    problem: format!("hash chain broken: it names predecessor {:?}, but the previous segment is {}", entry.prev_sha256, prev.sha256),
                });
            }
        }
        previous = Some(entry);
        let Some(data) = checked(store, &entry.key, entry.size, &entry.sha256, &mut report).await?
        else {
            continue;
        };
        if deep {
            if let Err(problem) = deep_check_segment(&data, entry, work_dir) {
                report.problems.push(Problem {
                    key: entry.key.clone(),
                    problem,
                });
            }
        }
    }

    older_manifests(store, &key, manifest.clone(), &mut report).await?;
    let (audit_problems, audit_batches) = super::audit::check(store).await?;
    report.audit_batches = audit_batches;
    report.problems.extend(audit_problems);
    report.continuity = continuity(&manifest);
    for range in report.continuity.iter().filter(|r| r.status == "missing") {
        report.problems.push(Problem {
            key: format!("segments ({}, {}]", range.from, range.to),
            problem: "no archived segment covers this range; restores across it are impossible"
                .into(),
        });
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// Checks every stored manifest but `current`, each object they list that it
/// does not, and finds the orphans.
async fn older_manifests(
    store: &dyn ObjectStore,
    current_key: &str,
    current: Manifest,
    report: &mut Report,
) -> Result<(), StoreError> {
    let listed = store.list("").await?;
    let mut seen: std::collections::BTreeSet<String> =
        current.objects().map(|o| o.key.to_string()).collect();
    let mut manifests = vec![current];
    for object in listed
        .iter()
        .filter(|o| o.key != current_key && manifest::parse_key(&o.key).is_some())
    {
        let Some(body) = fetch(store, &object.key, report).await? else {
            continue;
        };
        report.manifests_checked += 1;
        let decoded = Manifest::decode(&object.key, &body)
            .and_then(|m| manifest::check_key_id(&object.key, &m, &store.key_ids()).map(|()| m));
        match decoded {
            Ok(m) => manifests.push(m),
            Err(e) => report.problems.push(Problem {
                key: object.key.clone(),
                problem: e.to_string(),
            }),
        }
    }
    for older in &manifests[1..] {
        for object in older.objects() {
            if seen.insert(object.key.to_string()) {
                checked(store, object.key, object.size, object.sha256, report).await?;
            }
        }
    }
    report.orphans = super::orphans::find(&listed, &manifests);
    Ok(())
}

impl Report {
    fn count(&mut self, bytes: usize, sealed_by: Option<String>) {
        self.objects_checked += 1;
        self.bytes_checked += bytes as u64;
        let id = sealed_by.unwrap_or_else(|| "cleartext".into());
        *self.key_ids.entry(id).or_default() += 1;
    }
}

/// Found runs and missing gaps from the oldest snapshot to the newest segment.
fn continuity(manifest: &Manifest) -> Vec<Range> {
    let Some(start) = manifest.snapshots.iter().map(|s| s.lsn).min() else {
        return Vec::new();
    };
    let mut ranges: Vec<Range> = Vec::new();
    let mut covered_to = start;
    for segment in manifest.segments.iter().filter(|s| s.end_lsn > start) {
        if segment.start_lsn > covered_to {
            ranges.push(Range {
                from: covered_to,
                to: segment.start_lsn,
                status: "missing",
            });
        }
        match ranges.last_mut() {
            Some(last) if last.status == "found" => last.to = last.to.max(segment.end_lsn),
            _ => ranges.push(Range {
                from: segment.start_lsn.max(start),
                to: segment.end_lsn,
                status: "found",
            }),
        }
        covered_to = covered_to.max(segment.end_lsn);
    }
    ranges
}

async fn fetch(
    store: &dyn ObjectStore,
    key: &str,
    report: &mut Report,
) -> Result<Option<Bytes>, StoreError> {
    match store.get_sealed(key).await {
        Ok((data, sealed_by)) => {
            report.count(data.len(), sealed_by);
            Ok(Some(data))
        }
        Err(StoreError::NotFound { .. }) => {
            report.problems.push(Problem {
                key: key.to_string(),
                problem: "missing from the store".into(),
            });
            Ok(None)
        }
        // A cleartext, foreign or undecryptable object is a finding about that object.
        Err(StoreError::Crypt(e)) => {
            report.problems.push(Problem {
                key: key.to_string(),
                problem: e.to_string(),
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Fetches `key` and checks its size and SHA-256 against the manifest.
async fn checked(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    sha: &str,
    report: &mut Report,
) -> Result<Option<Bytes>, StoreError> {
    let Some(data) = fetch(store, key, report).await? else {
        return Ok(None);
    };
    let problem = manifest::check_object(
        key,
        data.len() as u64,
        &manifest::sha256_hex(&data),
        size,
        sha,
    )
    .err()
    .map(|e| match e {
        super::ArchiveError::Corrupt { problem, .. } => problem,
        other => other.to_string(),
    });
    match problem {
        Some(problem) => {
            report.problems.push(Problem {
                key: key.to_string(),
                problem,
            });
            Ok(None)
        }
        None => Ok(Some(data)),
    }
}

/// Decompresses a segment, checks every record and the Seal, and decodes every pgoutput message.
fn deep_check_segment(
    data: &[u8],
    entry: &manifest::SegmentEntry,
    work_dir: &Path,
) -> Result<(), String> {
    let raw = zstd::decode_all(data).map_err(|e| format!("does not decompress: {e}"))?;
    let temp = tempfile::NamedTempFile::new_in(work_dir).map_err(|e| e.to_string())?;
    std::fs::write(temp.path(), &raw).map_err(|e| e.to_string())?;
    let segment::Sealed {
        base_ack: base,
        restart,
        index,
    } = segment::verify_sealed(temp.path()).map_err(|e| e.to_string())?;
    if base != entry.start_lsn
        || restart != entry.restart_lsn
        || index.ack_lsn != entry.end_lsn
        || index.records != entry.records
    {
        return Err(format!(
            "holds ({base}, {}] with {} records; the manifest says ({}, {}] with {}",
            index.ack_lsn, index.records, entry.start_lsn, entry.end_lsn, entry.records
        ));
    }
    let mut reader = SegmentReader::open(temp.path())
        .map_err(|e| e.to_string())?
        .ok_or("no header")?;
    let mut in_stream = false;
    while let Some((offset, record)) = reader.next_record_strict().map_err(|e| e.to_string())? {
        if record.kind != RecordKind::Wal {
            if record.kind == RecordKind::Resume {
                in_stream = false;
            }
            continue;
        }
        let message = pgoutput::decode(&record.data, in_stream)
            .map_err(|e| format!("record at offset {offset} is not valid pgoutput: {e}"))?;
        match message {
            pgoutput::Message::StreamStart(_) => in_stream = true,
            pgoutput::Message::StreamStop => in_stream = false,
            _ => {}
        }
    }
    Ok(())
}

/// Decompresses a snapshot table and walks its binary COPY framing.
fn deep_check_copy(data: &[u8], raw_size: u64) -> Result<(), String> {
    let raw = zstd::decode_all(data).map_err(|e| format!("does not decompress: {e}"))?;
    if raw.len() as u64 != raw_size {
        return Err(format!(
            "decompresses to {} bytes, the manifest says {raw_size}",
            raw.len()
        ));
    }
    copy_tuples(&raw).map(|_| ())
}

const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Counts the tuples of a binary COPY stream, checking its framing end to end.
pub fn copy_tuples(data: &[u8]) -> Result<u64, String> {
    let short = || "binary COPY data ends early".to_string();
    let i32_at = |at: usize| -> Result<i32, String> {
        data.get(at..at + 4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(short)
    };
    if !data.starts_with(COPY_SIGNATURE) {
        return Err("not binary COPY data (bad signature)".into());
    }
    let extension = usize::try_from(i32_at(COPY_SIGNATURE.len() + 4)?)
        .map_err(|_| "negative header extension")?;
    let mut at = COPY_SIGNATURE.len() + 8 + extension;
    let mut tuples = 0;
    loop {
        let fields = data
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes(b.try_into().expect("2 bytes")))
            .ok_or_else(short)?;
        at += 2;
        if fields == -1 {
            return if at == data.len() {
                Ok(tuples)
            } else {
                Err(format!("{} bytes after the COPY trailer", data.len() - at))
            };
        }
        for _ in 0..fields {
            let len = i32_at(at)?;
            at += 4;
            if len > 0 {
                at += len as usize;
            }
            if at > data.len() {
                return Err(short());
            }
        }
        tuples += 1;
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for range in &self.continuity {
            writeln!(
                f,
                "{:>7}  ({}, {}]",
                range.status.to_uppercase(),
                range.from,
                range.to
            )?;
        }
        for problem in &self.problems {
            writeln!(f, "BAD      {}: {}", problem.key, problem.problem)?;
        }
        for (id, objects) in &self.key_ids {
            writeln!(f, "KEY      {id}: {objects} objects")?;
        }
        for orphan in &self.orphans {
            let age = orphan.age_seconds.map_or("unknown age".to_string(), |s| {
                format!(
                    "{} old",
                    humantime_serde::re::humantime::format_duration(
                        std::time::Duration::from_secs(s)
                    )
                )
            });
            writeln!(
                f,
                "ORPHAN   {} ({}, {age}): no manifest lists it; `tidemark prune` deletes orphans older than a day",
                orphan.key,
                bytesize::ByteSize(orphan.size)
            )?;
        }
        let verdict = if self.ok { "OK" } else { "FAILED" };
        writeln!(
            f,
            "{verdict}: {} objects ({} manifests), {} checked, {} problems{}",
            self.objects_checked,
            self.manifests_checked,
            bytesize::ByteSize(self.bytes_checked),
            self.problems.len(),
            self.manifest
                .as_deref()
                .map(|m| format!(" (manifest {m})"))
                .unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_data(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = COPY_SIGNATURE.to_vec();
        out.extend(0i32.to_be_bytes());
        out.extend(0i32.to_be_bytes());
        for row in rows {
            out.extend((row.len() as i16).to_be_bytes());
            for field in *row {
                match field {
                    Some(v) => {
                        out.extend((v.len() as i32).to_be_bytes());
                        out.extend(*v);
                    }
                    None => out.extend((-1i32).to_be_bytes()),
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    #[test]
    fn counts_copy_tuples_and_rejects_damage() {
        let data = copy_data(&[
            &[Some(b"\0\0\0\x01"), None],
            &[Some(b"\0\0\0\x02"), Some(b"x")],
        ]);
        assert_eq!(copy_tuples(&data), Ok(2));
        assert!(copy_tuples(&data[..data.len() - 3]).is_err());
        let mut extra = data.clone();
        extra.push(0);
        assert!(copy_tuples(&extra).is_err());
        assert!(copy_tuples(b"not copy").is_err());
    }
}
