//! Orphans: objects in the store that no kept manifest lists. An upload or a
//! snapshot interrupted before its manifest was written leaves them (the
//! commit rule makes them invisible to readers, not absent). `verify` lists
//! them with their age; `prune` deletes those older than a day, so an upload
//! still waiting for its manifest is never taken for one.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::manifest::{self, Manifest};
use super::store::{ObjectInfo, ObjectStore};

/// Orphans younger than this may be an upload whose manifest is still to come.
pub const MIN_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Orphan {
    pub key: String,
    pub size: u64,
    /// Seconds since the store last wrote it, when the store says.
    pub age_seconds: Option<u64>,
}

impl Orphan {
    pub fn older_than(&self, age: Duration) -> bool {
        self.age_seconds.is_some_and(|s| s >= age.as_secs())
    }
}

/// The objects of `listed` (every object in the store) that are neither a
/// manifest, nor an audit batch, nor listed by one of `manifests`.
pub fn find(listed: &[ObjectInfo], manifests: &[Manifest]) -> Vec<Orphan> {
    let kept: BTreeSet<&str> = manifests
        .iter()
        .flat_map(|m| m.objects().map(|o| o.key))
        .collect();
    let now = SystemTime::now();
    listed
        .iter()
        .filter(|o| {
            manifest::parse_key(&o.key).is_none()
                && !o.key.starts_with(super::audit::PREFIX)
                && !kept.contains(o.key.as_str())
        })
        .map(|o| Orphan {
            key: o.key.clone(),
            size: o.size,
            age_seconds: o
                .modified
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs()),
        })
        .collect()
}

/// Every manifest in the store that decodes: for prune, which must not take
/// what any of them lists. One that does not decode stops it (verify names it).
pub async fn kept_manifests(
    store: &dyn ObjectStore,
    listed: &[ObjectInfo],
) -> Result<Vec<Manifest>, super::ArchiveError> {
    let mut manifests = Vec::new();
    for object in listed
        .iter()
        .filter(|o| manifest::parse_key(&o.key).is_some())
    {
        let body = store.get(&object.key).await?;
        manifests.push(Manifest::decode(&object.key, &body)?);
    }
    Ok(manifests)
}

/// Deletes the orphans older than [`MIN_AGE`]; returns them.
pub async fn delete_old(store: &dyn ObjectStore) -> Result<Vec<Orphan>, super::ArchiveError> {
    let listed = store.list("").await?;
    let manifests = kept_manifests(store, &listed).await?;
    let old: Vec<Orphan> = find(&listed, &manifests)
        .into_iter()
        .filter(|o| o.older_than(MIN_AGE))
        .collect();
    for orphan in &old {
        store.delete(&orphan.key).await?;
        tracing::info!(key = %orphan.key, "deleted an orphan no manifest lists");
    }
    Ok(old)
}
