//! The segment record codec: pure functions over bytes (format: `proto/segment.md`).
//!
//! A frame is `body_len: u32 LE | crc32c(body): u32 LE | body`, and a body is
//! `kind: u8 | lsn: u64 LE | data`. A torn or corrupt frame fails its CRC, so a
//! reader can always tell where the last whole record ends.

use crate::source::pgoutput;
use bytes::Bytes;

use crate::base::position::{EndLsn, Lsn, PgTimestamp};

pub const FRAME_HEADER: usize = 8;
const BODY_HEADER: usize = 1 + 8;
/// Bodies larger than this are corruption: pgoutput messages are bounded by PostgreSQL's 1 GiB limit.
pub const MAX_BODY: usize = (1 << 30) + 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A pgoutput message exactly as received; `lsn` is the XLogData WAL start.
    Wal = 1,
    /// A new replication session started at `lsn`. Transactions left unfinished
    /// before it are void: the server sends them again from their start.
    Resume = 2,
    /// The server reported decoding position `lsn` while no transaction was open.
    Progress = 3,
    /// The segment's last record, holding its index. A sealed segment is never written again.
    Seal = 4,
    /// A main-context pgoutput Relation message repeated at the start of a
    /// segment, so a reader starting there knows every table's columns.
    Schema = 5,
}

impl RecordKind {
    fn from_u8(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::Wal,
            2 => RecordKind::Resume,
            3 => RecordKind::Progress,
            4 => RecordKind::Seal,
            5 => RecordKind::Schema,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub lsn: Lsn,
    pub data: Bytes,
}

impl Record {
    pub fn wal(lsn: Lsn, payload: Bytes) -> Record {
        Record {
            kind: RecordKind::Wal,
            lsn,
            data: payload,
        }
    }

    /// A marker at a position between transactions (Resume, Progress, Seal).
    pub fn marker(kind: RecordKind, lsn: EndLsn) -> Record {
        Record {
            kind,
            lsn: lsn.0,
            data: Bytes::new(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER + BODY_HEADER + self.data.len()
    }

    /// Appends the framed record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let body_len = (BODY_HEADER + self.data.len()) as u32;
        let mut head = [0u8; BODY_HEADER];
        head[0] = self.kind as u8;
        head[1..].copy_from_slice(&self.lsn.0.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &self.data);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.data);
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("record frame is incomplete")]
    Incomplete,
    #[error("record length {0} is impossible")]
    BadLength(usize),
    #[error("record checksum mismatch")]
    BadChecksum,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
}

/// Reads the body length from a frame header.
pub fn body_len(header: &[u8; FRAME_HEADER]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if !(BODY_HEADER..=MAX_BODY).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    Ok(len)
}

/// Verifies and decodes a body read after `header`.
pub fn decode_body(header: &[u8; FRAME_HEADER], body: Bytes) -> Result<Record, FrameError> {
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&body) != crc {
        return Err(FrameError::BadChecksum);
    }
    let kind = RecordKind::from_u8(body[0]).ok_or(FrameError::UnknownKind(body[0]))?;
    let lsn = Lsn(u64::from_le_bytes(body[1..9].try_into().expect("8 bytes")));
    Ok(Record {
        kind,
        lsn,
        data: body.slice(BODY_HEADER..),
    })
}

/// Decodes the first record of `buf`, returning it and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), FrameError> {
    let header: &[u8; FRAME_HEADER] = buf
        .get(..FRAME_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Incomplete)?;
    let len = body_len(header)?;
    let body = buf
        .get(FRAME_HEADER..FRAME_HEADER + len)
        .ok_or(FrameError::Incomplete)?;
    let record = decode_body(header, Bytes::copy_from_slice(body))?;
    Ok((record, FRAME_HEADER + len))
}

/// What a segment holds, kept in its Seal record and in memory for the open segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    /// LSN of the first and last records, in log order.
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
    /// Commit timestamps of the first and last transactions finished in this segment.
    pub first_commit_time: Option<PgTimestamp>,
    pub last_commit_time: Option<PgTimestamp>,
    /// The log's resume position at the end of this segment: the highest LSN
    /// up to which the server need never resend anything (cumulative over the log).
    pub ack_lsn: EndLsn,
    pub records: u64,
}

const NONE_TIME: i64 = i64::MIN;
pub const SEAL_DATA_LEN: usize = 6 * 8;
pub const SEAL_FRAME_LEN: usize = FRAME_HEADER + BODY_HEADER + SEAL_DATA_LEN;

impl SegmentIndex {
    /// Accounts for a record appended after everything already indexed.
    pub fn add(&mut self, record: &Record) {
        self.records += 1;
        if matches!(record.kind, RecordKind::Seal | RecordKind::Schema) {
            return;
        }
        self.first_lsn.get_or_insert(record.lsn);
        self.last_lsn = Some(record.lsn);
        match record.kind {
            RecordKind::Wal => {
                if let Some(done) = pgoutput::finished(&record.data) {
                    self.ack_lsn = self.ack_lsn.max(done.end_lsn);
                    self.first_commit_time.get_or_insert(done.time);
                    self.last_commit_time = Some(done.time);
                }
            }
            RecordKind::Progress => self.ack_lsn = self.ack_lsn.max(EndLsn(record.lsn)),
            RecordKind::Resume | RecordKind::Seal | RecordKind::Schema => {}
        }
    }

    pub fn seal_record(&self) -> Record {
        let mut data = Vec::with_capacity(SEAL_DATA_LEN);
        for value in [
            self.first_lsn.map_or(u64::MAX, |l| l.0),
            self.last_lsn.map_or(u64::MAX, |l| l.0),
            self.first_commit_time.map_or(NONE_TIME, |t| t.0) as u64,
            self.last_commit_time.map_or(NONE_TIME, |t| t.0) as u64,
            self.ack_lsn.as_u64(),
            self.records,
        ] {
            data.extend_from_slice(&value.to_le_bytes());
        }
        Record {
            kind: RecordKind::Seal,
            lsn: self.ack_lsn.0,
            data: Bytes::from(data),
        }
    }

    pub fn from_seal(record: &Record) -> Option<SegmentIndex> {
        if record.kind != RecordKind::Seal || record.data.len() != SEAL_DATA_LEN {
            return None;
        }
        let field =
            |i: usize| u64::from_le_bytes(record.data[i * 8..i * 8 + 8].try_into().unwrap());
        let lsn = |v: u64| (v != u64::MAX).then_some(Lsn(v));
        let time = |v: u64| (v as i64 != NONE_TIME).then_some(PgTimestamp(v as i64));
        Some(SegmentIndex {
            first_lsn: lsn(field(0)),
            last_lsn: lsn(field(1)),
            first_commit_time: time(field(2)),
            last_commit_time: time(field(3)),
            ack_lsn: EndLsn(Lsn(field(4))),
            records: field(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{EndLsn, Lsn};
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let record = Record::wal(Lsn(0xAB), Bytes::from_static(b"payload"));
        let mut buf = Vec::new();
        record.encode_into(&mut buf);
        assert_eq!(buf.len(), record.encoded_len());
        assert_eq!(decode(&buf).unwrap(), (record, buf.len()));
    }

    #[test]
    fn detects_torn_and_flipped_frames() {
        let mut buf = Vec::new();
        Record::wal(Lsn(1), Bytes::from_static(b"abcdef")).encode_into(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]).unwrap_err(), FrameError::Incomplete);
        }
        for bit in (FRAME_HEADER * 8)..(buf.len() * 8) {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&flipped).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn index_tracks_commits_and_seals() {
        let mut index = SegmentIndex::default();
        index.add(&Record::marker(RecordKind::Resume, EndLsn(Lsn(5))));
        index.add(&Record::wal(Lsn(10), pgoutput::build::commit(40)));
        index.add(&Record::wal(Lsn(50), pgoutput::build::commit(70)));
        index.add(&Record::marker(RecordKind::Progress, EndLsn(Lsn(90))));
        assert_eq!(index.first_lsn, Some(Lsn(5)));
        assert_eq!(index.last_lsn, Some(Lsn(90)));
        assert_eq!(index.first_commit_time, Some(PgTimestamp(40)));
        assert_eq!(index.last_commit_time, Some(PgTimestamp(70)));
        assert_eq!(index.ack_lsn, EndLsn(Lsn(90)));
        let seal = index.seal_record();
        let mut buf = Vec::new();
        seal.encode_into(&mut buf);
        assert_eq!(buf.len(), SEAL_FRAME_LEN);
        assert_eq!(SegmentIndex::from_seal(&seal), Some(index));
        assert_eq!(
            SegmentIndex::from_seal(&Record::marker(RecordKind::Seal, EndLsn(Lsn(1)))),
            None
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&data);
        }
    }
}
