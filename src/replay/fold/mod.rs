//! Changes folded into a fresh table's snapshot before it loads, so each row
//! reaches the target once: the snapshot's rows whose key the changes touched
//! are left out of its COPY, and each touched key's final row follows it.
//!
//! Why the result is exact: a restored table is new and offline, and replay
//! only needs each key's final state. Per key, the last change wins (as in
//! `merge`); a key no change touched keeps its snapshot row, and a touched
//! key's snapshot row is replaced by its final row or, if deleted, by
//! nothing. A snapshot row's key is read so that it equals the same value's
//! key in a change (`keys`). Anything a fold cannot take (a TOASTed value the
//! change left out, a schema change, a statement, a truncate) makes the
//! applier load the snapshot whole and stage the fold, which then merges
//! like any other net effect: slower, never different.
//!
//! Memory follows the keys touched, not the changes: replaced rows are
//! compacted away, and when the rows held outgrow the budget they are
//! written to a spill file and the keys remember which file holds their
//! last row. A spill file may hold older rows of a key a later file
//! replaced; reading it back keeps only the rows the keys point at, so the
//! order spills are read in does not matter.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::merge::{copy_value, NetStage};
use crate::archive::manifest::TableObject;
use crate::source::pgoutput::{OldTuple, Relation, Tuple, TupleValue};
use crate::source::schema::TableSchema;
use arena::{Arena, BLOCK};
use keys::{Final, Key, KeyType, Keys};

mod arena;
mod filter;
mod keys;
#[cfg(test)]
mod tests;

pub use filter::SnapshotFilter;

/// Memory folds may hold; past it, the largest spills its rows to disk or,
/// if its keys alone fill it, loads its table and stages.
pub const BUDGET: usize = 96 << 20;

/// What a spill or final rows read back at a time.
const CHUNK: usize = 1 << 20;

/// The final rows held load in parts of this size, so several connections
/// can share them.
const PART: usize = 8 << 20;

/// A change a fold cannot take; the applier loads the table and goes on without it.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFoldable;

/// The pending final state of one fresh table's touched keys.
pub struct Fold {
    /// The snapshot's columns, in its COPY order.
    columns: Vec<String>,
    keys: Keys,
    /// The rows held, as COPY text lines without their newline. A key's
    /// earlier rows stay until the arena is compacted, once they outweigh
    /// the rows held.
    arena: Arena,
    /// Bytes of the rows the keys end as: what a compaction keeps.
    live: usize,
    /// Where spill files go (they have no name, and vanish when closed).
    spill_dir: PathBuf,
    /// Each spill file, and the bytes written to it.
    spills: Vec<(File, u64)>,
    /// Reused for each change's row and keys, so a key already held costs no allocation.
    scratch: [Vec<u8>; 3],
}

impl Fold {
    /// A fold for `object`, the snapshot of `table`, if its primary key is
    /// of types a fold can compare. It spills into `spill_dir`.
    pub fn new(object: &TableObject, table: &TableSchema, spill_dir: &Path) -> Option<Fold> {
        if table.primary_key.is_empty() {
            return None;
        }
        let key = table
            .primary_key
            .iter()
            .map(|name| {
                let position = object.columns.iter().position(|c| c == name)?;
                let column = table.columns.iter().find(|c| &c.name == name)?;
                Some((position, KeyType::of(column.type_oid)?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Fold {
            columns: object.columns.clone(),
            keys: Keys::new(key),
            arena: Arena::default(),
            live: 0,
            spill_dir: spill_dir.to_path_buf(),
            spills: Vec::new(),
            scratch: Default::default(),
        })
    }

    /// Whether `relation`'s changes have the snapshot's columns, in order, and its key.
    pub fn fits(&self, relation: &Relation) -> bool {
        relation.replica_identity != b'f'
            && relation.columns.len() == self.columns.len()
            && relation
                .columns
                .iter()
                .zip(&self.columns)
                .enumerate()
                .all(|(i, (c, name))| c.name == *name && c.is_key() == self.keys.is_key(i))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.len() == 0
    }

    /// Roughly the memory held.
    pub fn bytes(&self) -> usize {
        self.keys.bytes() + self.arena.bytes()
    }

    /// The memory a spill would free.
    pub fn spillable(&self) -> usize {
        self.arena.bytes()
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn insert(&mut self, new: &Tuple) -> Result<(), NotFoldable> {
        self.update(None, new)
    }

    pub fn update(&mut self, old: Option<&OldTuple>, new: &Tuple) -> Result<(), NotFoldable> {
        let [mut row, mut key, mut old_key] = std::mem::take(&mut self.scratch);
        let result = self.update_with(old, new, [&mut row, &mut key, &mut old_key]);
        self.scratch = [row, key, old_key];
        result
    }

    fn update_with(
        &mut self,
        old: Option<&OldTuple>,
        new: &Tuple,
        [row, key, old_key]: [&mut Vec<u8>; 3],
    ) -> Result<(), NotFoldable> {
        if new.0.contains(&TupleValue::UnchangedToast) {
            return Err(NotFoldable);
        }
        let key = self.keys.of_tuple(new, key)?;
        let old_key = match old {
            Some(old) => Some(self.keys.of_tuple(old.tuple(), old_key)?),
            None => None,
        };
        row.clear();
        for (n, value) in new.0.iter().enumerate() {
            if n > 0 {
                row.push(b'\t');
            }
            copy_value(row, value);
        }
        let at = self.arena.push(row);
        if let Some(old_key) = old_key.filter(|old_key| *old_key != key) {
            self.set(old_key, Final::Deleted);
        }
        self.set(key, Final::Held(at));
        self.compact();
        Ok(())
    }

    pub fn delete(&mut self, old: &Tuple) -> Result<(), NotFoldable> {
        let mut scratch = std::mem::take(&mut self.scratch[1]);
        let result = self
            .keys
            .of_tuple(old, &mut scratch)
            .map(|key| self.set(key, Final::Deleted));
        self.scratch[1] = scratch;
        self.compact();
        result
    }

    /// Makes `key` end as `state`, counting the rows held.
    fn set(&mut self, key: Key, state: Final) {
        if let Final::Held(at) = state {
            self.live += at.len();
        }
        if let Some(Final::Held(at)) = self.keys.set(key, state) {
            self.live -= at.len();
        }
    }

    /// Moves the rows held into a fresh arena once replaced rows outweigh
    /// them. Each move copies at most what the changes since wrote, so
    /// compaction stays linear in the changes.
    fn compact(&mut self) {
        if self.arena.bytes() <= 2 * self.live + 4 * BLOCK {
            return;
        }
        let old = std::mem::take(&mut self.arena);
        let arena = &mut self.arena;
        self.keys.for_each_mut(|state| {
            if let Final::Held(at) = state {
                *at = arena.push(old.get(*at));
            }
        });
    }

    /// Writes the rows held to a new spill file, and frees them.
    pub fn spill(&mut self) -> std::io::Result<()> {
        let number = self.spills.len() as u32;
        let file = tempfile::tempfile_in(&self.spill_dir)?;
        // An unnamed file may still be created under the umask (0644 here).
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut out = BufWriter::with_capacity(CHUNK, file);
        let arena = std::mem::take(&mut self.arena);
        let (mut written, mut bytes) = (Ok(()), 0);
        self.keys.for_each_mut(|state| {
            if let (Final::Held(at), Ok(())) = (*state, &written) {
                written = out
                    .write_all(arena.get(at))
                    .and_then(|()| out.write_all(b"\n"));
                bytes += at.len() as u64 + 1;
                *state = Final::Spilled(number);
            }
        });
        written?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        self.spills.push((file, bytes));
        self.live = 0;
        Ok(())
    }

    /// A stage to merge this fold through, should the snapshot load whole.
    pub fn stage(&self, name: String) -> NetStage {
        let key = (0..self.columns.len())
            .filter(|&i| self.keys.is_key(i))
            .collect();
        NetStage::new(name, &self.columns, key)
    }

    /// The fold as rows of `stage`'s COPY, one flush: for when the snapshot
    /// had to load whole, and the fold merges like any net effect.
    pub fn into_stage(self, stage: &mut NetStage) -> StagedRows {
        let flush = stage.next_flush();
        let columns = self.columns.len();
        let keys = Arc::new(self.keys);
        StagedRows {
            flush,
            columns,
            parts: final_rows(&keys, self.arena, self.live, self.spills).into(),
            keys,
            deletions_sent: false,
        }
    }

    /// What loads the snapshot without the touched keys, and the touched
    /// keys' final rows in parts that may load side by side, after it.
    pub fn into_parts(self) -> (SnapshotFilter, Vec<FinalRows>) {
        let keys = Arc::new(self.keys);
        let parts = final_rows(&keys, self.arena, self.live, self.spills);
        (SnapshotFilter::new(keys), parts)
    }
}

/// The rows held, in parts of about `PART` bytes, then a part per spill file.
fn final_rows(
    keys: &Arc<Keys>,
    arena: Arena,
    live: usize,
    spills: Vec<(File, u64)>,
) -> Vec<FinalRows> {
    let part = |size: usize, rows: Source| FinalRows {
        size: size as u64,
        keys: keys.clone(),
        rows,
    };
    let mut held = vec![Vec::with_capacity(live.min(PART))];
    keys.for_each(|state| {
        if let Final::Held(at) = state {
            let rows = held.last_mut().expect("one part at least");
            rows.extend_from_slice(arena.get(at));
            rows.push(b'\n');
            if rows.len() >= PART {
                let left = live.saturating_sub(PART * held.len());
                held.push(Vec::with_capacity(left.min(PART)));
            }
        }
    });
    let held = held
        .into_iter()
        .filter(|rows| !rows.is_empty())
        .map(|rows| part(rows.len(), Source::Held(Bytes::from(rows))));
    let spilled = spills
        .into_iter()
        .enumerate()
        .map(|(number, (file, size))| {
            let reader = BufReader::with_capacity(CHUNK, file);
            let rows = Source::Spill {
                number: number as u32,
                reader,
                rewound: false,
            };
            part(size as usize, rows)
        });
    held.chain(spilled).collect()
}

/// Some of the touched keys' final rows, as COPY text lines.
pub struct FinalRows {
    /// At most the bytes to read: a spill file may hold replaced rows too.
    size: u64,
    keys: Arc<Keys>,
    rows: Source,
}

enum Source {
    Held(Bytes),
    /// A spill file, of which only the rows its keys still point at count.
    Spill {
        number: u32,
        reader: BufReader<File>,
        rewound: bool,
    },
}

impl FinalRows {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next lines, about a megabyte of them or all those held; `None`
    /// after the last.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let (number, reader, rewound) = match &mut self.rows {
            Source::Held(rows) => {
                return Ok((!rows.is_empty()).then(|| std::mem::take(rows)));
            }
            Source::Spill {
                number,
                reader,
                rewound,
            } => (*number, reader, rewound),
        };
        if !std::mem::replace(rewound, true) {
            reader.rewind()?;
        }
        let (mut out, mut line, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        while out.len() < CHUNK {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let key = self
                .keys
                .of_line(text, &mut scratch)
                .map_err(std::io::Error::other)?;
            if self.keys.get(key) == Some(Final::Spilled(number)) {
                out.extend_from_slice(&line);
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

/// A fold as one flush of a stage's COPY: each final row, then each deletion.
pub struct StagedRows {
    flush: u64,
    columns: usize,
    keys: Arc<Keys>,
    parts: VecDeque<FinalRows>,
    deletions_sent: bool,
}

impl StagedRows {
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let mut data = Vec::new();
        while let Some(part) = self.parts.front_mut() {
            let Some(rows) = part.next_chunk()? else {
                self.parts.pop_front();
                continue;
            };
            for line in rows.split_inclusive(|&b| b == b'\n') {
                let _ = write!(data, "{}\tu\t\t", self.flush);
                data.extend_from_slice(line);
            }
            return Ok(Some(Bytes::from(data)));
        }
        if std::mem::replace(&mut self.deletions_sent, true) {
            return Ok(None);
        }
        let keys = &self.keys;
        keys.for_each_deleted(|key| {
            let _ = write!(data, "{}\td\t", self.flush);
            let mut fields = key.split(|&b| b == b'\t');
            for i in 0..self.columns {
                data.push(b'\t');
                match keys.is_key(i) {
                    true => data.extend_from_slice(fields.next().unwrap_or(b"\\N")),
                    false => data.extend_from_slice(b"\\N"),
                }
            }
            data.push(b'\n');
        });
        Ok((!data.is_empty()).then(|| Bytes::from(data)))
    }
}
