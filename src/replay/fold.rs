//! Changes folded into a fresh table's snapshot before it loads, so each row
//! reaches the target once: the snapshot's rows whose key the changes touched
//! are left out of its COPY, and each touched key's final row follows it.
//!
//! Why the result is exact: a restored table is new and offline, and replay
//! only needs each key's final state. Per key, the last change wins (as in
//! `merge`); a key no change touched keeps its snapshot row, and a touched
//! key's snapshot row is replaced by its final row or, if deleted, by
//! nothing. Keys are compared in their text form: the snapshot's binary key
//! is printed as the server prints it to the stream (`KeyType`), which is
//! exact for the integer and uuid types taken here. Anything a fold cannot
//! take (a TOASTed value the change left out, a schema change, a statement,
//! a truncate) makes the applier load the snapshot whole and stage the fold,
//! which then merges like any other net effect: slower, never different.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;

use super::merge::{copy_text, copy_value, NetStage};
use crate::archive::manifest::TableObject;
use crate::source::pgoutput::{OldTuple, Relation, Tuple, TupleValue};
use crate::source::schema::TableSchema;

/// Memory folds may hold; past it, the largest loads its table and stages.
pub const BUDGET: usize = 64 << 20;

/// A change a fold cannot take; the applier loads the table and goes on without it.
#[derive(Debug, PartialEq, Eq)]
pub struct NotFoldable;

/// A key column's type, printed from its binary form as the server prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Uuid,
}

impl KeyType {
    fn of(oid: u32) -> Option<KeyType> {
        match oid {
            21 => Some(KeyType::Int2),
            23 => Some(KeyType::Int4),
            20 => Some(KeyType::Int8),
            2950 => Some(KeyType::Uuid),
            _ => None,
        }
    }

    /// Appends the text form of `binary` (the value's binary COPY form).
    fn print(self, binary: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        let wrong = || format!("a {self:?} key of {} bytes", binary.len());
        match self {
            KeyType::Int2 => {
                let value = i16::from_be_bytes(binary.try_into().map_err(|_| wrong())?);
                let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
            }
            KeyType::Int4 => {
                let value = i32::from_be_bytes(binary.try_into().map_err(|_| wrong())?);
                let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
            }
            KeyType::Int8 => {
                let value = i64::from_be_bytes(binary.try_into().map_err(|_| wrong())?);
                let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
            }
            KeyType::Uuid => {
                let bytes: [u8; 16] = binary.try_into().map_err(|_| wrong())?;
                let hex = hex::encode(bytes);
                for (i, range) in [0..8, 8..12, 12..16, 16..20, 20..32]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        out.push(b'-');
                    }
                    out.extend_from_slice(&hex.as_bytes()[range]);
                }
            }
        }
        Ok(())
    }
}

/// The pending final state of one fresh table's touched keys.
pub struct Fold {
    /// The snapshot's columns, in its COPY order.
    columns: Vec<String>,
    /// The primary key: positions in `columns`, and how to print each.
    key: Vec<(usize, KeyType)>,
    /// Key (its COPY text fields, tab-separated) to final row, or `None` if deleted.
    rows: HashMap<Box<[u8]>, Option<RowAt>, foldhash::fast::RandomState>,
    /// The rows, as COPY text lines without their newline; a key's earlier
    /// rows stay until the fold is taken (they count against its memory).
    arena: Arena,
    /// Reused for each change's key, so a key already held costs no allocation.
    scratch: Vec<u8>,
    bytes: usize,
}

/// Where a row is in the arena.
#[derive(Clone, Copy, Debug)]
struct RowAt {
    block: u32,
    start: u32,
    len: u32,
}

/// Rows in large blocks: one allocation per block, not per row.
#[derive(Default)]
struct Arena {
    blocks: Vec<Vec<u8>>,
}

const BLOCK: usize = 1 << 20;

impl Arena {
    fn push(&mut self, row: &[u8]) -> RowAt {
        let fits = self
            .blocks
            .last()
            .is_some_and(|b| b.capacity() - b.len() >= row.len());
        if !fits {
            self.blocks.push(Vec::with_capacity(BLOCK.max(row.len())));
        }
        let block = self.blocks.len() - 1;
        let data = &mut self.blocks[block];
        let start = data.len();
        data.extend_from_slice(row);
        RowAt {
            block: block as u32,
            start: start as u32,
            len: row.len() as u32,
        }
    }

    fn get(&self, at: RowAt) -> &[u8] {
        let start = at.start as usize;
        &self.blocks[at.block as usize][start..start + at.len as usize]
    }
}

/// Bookkeeping per held key beyond its bytes: the map's slot and two allocations.
const ENTRY_OVERHEAD: usize = 96;

impl Fold {
    /// A fold for `object`, the snapshot of `table`, if its primary key is
    /// of types a fold can compare.
    pub fn new(object: &TableObject, table: &TableSchema) -> Option<Fold> {
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
            key,
            rows: HashMap::default(),
            arena: Arena::default(),
            scratch: Vec::new(),
            bytes: 0,
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
                .all(|(i, (c, name))| {
                    c.name == *name && c.is_key() == self.key.iter().any(|&(k, _)| k == i)
                })
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Roughly the memory held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Writes `tuple`'s key into `out`.
    fn key_of(&self, tuple: &Tuple, out: &mut Vec<u8>) -> Result<(), NotFoldable> {
        out.clear();
        for (n, &(i, _)) in self.key.iter().enumerate() {
            if n > 0 {
                out.push(b'\t');
            }
            match tuple.0.get(i) {
                Some(TupleValue::Text(text)) => copy_text(out, text),
                _ => return Err(NotFoldable),
            }
        }
        Ok(())
    }

    /// Stores `tuple` as a row in the arena.
    fn row_of(&mut self, tuple: &Tuple) -> Result<RowAt, NotFoldable> {
        if tuple.0.contains(&TupleValue::UnchangedToast) {
            return Err(NotFoldable);
        }
        let mut row = std::mem::take(&mut self.scratch);
        row.clear();
        for (n, value) in tuple.0.iter().enumerate() {
            if n > 0 {
                row.push(b'\t');
            }
            copy_value(&mut row, value);
        }
        let at = self.arena.push(&row);
        self.bytes += row.len();
        self.scratch = row;
        Ok(at)
    }

    /// Makes `key` end as `row`.
    fn set(&mut self, key: &[u8], row: Option<RowAt>) {
        match self.rows.get_mut(key) {
            Some(held) => *held = row,
            None => {
                self.bytes += ENTRY_OVERHEAD + key.len();
                self.rows.insert(key.into(), row);
            }
        }
    }

    pub fn insert(&mut self, new: &Tuple) -> Result<(), NotFoldable> {
        self.update(None, new)
    }

    pub fn update(&mut self, old: Option<&OldTuple>, new: &Tuple) -> Result<(), NotFoldable> {
        let (mut key, mut old_key) = (Vec::new(), Vec::new());
        self.key_of(new, &mut key)?;
        if let Some(old) = old {
            self.key_of(old.tuple(), &mut old_key)?;
        }
        let row = self.row_of(new)?;
        if !old_key.is_empty() && old_key != key {
            self.set(&old_key, None);
        }
        self.set(&key, Some(row));
        Ok(())
    }

    pub fn delete(&mut self, old: &Tuple) -> Result<(), NotFoldable> {
        let mut key = Vec::new();
        self.key_of(old, &mut key)?;
        self.set(&key, None);
        Ok(())
    }

    /// A stage to merge this fold through, should the snapshot load whole.
    pub fn stage(&self, name: String) -> NetStage {
        NetStage::new(
            name,
            &self.columns,
            self.key.iter().map(|&(i, _)| i).collect(),
        )
    }

    /// The fold as rows of `stage`'s COPY, one flush: for when the snapshot
    /// had to load whole, and the fold merges like any net effect.
    pub fn into_stage(self, stage: &mut NetStage) -> Bytes {
        let flush = stage.next_flush();
        let mut data = Vec::with_capacity(self.bytes);
        for (key, row) in &self.rows {
            let _ = write!(Text(&mut data), "{flush}\t");
            match row {
                Some(row) => {
                    data.extend_from_slice(b"u\t\t");
                    data.extend_from_slice(self.arena.get(*row));
                }
                None => {
                    data.extend_from_slice(b"d\t");
                    let mut fields = key.split(|&b| b == b'\t');
                    for i in 0..self.columns.len() {
                        data.push(b'\t');
                        match self.key.iter().any(|&(k, _)| k == i) {
                            true => data.extend_from_slice(fields.next().unwrap_or(b"\\N")),
                            false => data.extend_from_slice(b"\\N"),
                        }
                    }
                }
            }
            data.push(b'\n');
        }
        Bytes::from(data)
    }

    /// What loads the snapshot without the touched keys, and the touched
    /// keys' final rows as COPY text lines, to load after it.
    pub fn into_parts(self) -> (SnapshotFilter, Bytes) {
        let mut data = Vec::with_capacity(self.bytes);
        let mut keys = HashSet::with_capacity_and_hasher(self.rows.len(), Default::default());
        for (key, row) in self.rows {
            if let Some(row) = row {
                data.extend_from_slice(self.arena.get(row));
                data.push(b'\n');
            }
            keys.insert(key);
        }
        let filter = SnapshotFilter {
            keys,
            key: self.key,
            pending: Vec::new(),
            header: false,
            ended: false,
            rows: 0,
        };
        (filter, Bytes::from(data))
    }
}

/// `fmt::Write` onto bytes.
struct Text<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Binary COPY's signature, then its flags and header extension lengths.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const HEADER: usize = SIGNATURE.len() + 8;

/// A binary COPY stream with the rows of some keys left out, chunk by chunk.
/// Rows may straddle chunks; what is not yet whole waits for the next.
pub struct SnapshotFilter {
    keys: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
    key: Vec<(usize, KeyType)>,
    pending: Vec<u8>,
    header: bool,
    ended: bool,
    rows: u64,
}

impl SnapshotFilter {
    /// Appends to `out` what of `chunk` (and earlier leftovers) is whole and kept.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        let data = std::mem::take(&mut self.pending);
        let result = self.rows_in(&data, &mut at, out);
        self.pending = data;
        self.pending.drain(..at);
        result
    }

    /// The snapshot's rows, once its stream ended whole.
    pub fn finish(&self) -> Result<u64, String> {
        match (self.ended, self.pending.is_empty()) {
            (true, true) => Ok(self.rows),
            (true, false) => Err("bytes follow its binary COPY trailer".into()),
            (false, _) => Err("its binary COPY stream ends inside a row".into()),
        }
    }

    fn rows_in(&mut self, data: &[u8], at: &mut usize, out: &mut Vec<u8>) -> Result<(), String> {
        if !self.header {
            let Some(fixed) = data.get(..HEADER) else {
                return Ok(());
            };
            if &fixed[..SIGNATURE.len()] != SIGNATURE {
                return Err("it is not a binary COPY stream".into());
            }
            let extension = u32::from_be_bytes(fixed[HEADER - 4..].try_into().expect("4 bytes"));
            let end = HEADER + extension as usize;
            if data.len() < end {
                return Ok(());
            }
            out.extend_from_slice(&data[..end]);
            (self.header, *at) = (true, end);
        }
        let mut key = Vec::new();
        while let Some(count) = data.get(*at..*at + 2) {
            if self.ended {
                return Err("bytes follow its binary COPY trailer".into());
            }
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                out.extend_from_slice(&data[*at..*at + 2]);
                *at += 2;
                self.ended = true;
                continue;
            }
            let Some(end) = self.row(data, *at, count, &mut key)? else {
                return Ok(());
            };
            self.rows += 1;
            if !self.keys.contains(key.as_slice()) {
                out.extend_from_slice(&data[*at..end]);
            }
            *at = end;
        }
        Ok(())
    }

    /// The end of the row at `start` and its key's text in `key`; `None` if
    /// the row is not whole yet.
    fn row(
        &self,
        data: &[u8],
        start: usize,
        count: i16,
        key: &mut Vec<u8>,
    ) -> Result<Option<usize>, String> {
        let mut fields = Vec::with_capacity(count.max(0) as usize);
        let mut at = start + 2;
        for _ in 0..count {
            let Some(length) = data.get(at..at + 4) else {
                return Ok(None);
            };
            let length = i32::from_be_bytes(length.try_into().expect("4 bytes"));
            at += 4;
            if length < 0 {
                fields.push(None);
                continue;
            }
            let end = at + length as usize;
            if data.len() < end {
                return Ok(None);
            }
            fields.push(Some(&data[at..end]));
            at = end;
        }
        key.clear();
        for (n, &(i, kind)) in self.key.iter().enumerate() {
            if n > 0 {
                key.push(b'\t');
            }
            match fields.get(i) {
                Some(Some(value)) => kind.print(value, key)?,
                _ => return Err(format!("a row has no value for key column {}", i + 1)),
            }
        }
        Ok(Some(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pgoutput::build::{text, text_relation};

    fn schema(key_oid: u32) -> TableSchema {
        crate::source::schema::test_table("t", &[("id", key_oid), ("v", 25)], &["id"])
    }

    fn object() -> TableObject {
        TableObject {
            table: "public.t".parse().unwrap(),
            key: "k".into(),
            columns: vec!["id".into(), "v".into()],
            size: 0,
            sha256: String::new(),
            raw_size: 0,
        }
    }

    fn row(id: &str, v: &str) -> Tuple {
        Tuple(vec![text(id), text(v)])
    }

    /// A binary COPY stream of (bigint id, text v) rows.
    fn snapshot(rows: &[(i64, &str)]) -> Vec<u8> {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0; 8]);
        for (id, v) in rows {
            data.extend_from_slice(&2i16.to_be_bytes());
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(&(v.len() as i32).to_be_bytes());
            data.extend_from_slice(v.as_bytes());
        }
        data.extend_from_slice(&(-1i16).to_be_bytes());
        data
    }

    fn filtered(filter: &mut SnapshotFilter, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in data.chunks(chunk) {
            filter.push(piece, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn touched_keys_leave_the_snapshot_and_their_final_rows_follow() {
        let mut fold = Fold::new(&object(), &schema(20)).unwrap();
        fold.update(None, &row("2", "two, later")).unwrap();
        fold.delete(&row("3", "")).unwrap();
        fold.insert(&row("9", "new\tone")).unwrap();
        fold.insert(&row("10", "gone")).unwrap();
        fold.delete(&row("10", "")).unwrap();
        let old = OldTuple::Key(row("4", ""));
        fold.update(Some(&old), &row("40", "moved")).unwrap();
        let (mut filter, rows) = fold.into_parts();
        let mut lines: Vec<&str> = std::str::from_utf8(&rows).unwrap().lines().collect();
        lines.sort();
        assert_eq!(lines, ["2\ttwo, later", "40\tmoved", "9\tnew\\tone"]);

        let data = snapshot(&[
            (1, "one"),
            (2, "two"),
            (3, "three"),
            (4, "four"),
            (-5, "five"),
        ]);
        // Any chunking gives the same stream: rows straddle chunks.
        for chunk in [1, 3, 7, data.len()] {
            let (mut again, _) = {
                let mut fold = Fold::new(&object(), &schema(20)).unwrap();
                fold.update(None, &row("2", "x")).unwrap();
                fold.delete(&row("3", "")).unwrap();
                fold.delete(&row("4", "")).unwrap();
                fold.into_parts()
            };
            assert_eq!(
                filtered(&mut again, &data, chunk),
                snapshot(&[(1, "one"), (-5, "five")]),
                "chunks of {chunk}"
            );
            assert_eq!(again.finish(), Ok(5));
        }
        assert_eq!(
            filtered(&mut filter, &data, 4),
            snapshot(&[(1, "one"), (-5, "five")])
        );
    }

    #[test]
    fn what_a_fold_cannot_take_is_refused() {
        let mut fold = Fold::new(&object(), &schema(20)).unwrap();
        let toast = Tuple(vec![text("1"), TupleValue::UnchangedToast]);
        assert_eq!(fold.update(None, &toast), Err(NotFoldable));
        assert!(
            Fold::new(&object(), &schema(25)).is_none(),
            "text keys are not compared"
        );
        let relation = text_relation(&[("id", true), ("v", false)], b'd');
        assert!(fold.fits(&relation));
        let other = text_relation(&[("id", true), ("w", false)], b'd');
        let full = text_relation(&[("id", true), ("v", false)], b'f');
        assert!(!fold.fits(&other) && !fold.fits(&full));
    }

    #[test]
    fn a_loaded_fold_stages_as_one_flush() {
        let mut fold = Fold::new(&object(), &schema(20)).unwrap();
        fold.insert(&row("1", "a")).unwrap();
        fold.delete(&row("2", "")).unwrap();
        let mut stage = fold.stage("s".into());
        let data = fold.into_stage(&mut stage);
        let mut lines: Vec<&str> = std::str::from_utf8(&data).unwrap().lines().collect();
        lines.sort();
        assert_eq!(lines, ["1\td\t\t2\t\\N", "1\tu\t\t1\ta"]);
    }

    #[test]
    fn keys_print_as_the_server_prints_them() {
        let mut out = Vec::new();
        KeyType::Int2
            .print(&(-7i16).to_be_bytes(), &mut out)
            .unwrap();
        out.push(b' ');
        KeyType::Int4
            .print(&i32::MIN.to_be_bytes(), &mut out)
            .unwrap();
        out.push(b' ');
        KeyType::Uuid
            .print(
                &hex::decode("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap(),
                &mut out,
            )
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-7 -2147483648 a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(KeyType::Int8.print(&[1, 2], &mut Vec::new()).is_err());
    }

    #[test]
    fn broken_streams_are_named_not_passed_on() {
        let (mut filter, _) = Fold::new(&object(), &schema(20)).unwrap().into_parts();
        let mut out = Vec::new();
        assert!(filter
            .push(b"NOTCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0", &mut out)
            .is_err());
        let (mut filter, _) = Fold::new(&object(), &schema(20)).unwrap().into_parts();
        let data = snapshot(&[(1, "one")]);
        filter.push(&data[..data.len() - 4], &mut out).unwrap();
        assert!(filter.finish().is_err(), "a row cut short");
        let (mut filter, _) = Fold::new(&object(), &schema(20)).unwrap().into_parts();
        let mut trailing = data.clone();
        trailing.extend_from_slice(&[0, 1]);
        assert!(filter.push(&trailing, &mut Vec::new()).is_err());
    }
}
