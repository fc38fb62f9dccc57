//! The keys a fold's changes touched, and where each key's final state is.
//!
//! A key is read three ways: from a change (the server's text form), from a
//! snapshot row (binary COPY) and from a spilled row (COPY text). All three
//! must give the same key for the same value. A single integer column is
//! parsed or decoded to its value, which is exact. Any other key (uuid, or
//! several integer columns) is its text form: the binary value printed as
//! the server prints it (`KeyType::print`), and the text escaped as COPY
//! escapes it, which leaves digits, signs and uuids as they are.

use std::collections::HashMap;

use super::arena::RowAt;
use super::NotFoldable;
use crate::replay::merge::copy_text;
use crate::source::pgoutput::{Tuple, TupleValue};

/// A key column's type, printed from its binary form as the server prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Uuid,
}

impl KeyType {
    pub fn of(oid: u32) -> Option<KeyType> {
        match oid {
            21 => Some(KeyType::Int2),
            23 => Some(KeyType::Int4),
            20 => Some(KeyType::Int8),
            2950 => Some(KeyType::Uuid),
            _ => None,
        }
    }

    /// The value of an integer key's binary form.
    fn int(self, binary: &[u8]) -> Result<i64, String> {
        let wrong = || format!("a {self:?} key of {} bytes", binary.len());
        Ok(match self {
            KeyType::Int2 => i16::from_be_bytes(binary.try_into().map_err(|_| wrong())?).into(),
            KeyType::Int4 => i32::from_be_bytes(binary.try_into().map_err(|_| wrong())?).into(),
            KeyType::Int8 => i64::from_be_bytes(binary.try_into().map_err(|_| wrong())?),
            KeyType::Uuid => return Err(wrong()),
        })
    }

    /// Appends the text form of `binary` (the value's binary COPY form).
    pub fn print(self, binary: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if self != KeyType::Uuid {
            let value = self.int(binary)?;
            let _ = std::io::Write::write_fmt(out, format_args!("{value}"));
            return Ok(());
        }
        let bytes: [u8; 16] = binary
            .try_into()
            .map_err(|_| format!("a Uuid key of {} bytes", binary.len()))?;
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
        Ok(())
    }
}

/// One key as `Keys` compares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Int(i64),
    /// The key columns' COPY text fields, tab-separated.
    Text(&'a [u8]),
}

/// Where a touched key's final state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Final {
    /// This row, in the fold's arena.
    Held(RowAt),
    /// The row in this spill file: the last of the key's rows written there.
    Spilled(u32),
    Deleted,
}

type Hasher = foldhash::fast::RandomState;

enum Map {
    /// A single integer column: no allocation per key.
    Int(HashMap<i64, Final, Hasher>),
    /// Any other key; `heap` is what its boxed keys hold.
    Text {
        map: HashMap<Box<[u8]>, Final, Hasher>,
        heap: usize,
    },
}

/// The touched keys of one table.
pub struct Keys {
    /// The key columns: positions in the snapshot's columns, and how to read each.
    columns: Vec<(usize, KeyType)>,
    map: Map,
}

impl Keys {
    pub fn new(columns: Vec<(usize, KeyType)>) -> Keys {
        let map = match columns.as_slice() {
            [(_, KeyType::Int2 | KeyType::Int4 | KeyType::Int8)] => Map::Int(HashMap::default()),
            _ => Map::Text {
                map: HashMap::default(),
                heap: 0,
            },
        };
        Keys { columns, map }
    }

    pub fn is_key(&self, column: usize) -> bool {
        self.columns.iter().any(|&(k, _)| k == column)
    }

    pub fn len(&self) -> usize {
        match &self.map {
            Map::Int(map) => map.len(),
            Map::Text { map, .. } => map.len(),
        }
    }

    /// Roughly the memory held: the map's buckets and the boxed keys.
    pub fn bytes(&self) -> usize {
        fn buckets<K>(capacity: usize) -> usize {
            // A bucket holds the entry and a control byte; at most 7/8 are full.
            capacity * 8 / 7 * (std::mem::size_of::<(K, Final)>() + 1)
        }
        match &self.map {
            Map::Int(map) => buckets::<i64>(map.capacity()),
            Map::Text { map, heap } => buckets::<Box<[u8]>>(map.capacity()) + heap,
        }
    }

    pub fn get(&self, key: Key) -> Option<Final> {
        match (&self.map, key) {
            (Map::Int(map), Key::Int(value)) => map.get(&value).copied(),
            (Map::Text { map, .. }, Key::Text(text)) => map.get(text).copied(),
            _ => None,
        }
    }

    /// Makes `key` end as `state`; returns what it ended as before.
    pub fn set(&mut self, key: Key, state: Final) -> Option<Final> {
        match (&mut self.map, key) {
            (Map::Int(map), Key::Int(value)) => map.insert(value, state),
            (Map::Text { map, heap }, Key::Text(text)) => match map.get_mut(text) {
                Some(held) => Some(std::mem::replace(held, state)),
                None => {
                    // An allocation's size class and header.
                    *heap += text.len().next_multiple_of(16) + 16;
                    map.insert(text.into(), state)
                }
            },
            (Map::Int(_), Key::Text(_)) | (Map::Text { .. }, Key::Int(_)) => {
                unreachable!("keys are read by the map's own kind")
            }
        }
    }

    pub fn for_each(&self, mut f: impl FnMut(Final)) {
        match &self.map {
            Map::Int(map) => map.values().for_each(|state| f(*state)),
            Map::Text { map, .. } => map.values().for_each(|state| f(*state)),
        }
    }

    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut Final)) {
        match &mut self.map {
            Map::Int(map) => map.values_mut().for_each(&mut f),
            Map::Text { map, .. } => map.values_mut().for_each(&mut f),
        }
    }

    /// Calls `f` with each deleted key's COPY text fields, tab-separated.
    pub fn for_each_deleted(&self, mut f: impl FnMut(&[u8])) {
        let mut text = Vec::new();
        match &self.map {
            Map::Int(map) => {
                for (value, _) in map.iter().filter(|(_, s)| **s == Final::Deleted) {
                    text.clear();
                    let _ = std::io::Write::write_fmt(&mut text, format_args!("{value}"));
                    f(&text);
                }
            }
            Map::Text { map, .. } => {
                for (key, _) in map.iter().filter(|(_, s)| **s == Final::Deleted) {
                    f(key);
                }
            }
        }
    }

    /// The key of a change's row; `scratch` holds a text key.
    pub fn of_tuple<'a>(
        &self,
        tuple: &Tuple,
        scratch: &'a mut Vec<u8>,
    ) -> Result<Key<'a>, NotFoldable> {
        let value = |i: usize| match tuple.0.get(i) {
            Some(TupleValue::Text(text)) => Ok(text),
            _ => Err(NotFoldable),
        };
        if let Map::Int(_) = self.map {
            let text = value(self.columns[0].0)?;
            return parse_int(text).map(Key::Int).ok_or(NotFoldable);
        }
        scratch.clear();
        for (n, &(i, _)) in self.columns.iter().enumerate() {
            if n > 0 {
                scratch.push(b'\t');
            }
            copy_text(scratch, value(i)?);
        }
        Ok(Key::Text(scratch))
    }

    /// The key of a snapshot row, from its binary COPY fields.
    pub fn of_binary<'a>(
        &self,
        fields: &[Option<&[u8]>],
        scratch: &'a mut Vec<u8>,
    ) -> Result<Key<'a>, String> {
        let value = |i: usize| match fields.get(i) {
            Some(Some(value)) => Ok(*value),
            _ => Err(format!("a row has no value for key column {}", i + 1)),
        };
        if let Map::Int(_) = self.map {
            let (i, kind) = self.columns[0];
            return kind.int(value(i)?).map(Key::Int);
        }
        scratch.clear();
        for (n, &(i, kind)) in self.columns.iter().enumerate() {
            if n > 0 {
                scratch.push(b'\t');
            }
            kind.print(value(i)?, scratch)?;
        }
        Ok(Key::Text(scratch))
    }

    /// The key of a spilled row: a COPY text line without its newline.
    pub fn of_line<'a>(&self, line: &[u8], scratch: &'a mut Vec<u8>) -> Result<Key<'a>, String> {
        let value = |i: usize| {
            line.split(|&b| b == b'\t')
                .nth(i)
                .ok_or_else(|| format!("a spilled row has no column {}", i + 1))
        };
        if let Map::Int(_) = self.map {
            let text = value(self.columns[0].0)?;
            return parse_int(text)
                .map(Key::Int)
                .ok_or_else(|| "a spilled row's key is not a number".to_string());
        }
        scratch.clear();
        for (n, &(i, _)) in self.columns.iter().enumerate() {
            if n > 0 {
                scratch.push(b'\t');
            }
            scratch.extend_from_slice(value(i)?);
        }
        Ok(Key::Text(scratch))
    }
}

fn parse_int(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}
