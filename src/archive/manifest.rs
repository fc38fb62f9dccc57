//! The manifest: the archive's table of contents and its commit marker
//! (format: `proto/manifest.md`).
//!
//! A manifest is written last, after every object it lists, and never
//! overwritten: each has its own key `manifests/<sequence>-<sha256>.json`, and
//! the newest sequence is current. The key names the SHA-256 of the manifest's
//! bytes, so a manifest is verified like every other object.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::ObjectStore;
use super::ArchiveError;
use crate::base::position::{EndLsn, PgTimestamp, Position};

pub const PREFIX: &str = "manifests/";
pub const FORMAT: &str = "tidemark-manifest";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub sequence: u64,
    pub created_at: PgTimestamp,
    pub source: SourceId,
    /// The id of the key the archive's objects are encrypted with (null: not encrypted).
    pub encryption_key_id: Option<String>,
    /// Base snapshots, oldest first.
    pub snapshots: Vec<SnapshotEntry>,
    pub segments: Vec<SegmentEntry>,
    /// Re-reads: some tables read again from the source, oldest first. From
    /// its point on, a re-read replaces what the base snapshot and the
    /// segments before it say of its tables (`method` is `reread`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rereads: Vec<SnapshotEntry>,
    /// The source was quiet past the last segment: see `Quiet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet: Option<Quiet>,
}

/// No transaction that changed anything finished in (`after`, `until.lsn`],
/// where `after` is where the newest chain ended when this was written (the
/// last segment's end, or a newer snapshot's point); `until.time` is the
/// commit time of the newest transaction there (a heartbeat). Capture records this instead
/// of uploading segments that hold only heartbeats, so an idle source adds
/// no objects while the restore window still follows its clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quiet {
    pub after: EndLsn,
    pub until: Position,
}

/// A base snapshot: every watched table as of `lsn` (all transactions that
/// finished at or before it, none after).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotEntry {
    pub lsn: EndLsn,
    pub time: PgTimestamp,
    /// `copy` (read from the source), `compaction` (built from the archive) or
    /// `reread` (some tables read from the source again).
    pub method: String,
    pub schema: ObjectRef,
    pub tables: Vec<TableObject>,
}

/// An object a manifest lists, with what it must be.
pub struct Listed<'a> {
    pub key: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

impl Manifest {
    /// Every object this manifest lists: each snapshot's schema and tables, and the segments.
    pub fn objects(&self) -> impl Iterator<Item = Listed<'_>> {
        let snapshots = self.snapshots.iter().chain(&self.rereads).flat_map(|s| {
            std::iter::once(Listed {
                key: &s.schema.key,
                size: s.schema.size,
                sha256: &s.schema.sha256,
            })
            .chain(s.tables.iter().map(|t| Listed {
                key: &t.key,
                size: t.size,
                sha256: &t.sha256,
            }))
        });
        let segments = self.segments.iter().map(|s| Listed {
            key: &s.key,
            size: s.size,
            sha256: &s.sha256,
        });
        snapshots.chain(segments)
    }
}

impl SnapshotEntry {
    /// The restore point the snapshot is.
    pub fn position(&self) -> Position {
        Position {
            commit_time: self.time,
            lsn: self.lsn,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// One table's rows: binary COPY format, zstd-compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableObject {
    pub table: crate::base::table::TableName,
    pub key: String,
    /// The copied columns, in order (generated columns are not copied).
    pub columns: Vec<String>,
    pub size: u64,
    pub sha256: String,
    pub raw_size: u64,
}

/// Which database and slot the archive belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceId {
    pub system_identifier: String,
    pub database: String,
    pub slot: String,
}

/// One archived segment: covers resume positions (start_lsn, end_lsn].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentEntry {
    pub key: String,
    pub start_lsn: EndLsn,
    pub end_lsn: EndLsn,
    /// A reader that starts at this segment must read from the segment whose
    /// start_lsn this is, to see whole every transaction open at its start.
    pub restart_lsn: EndLsn,
    pub first_commit_time: Option<PgTimestamp>,
    pub last_commit_time: Option<PgTimestamp>,
    pub records: u64,
    /// Size and SHA-256 of the stored (compressed) object.
    pub size: u64,
    pub sha256: String,
    /// Size and SHA-256 of the segment file before compression.
    pub raw_size: u64,
    pub raw_sha256: String,
    /// The previous entry's `sha256`: the hash chain. `None` for the first.
    pub prev_sha256: Option<String>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks an object's measured size and SHA-256 against what the manifest says.
pub fn check_object(
    key: &str,
    size: u64,
    sha256: &str,
    listed_size: u64,
    listed_sha256: &str,
) -> Result<(), ArchiveError> {
    if size == listed_size && sha256 == listed_sha256 {
        return Ok(());
    }
    Err(ArchiveError::Corrupt {
        key: key.to_string(),
        problem: format!("{size} bytes with SHA-256 {sha256}; the manifest says {listed_size} bytes with {listed_sha256}"),
    })
}

impl Manifest {
    pub fn new(source: SourceId) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            sequence: 0,
            created_at: PgTimestamp::now(),
            source,
            encryption_key_id: None,
            snapshots: Vec::new(),
            segments: Vec::new(),
            rereads: Vec::new(),
            quiet: None,
        }
    }

    /// The next manifest's key and bytes.
    pub fn encode(&self) -> (String, Bytes) {
        let body = serde_json::to_vec_pretty(self).expect("manifests serialize");
        let key = format!("{PREFIX}{:016X}-{}.json", self.sequence, sha256_hex(&body));
        (key, Bytes::from(body))
    }

    /// Parses and verifies a manifest read from `key`.
    pub fn decode(key: &str, body: &[u8]) -> Result<Manifest, ArchiveError> {
        let corrupt = |problem: String| ArchiveError::Corrupt {
            key: key.to_string(),
            problem,
        };
        let (sequence, sha) = parse_key(key)
            .ok_or_else(|| corrupt("its name is not <sequence>-<sha256>.json".into()))?;
        let actual = sha256_hex(body);
        if actual != sha {
            return Err(corrupt(format!("SHA-256 is {actual}, its name says {sha}")));
        }
        let probe: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))?;
        if probe.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(corrupt("not a tidemark manifest".into()));
        }
        let version = probe.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(VERSION) {
            return Err(ArchiveError::UnsupportedManifest {
                key: key.to_string(),
                version,
            });
        }
        let manifest: Manifest =
            serde_json::from_value(probe).map_err(|e| corrupt(e.to_string()))?;
        if manifest.sequence != sequence {
            return Err(corrupt(format!(
                "holds sequence {}, its name says {sequence}",
                manifest.sequence
            )));
        }
        Ok(manifest)
    }
}

/// `manifests/<16 hex>-<64 hex>.json` → (sequence, sha256).
pub fn parse_key(key: &str) -> Option<(u64, &str)> {
    let name = key.strip_prefix(PREFIX)?.strip_suffix(".json")?;
    let (sequence, sha) = name.split_once('-')?;
    if sequence.len() != 16 || sha.len() != 64 {
        return None;
    }
    Some((u64::from_str_radix(sequence, 16).ok()?, sha))
}

/// Writes the next manifest: the current one changed by `change`. Only for a
/// caller that is the archive's sole writer (it holds the log dir's lock).
pub async fn update(
    store: &dyn ObjectStore,
    change: impl FnOnce(&mut Manifest),
) -> Result<String, ArchiveError> {
    let (_, mut next) = load_latest(store)
        .await?
        .ok_or_else(|| ArchiveError::Missing {
            key: format!("{PREFIX}(any)"),
        })?;
    change(&mut next);
    store_next(store, &mut next).await
}

/// Stores `next` as the following manifest, the commit point of everything it
/// lists: the next sequence, this store's key id, and a key naming its hash.
pub async fn store_next(
    store: &dyn ObjectStore,
    next: &mut Manifest,
) -> Result<String, ArchiveError> {
    next.encryption_key_id = store.key_id();
    next.sequence += 1;
    next.created_at = PgTimestamp::now();
    let (key, body) = next.encode();
    store.put(&key, body, &Default::default()).await?;
    Ok(key)
}

/// Every manifest in the store, oldest first, by sequence.
pub async fn list_keys(store: &dyn ObjectStore) -> Result<Vec<(u64, String)>, ArchiveError> {
    let mut keys: Vec<(u64, String)> = store
        .list(PREFIX)
        .await?
        .into_iter()
        .filter_map(|o| Some((parse_key(&o.key)?.0, o.key)))
        .collect();
    keys.sort();
    Ok(keys)
}

/// The current manifest: the one with the highest sequence, verified.
pub async fn load_latest(
    store: &dyn ObjectStore,
) -> Result<Option<(String, Manifest)>, ArchiveError> {
    let listed = store.list(PREFIX).await?;
    let newest = listed
        .iter()
        .filter_map(|o| parse_key(&o.key).map(|(seq, _)| (seq, &o.key)))
        .max();
    let Some((_, key)) = newest else {
        return Ok(None);
    };
    let body = store.get(key).await?;
    let manifest = Manifest::decode(key, &body)?;
    check_key_id(key, &manifest, &store.key_ids())?;
    Ok(Some((key.clone(), manifest)))
}

/// The manifest's `encryption_key_id` must be one of the configured keys, or
/// absent when none is: a manifest that disagrees with how it was read is not trusted.
pub fn check_key_id(
    key: &str,
    manifest: &Manifest,
    configured: &[String],
) -> Result<(), ArchiveError> {
    let problem = match &manifest.encryption_key_id {
        None if configured.is_empty() => return Ok(()),
        Some(id) if configured.contains(id) => return Ok(()),
        None => "it says the archive is not encrypted, yet it was read with a key".to_string(),
        Some(id) if configured.is_empty() => {
            format!("it says the archive is encrypted with key {id}, yet it was read as cleartext")
        }
        Some(id) => format!(
            "it names encryption key {id}, which is not among the configured keys ({})",
            configured.join(", ")
        ),
    };
    Err(ArchiveError::Corrupt {
        key: key.to_string(),
        problem,
    })
}

/// Manifest entries for unit tests of the code that reads manifests.
#[cfg(test)]
pub(crate) mod test_entries {
    use super::*;
    use crate::base::position::Lsn;

    /// A segment covering (start, end], its commits between `time - 1` and `time`.
    pub fn segment(start: u64, end: u64, time: i64) -> SegmentEntry {
        SegmentEntry {
            key: format!("segments/{start}-{end}"),
            start_lsn: EndLsn(Lsn(start)),
            end_lsn: EndLsn(Lsn(end)),
            restart_lsn: EndLsn(Lsn(start)),
            first_commit_time: Some(PgTimestamp(time - 1)),
            last_commit_time: Some(PgTimestamp(time)),
            records: 1,
            size: 10,
            sha256: String::new(),
            raw_size: 30,
            raw_sha256: String::new(),
            prev_sha256: None,
        }
    }

    pub fn snapshot(lsn: u64, time: i64) -> SnapshotEntry {
        SnapshotEntry {
            lsn: EndLsn(Lsn(lsn)),
            time: PgTimestamp(time),
            method: "copy".into(),
            schema: ObjectRef {
                key: format!("snapshots/{lsn}/schema.json"),
                size: 1,
                sha256: String::new(),
            },
            tables: vec![],
        }
    }

    pub fn manifest(snapshots: Vec<SnapshotEntry>, segments: Vec<SegmentEntry>) -> Manifest {
        let mut m = Manifest::new(SourceId {
            system_identifier: "1".into(),
            database: "d".into(),
            slot: "s".into(),
        });
        m.snapshots = snapshots;
        m.segments = segments;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{EndLsn, Lsn};

    fn sample() -> Manifest {
        let mut m = Manifest::new(SourceId {
            system_identifier: "7300000000000000001".into(),
            database: "app".into(),
            slot: "tidemark".into(),
        });
        m.sequence = 3;
        m.segments.push(SegmentEntry {
            key: "segments/0000000000000000-0000000001000000-abc.seg.zst".into(),
            start_lsn: EndLsn(Lsn(0)),
            end_lsn: EndLsn(Lsn(0x100_0000)),
            restart_lsn: EndLsn(Lsn(0)),
            first_commit_time: Some(PgTimestamp(5)),
            last_commit_time: Some(PgTimestamp(9)),
            records: 12,
            size: 100,
            sha256: "00".repeat(32),
            raw_size: 300,
            raw_sha256: "11".repeat(32),
            prev_sha256: None,
        });
        m
    }

    #[test]
    fn round_trips_and_names_its_hash() {
        let m = sample();
        let (key, body) = m.encode();
        assert!(key.starts_with("manifests/0000000000000003-"));
        assert_eq!(Manifest::decode(&key, &body).unwrap(), m);
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let (key, body) = sample().encode();
        for bit in (0..body.len() * 8).step_by(7) {
            let mut flipped = body.to_vec();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let error = Manifest::decode(&key, &flipped).unwrap_err();
            assert!(error.to_string().contains(&key), "{error}");
        }
    }

    #[test]
    fn another_version_is_named() {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().encode().1).unwrap();
        value["version"] = 2.into();
        let body = serde_json::to_vec(&value).unwrap();
        let key = format!("{PREFIX}{:016X}-{}.json", 3, sha256_hex(&body));
        assert!(matches!(
            Manifest::decode(&key, &body),
            Err(ArchiveError::UnsupportedManifest { version: 2, .. })
        ));
    }
}
