//! A snapshot's binary COPY stream with the rows of touched keys left out.

use std::sync::Arc;

use super::keys::Keys;

/// Binary COPY's signature, then its flags and header extension lengths.
pub(super) const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const HEADER: usize = SIGNATURE.len() + 8;

/// A binary COPY stream with the rows of some keys left out, chunk by chunk.
/// Rows may straddle chunks; what is not yet whole waits for the next.
pub struct SnapshotFilter {
    keys: Arc<Keys>,
    pending: Vec<u8>,
    header: bool,
    ended: bool,
    rows: u64,
}

impl SnapshotFilter {
    pub fn new(keys: Arc<Keys>) -> SnapshotFilter {
        SnapshotFilter {
            keys,
            pending: Vec::new(),
            header: false,
            ended: false,
            rows: 0,
        }
    }

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
        let mut scratch = Vec::new();
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
            let Some((end, fields)) = row(data, *at, count) else {
                return Ok(());
            };
            self.rows += 1;
            if self
                .keys
                .get(self.keys.of_binary(&fields, &mut scratch)?)
                .is_none()
            {
                out.extend_from_slice(&data[*at..end]);
            }
            *at = end;
        }
        Ok(())
    }
}

/// The end of the row at `start` and its fields; `None` if the row is not
/// whole yet.
fn row(data: &[u8], start: usize, count: i16) -> Option<(usize, Vec<Option<&[u8]>>)> {
    let mut fields = Vec::with_capacity(count.max(0) as usize);
    let mut at = start + 2;
    for _ in 0..count {
        let length = i32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if length < 0 {
            fields.push(None);
            continue;
        }
        let end = at + length as usize;
        fields.push(Some(data.get(at..end)?));
        at = end;
    }
    Some((at, fields))
}
