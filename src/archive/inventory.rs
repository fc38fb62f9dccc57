//! What the archive can restore: the window, the snapshots, the segments and
//! any gaps, computed from the manifest alone (`tidemark list`).

use serde::Serialize;

use super::manifest::Manifest;
use crate::base::position::{EndLsn, PgTimestamp, Position};

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Inventory {
    /// `None` while the archive has no base snapshot: nothing is restorable yet.
    pub window: Option<Window>,
    pub snapshots: Vec<SnapshotSummary>,
    /// Tables read from the source again (`archive::reread`), oldest first.
    pub rereads: Vec<RereadSummary>,
    pub segments: SegmentSummary,
    pub gaps: Vec<Gap>,
    pub manifest: Option<ManifestSummary>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RereadSummary {
    pub lsn: EndLsn,
    pub time: PgTimestamp,
    pub tables: Vec<crate::base::table::TableName>,
    pub bytes: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Window {
    pub earliest: Position,
    pub latest: Position,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub lsn: EndLsn,
    pub time: PgTimestamp,
    pub method: String,
    pub tables: usize,
    pub bytes: u64,
    pub raw_bytes: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq, Default)]
pub struct SegmentSummary {
    pub count: usize,
    pub bytes: u64,
    pub raw_bytes: u64,
    pub first_lsn: Option<EndLsn>,
    pub last_lsn: Option<EndLsn>,
}

/// Resume positions in (from, to] that no archived segment covers.
#[derive(Debug, Serialize, PartialEq, Eq, Clone, Copy)]
pub struct Gap {
    pub from: EndLsn,
    pub to: EndLsn,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ManifestSummary {
    pub key: String,
    pub sequence: u64,
}

/// Breaks in the segment chain, in order.
pub fn gaps(manifest: &Manifest) -> Vec<Gap> {
    manifest
        .segments
        .windows(2)
        .filter(|pair| pair[1].start_lsn != pair[0].end_lsn)
        .map(|pair| Gap {
            from: pair[0].end_lsn,
            to: pair[1].start_lsn,
        })
        .collect()
}

/// The newest point restorable from a snapshot at `lsn`: the end of the
/// contiguous run of segments that continues it.
pub fn chain_end(manifest: &Manifest, snapshot: Position) -> Position {
    let lsn = snapshot.lsn;
    let mut end = snapshot;
    let mut covered = false;
    for segment in &manifest.segments {
        if !covered {
            // The segment the snapshot falls in (or the first after it, if they touch).
            if segment.start_lsn <= lsn && lsn <= segment.end_lsn {
                covered = true;
            } else {
                continue;
            }
        } else if segment.start_lsn != end.lsn {
            break;
        }
        if segment.end_lsn > end.lsn {
            end.lsn = segment.end_lsn;
            if let Some(t) = segment.last_commit_time {
                end.commit_time = end.commit_time.max(t);
            }
        }
    }
    // Past the chain's end, nothing but heartbeats finished until `quiet`.
    if let Some(quiet) = &manifest.quiet {
        if quiet.after == end.lsn && quiet.until.lsn > end.lsn {
            end.lsn = quiet.until.lsn;
            end.commit_time = end.commit_time.max(quiet.until.commit_time);
        }
    }
    end
}

pub fn inventory(manifest: Option<(&str, &Manifest)>) -> Inventory {
    let Some((key, manifest)) = manifest else {
        return Inventory {
            window: None,
            snapshots: Vec::new(),
            rereads: Vec::new(),
            segments: SegmentSummary::default(),
            gaps: Vec::new(),
            manifest: None,
        };
    };
    let earliest = manifest
        .snapshots
        .iter()
        .min_by_key(|s| s.lsn)
        .map(|s| s.position());
    let latest = manifest
        .snapshots
        .iter()
        .map(|s| chain_end(manifest, s.position()))
        .max_by_key(|p| p.lsn);
    Inventory {
        window: earliest
            .zip(latest)
            .map(|(earliest, latest)| Window { earliest, latest }),
        snapshots: manifest
            .snapshots
            .iter()
            .map(|s| SnapshotSummary {
                lsn: s.lsn,
                time: s.time,
                method: s.method.clone(),
                tables: s.tables.len(),
                bytes: s.tables.iter().map(|t| t.size).sum::<u64>() + s.schema.size,
                raw_bytes: s.tables.iter().map(|t| t.raw_size).sum(),
            })
            .collect(),
        rereads: manifest
            .rereads
            .iter()
            .map(|r| RereadSummary {
                lsn: r.lsn,
                time: r.time,
                tables: r.tables.iter().map(|t| t.table.clone()).collect(),
                bytes: r.tables.iter().map(|t| t.size).sum::<u64>() + r.schema.size,
            })
            .collect(),
        segments: SegmentSummary {
            count: manifest.segments.len(),
            bytes: manifest.segments.iter().map(|s| s.size).sum(),
            raw_bytes: manifest.segments.iter().map(|s| s.raw_size).sum(),
            first_lsn: manifest.segments.first().map(|s| s.start_lsn),
            last_lsn: manifest.segments.last().map(|s| s.end_lsn),
        },
        gaps: gaps(manifest),
        manifest: Some(ManifestSummary {
            key: key.to_string(),
            sequence: manifest.sequence,
        }),
    }
}

impl std::fmt::Display for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(manifest) = &self.manifest else {
            return writeln!(
                f,
                "The archive is empty: capture has not uploaded anything yet."
            );
        };
        match &self.window {
            Some(w) => writeln!(
                f,
                "Restore window: {} ({}) to {} ({})",
                w.earliest.commit_time, w.earliest.lsn, w.latest.commit_time, w.latest.lsn
            )?,
            None => writeln!(f, "Restore window: none yet (no base snapshot)")?,
        }
        writeln!(f, "Snapshots: {}", self.snapshots.len())?;
        for s in &self.snapshots {
            writeln!(
                f,
                "  {:>12}  {}  {:<10} {} tables, {} stored ({} raw)",
                s.lsn.to_string(),
                s.time,
                s.method,
                s.tables,
                bytesize::ByteSize(s.bytes),
                bytesize::ByteSize(s.raw_bytes)
            )?;
        }
        for r in &self.rereads {
            let tables: Vec<String> = r.tables.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "Re-read {:>12}  {}  {} ({})",
                r.lsn.to_string(),
                r.time,
                tables.join(", "),
                bytesize::ByteSize(r.bytes)
            )?;
        }
        let seg = &self.segments;
        write!(
            f,
            "Segments: {}, {} stored ({} raw)",
            seg.count,
            bytesize::ByteSize(seg.bytes),
            bytesize::ByteSize(seg.raw_bytes)
        )?;
        if let (Some(first), Some(last)) = (seg.first_lsn, seg.last_lsn) {
            write!(f, ", covering {first} to {last}")?;
        }
        writeln!(f)?;
        if self.gaps.is_empty() {
            writeln!(f, "Gaps: none")?;
        } else {
            for gap in &self.gaps {
                writeln!(
                    f,
                    "Gap: nothing archived between {} and {}",
                    gap.from, gap.to
                )?;
            }
        }
        writeln!(
            f,
            "Manifest: {} (sequence {})",
            manifest.key, manifest.sequence
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::test_entries::{manifest, segment, snapshot};
    use crate::base::position::{EndLsn, Lsn};

    #[test]
    fn the_window_runs_from_the_oldest_snapshot_to_the_chain_end() {
        let m = manifest(
            vec![snapshot(150, 15)],
            vec![
                segment(0, 100, 10),
                segment(100, 200, 20),
                segment(200, 300, 30),
            ],
        );
        let inv = inventory(Some(("k", &m)));
        let w = inv.window.unwrap();
        assert_eq!(
            (w.earliest.lsn, w.latest.lsn),
            (EndLsn(Lsn(150)), EndLsn(Lsn(300)))
        );
        assert_eq!(w.latest.commit_time, PgTimestamp(30));
        assert!(inv.gaps.is_empty());
        assert_eq!(inv.segments.bytes, 30);
    }

    #[test]
    fn a_gap_ends_the_window_and_is_reported() {
        let m = manifest(
            vec![snapshot(50, 5)],
            vec![
                segment(0, 100, 10),
                segment(100, 200, 20),
                segment(250, 300, 30),
            ],
        );
        let inv = inventory(Some(("k", &m)));
        assert_eq!(inv.window.unwrap().latest.lsn, EndLsn(Lsn(200)));
        assert_eq!(
            inv.gaps,
            vec![Gap {
                from: EndLsn(Lsn(200)),
                to: EndLsn(Lsn(250))
            }]
        );
    }

    #[test]
    fn a_quiet_source_carries_the_window_past_the_last_segment() {
        use crate::archive::manifest::Quiet;
        let mut m = manifest(
            vec![snapshot(50, 5)],
            vec![segment(0, 100, 10), segment(100, 200, 20)],
        );
        let quiet = |after: u64| Quiet {
            after: EndLsn(Lsn(after)),
            until: Position {
                commit_time: PgTimestamp(90),
                lsn: EndLsn(Lsn(260)),
            },
        };
        m.quiet = Some(quiet(200));
        let latest = inventory(Some(("k", &m))).window.unwrap().latest;
        assert_eq!(
            (latest.lsn, latest.commit_time),
            (EndLsn(Lsn(260)), PgTimestamp(90))
        );
        // Said of an older end: a segment since may hold changes, so it says nothing.
        m.quiet = Some(quiet(100));
        assert_eq!(
            inventory(Some(("k", &m))).window.unwrap().latest.lsn,
            EndLsn(Lsn(200))
        );
    }

    #[test]
    fn no_snapshot_means_no_window() {
        let m = manifest(vec![], vec![segment(0, 100, 10)]);
        assert_eq!(inventory(Some(("k", &m))).window, None);
        assert_eq!(inventory(None).manifest, None);
    }
}
