//! Retention: what `tidemark prune` may delete without losing a restore point
//! it promised to keep.
//!
//! Why pruning never breaks a kept point: every point in the window lies at
//! or after the window's start, so it is restored from the newest snapshot at
//! or before that start (the anchor) plus the segments after the anchor; both
//! are kept, as is every later snapshot. Older daily, weekly and monthly
//! snapshots are kept whole, as restore points of their own. Pruning writes
//! the manifest without the pruned entries first and deletes objects after,
//! so a crash in between leaves only unlisted objects behind.

use std::collections::BTreeMap;

use chrono::Datelike;
use serde::Serialize;

use super::manifest::{Manifest, SegmentEntry, SnapshotEntry};
use crate::base::position::{EndLsn, PgTimestamp};
pub use crate::config::RetentionPolicy;

#[derive(Debug, Default, Serialize)]
pub struct PrunePlan {
    /// The snapshot that restores the window's oldest point.
    pub anchor: Option<EndLsn>,
    pub kept_snapshots: Vec<EndLsn>,
    #[serde(skip)]
    pub delete_snapshots: Vec<SnapshotEntry>,
    #[serde(skip)]
    pub delete_segments: Vec<SegmentEntry>,
    /// Re-reads at or before the anchor: every kept point restores without them.
    #[serde(skip)]
    pub delete_rereads: Vec<SnapshotEntry>,
    pub deleted_snapshots: Vec<EndLsn>,
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    /// Objects no manifest lists, older than a day (`archive::orphans`).
    pub deleted_orphans: Vec<super::orphans::Orphan>,
}

pub fn plan(manifest: &Manifest, policy: &RetentionPolicy, now: PgTimestamp) -> PrunePlan {
    let window_start = PgTimestamp(now.0 - policy.window.as_micros() as i64);
    let mut snapshots: Vec<&SnapshotEntry> = manifest.snapshots.iter().collect();
    snapshots.sort_by_key(|s| s.lsn);
    let Some(anchor) = snapshots
        .iter()
        .rev()
        .find(|s| s.time <= window_start)
        .or_else(|| snapshots.first())
        .copied()
    else {
        return PrunePlan::default();
    };
    let older: Vec<&SnapshotEntry> = snapshots
        .iter()
        .copied()
        .filter(|s| s.lsn < anchor.lsn)
        .collect();
    let mut keep: Vec<EndLsn> = snapshots
        .iter()
        .filter(|s| s.lsn >= anchor.lsn)
        .map(|s| s.lsn)
        .collect();
    let newest_per = |bucket: &dyn Fn(&SnapshotEntry) -> (i32, u32), count: usize| -> Vec<EndLsn> {
        let mut newest: BTreeMap<(i32, u32), EndLsn> = BTreeMap::new();
        for s in &older {
            let entry = newest.entry(bucket(s)).or_insert(s.lsn);
            *entry = (*entry).max(s.lsn);
        }
        newest.values().rev().take(count).copied().collect()
    };
    keep.extend(newest_per(
        &|s| (s.time.to_utc().year(), s.time.to_utc().ordinal()),
        policy.daily,
    ));
    keep.extend(newest_per(
        &|s| {
            let week = s.time.to_utc().iso_week();
            (week.year(), week.week())
        },
        policy.weekly,
    ));
    keep.extend(newest_per(
        &|s| (s.time.to_utc().year(), s.time.to_utc().month()),
        policy.monthly,
    ));
    keep.sort();
    keep.dedup();
    let delete_snapshots: Vec<SnapshotEntry> = manifest
        .snapshots
        .iter()
        .filter(|s| !keep.contains(&s.lsn))
        .cloned()
        .collect();
    // Transactions open at the anchor began in earlier segments: keep those too.
    let keep_from = manifest
        .segments
        .iter()
        .find(|s| s.end_lsn > anchor.lsn)
        .map_or(anchor.lsn, |s| s.restart_lsn.min(s.start_lsn));
    let delete_segments: Vec<SegmentEntry> = manifest
        .segments
        .iter()
        .filter(|s| s.end_lsn <= anchor.lsn && s.start_lsn < keep_from)
        .cloned()
        .collect();
    let delete_rereads: Vec<SnapshotEntry> = manifest
        .rereads
        .iter()
        .filter(|r| r.lsn <= anchor.lsn)
        .cloned()
        .collect();
    PrunePlan {
        anchor: Some(anchor.lsn),
        kept_snapshots: keep,
        deleted_snapshots: delete_snapshots.iter().map(|s| s.lsn).collect(),
        deleted_segments: delete_segments.len(),
        deleted_bytes: delete_segments.iter().map(|s| s.size).sum::<u64>()
            + delete_snapshots
                .iter()
                .chain(&delete_rereads)
                .map(|s| s.schema.size + s.tables.iter().map(|t| t.size).sum::<u64>())
                .sum::<u64>(),
        delete_snapshots,
        delete_segments,
        delete_rereads,
        deleted_orphans: Vec::new(),
    }
}

impl PrunePlan {
    pub fn is_empty(&self) -> bool {
        self.delete_snapshots.is_empty()
            && self.delete_segments.is_empty()
            && self.delete_rereads.is_empty()
    }

    /// Removes the pruned entries from a manifest (the next one to be written).
    pub fn apply_to(&self, manifest: &mut Manifest) {
        manifest
            .snapshots
            .retain(|s| !self.deleted_snapshots.contains(&s.lsn));
        let gone: Vec<&str> = self
            .delete_segments
            .iter()
            .map(|s| s.key.as_str())
            .collect();
        manifest
            .segments
            .retain(|s| !gone.contains(&s.key.as_str()));
        manifest.rereads.retain(|r| {
            !self
                .delete_rereads
                .iter()
                .any(|d| d.schema.key == r.schema.key)
        });
    }

    /// Every object key the plan deletes.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.delete_segments.iter().map(|s| s.key.clone()).collect();
        for s in self.delete_snapshots.iter().chain(&self.delete_rereads) {
            keys.push(s.schema.key.clone());
            keys.extend(s.tables.iter().map(|t| t.key.clone()));
        }
        keys
    }
}

/// How many older manifests to keep beside the current one (for forensics).
pub const MANIFESTS_KEPT: usize = 16;

/// Deletes the plan's objects, then manifests beyond the newest few. Call
/// only after a manifest without the pruned entries is stored.
///
/// Older manifests that list a pruned object go first: every manifest kept
/// stays whole (verify checks them all), and a crash midway leaves at worst
/// objects no manifest lists, which are orphans.
pub async fn delete(
    store: &dyn super::store::ObjectStore,
    plan: &PrunePlan,
) -> Result<usize, super::ArchiveError> {
    let doomed: std::collections::BTreeSet<String> = plan.keys().into_iter().collect();
    let mut manifests = super::manifest::list_keys(store).await?;
    manifests.pop();
    let mut deleted = 0;
    for (_, key) in manifests {
        let body = store.get(&key).await?;
        let lists_doomed = super::manifest::Manifest::decode(&key, &body)
            .is_ok_and(|m| m.objects().any(|o| doomed.contains(o.key)));
        if lists_doomed {
            store.delete(&key).await?;
            deleted += 1;
        }
    }
    for key in plan.keys() {
        store.delete(&key).await?;
        deleted += 1;
    }
    Ok(deleted + trim_manifests(store).await?)
}

/// Deletes all but the newest `MANIFESTS_KEPT` older manifests: readers only
/// ever use the current one, and every commit writes a new one.
pub async fn trim_manifests(
    store: &dyn super::store::ObjectStore,
) -> Result<usize, super::ArchiveError> {
    let keys = super::manifest::list_keys(store).await?;
    let excess = keys.len().saturating_sub(MANIFESTS_KEPT + 1);
    for (_, key) in keys.iter().take(excess) {
        store.delete(key).await?;
    }
    Ok(excess)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::test_entries::{segment, snapshot};
    use crate::base::position::{EndLsn, Lsn};

    const DAY: i64 = 86_400_000_000;

    fn manifest() -> Manifest {
        // One snapshot a day for 40 days (LSN = day * 100), segments between them.
        crate::archive::manifest::test_entries::manifest(
            (1..=40)
                .map(|d| snapshot(d * 100, d as i64 * DAY))
                .collect(),
            (0..40)
                .map(|d| segment(d * 100, d * 100 + 100, 0))
                .collect(),
        )
    }

    fn policy(window_days: u64, daily: usize, weekly: usize, monthly: usize) -> RetentionPolicy {
        RetentionPolicy {
            window: std::time::Duration::from_secs(window_days * 86_400),
            daily,
            weekly,
            monthly,
        }
    }

    #[test]
    fn the_window_keeps_its_anchor_and_everything_after() {
        let m = manifest();
        let now = PgTimestamp(40 * DAY + DAY / 2);
        let p = plan(&m, &policy(7, 0, 0, 0), now);
        // Window start is day 33.5: anchored by the day-33 snapshot.
        assert_eq!(p.anchor, Some(EndLsn(Lsn(3300))));
        assert_eq!(p.kept_snapshots.first(), Some(&EndLsn(Lsn(3300))));
        assert_eq!(p.kept_snapshots.len(), 8);
        assert!(p
            .delete_segments
            .iter()
            .all(|s| s.end_lsn <= EndLsn(Lsn(3300))));
        assert_eq!(p.delete_segments.len(), 33);
        let mut after = m.clone();
        p.apply_to(&mut after);
        assert_eq!(after.segments.first().unwrap().start_lsn, EndLsn(Lsn(3300)));
        assert_eq!(after.snapshots.len(), 8);
    }

    #[test]
    fn rereads_go_once_the_anchor_is_past_them() {
        let mut m = manifest();
        m.rereads = vec![snapshot(3250, 0), snapshot(3300, 0), snapshot(3350, 0)];
        m.rereads[0].schema.key = "rereads/a/schema.json".into();
        m.rereads[1].schema.key = "rereads/b/schema.json".into();
        m.rereads[2].schema.key = "rereads/c/schema.json".into();
        let p = plan(&m, &policy(7, 0, 0, 0), PgTimestamp(40 * DAY + DAY / 2));
        assert_eq!(p.anchor, Some(EndLsn(Lsn(3300))));
        assert_eq!(p.delete_rereads.len(), 2);
        assert!(p.keys().contains(&"rereads/b/schema.json".to_string()));
        let mut after = m.clone();
        p.apply_to(&mut after);
        assert_eq!(after.rereads, vec![m.rereads[2].clone()]);
    }

    #[test]
    fn daily_weekly_and_monthly_snapshots_survive_beyond_the_window() {
        let m = manifest();
        let now = PgTimestamp(40 * DAY + DAY / 2);
        let p = plan(&m, &policy(7, 3, 2, 1), now);
        for kept in [3200, 3100, 3000] {
            assert!(
                p.kept_snapshots.contains(&EndLsn(Lsn(kept))),
                "daily {kept}"
            );
        }
        assert!(p.kept_snapshots.len() >= 8 + 3);
        assert!(p.kept_snapshots.len() <= 8 + 3 + 2 + 1);
        // Segments are only kept from the anchor on: older snapshots stand alone.
        assert_eq!(p.delete_segments.len(), 33);
    }

    #[test]
    fn segments_where_open_transactions_began_are_kept() {
        let mut m = manifest();
        // The segment after the day-33 anchor continues a transaction begun at 3000.
        m.segments[33].restart_lsn = EndLsn(Lsn(3000));
        let p = plan(&m, &policy(7, 0, 0, 0), PgTimestamp(40 * DAY + DAY / 2));
        assert_eq!(p.anchor, Some(EndLsn(Lsn(3300))));
        assert_eq!(p.delete_segments.len(), 30);
        assert!(p
            .delete_segments
            .iter()
            .all(|s| s.start_lsn < EndLsn(Lsn(3000))));
    }

    #[test]
    fn a_window_longer_than_the_archive_keeps_every_restore_point() {
        let m = manifest();
        let p = plan(&m, &policy(365, 0, 0, 0), PgTimestamp(40 * DAY));
        assert_eq!(p.anchor, Some(EndLsn(Lsn(100))));
        assert!(p.delete_snapshots.is_empty());
        // Only what precedes the oldest snapshot, which nothing can restore.
        assert_eq!(
            p.delete_segments
                .iter()
                .map(|s| s.end_lsn)
                .collect::<Vec<_>>(),
            vec![EndLsn(Lsn(100))]
        );
    }
}
