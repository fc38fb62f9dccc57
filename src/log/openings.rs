//! What is open in the stream at a point of the log: transactions begun but
//! not finished, and the relation definitions the main stream relies on.
//!
//! The writer keeps this so every new segment can say where a reader must
//! start to see each open transaction whole (its header's `restart`), and can
//! repeat the relation definitions at its start (Schema records). A chain of
//! segments read from any segment's restart point is then self-contained.

use std::collections::{BTreeMap, HashMap};

use bytes::{BufMut, Bytes, BytesMut};

use super::record::{Record, RecordKind};
use crate::base::position::Lsn;

#[derive(Default)]
pub struct Openings {
    /// Base of the segment being written.
    base: Lsn,
    /// The open non-streamed transaction: the base of the segment its Begin is in.
    whole: Option<Lsn>,
    /// Open streamed transactions: xid → base of the segment of their first block.
    streamed: HashMap<u32, Lsn>,
    in_block: Option<u32>,
    /// Main-context Relation messages by relation oid, as received.
    relations: BTreeMap<u32, Bytes>,
    /// Relations sent inside a streamed transaction, in main-context form; they
    /// join the main context when it commits (pgoutput stops resending them).
    stream_relations: HashMap<u32, BTreeMap<u32, Bytes>>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
}

impl Openings {
    pub fn new(base: Lsn) -> Openings {
        Openings {
            base,
            ..Openings::default()
        }
    }

    /// Notes a record appended to the segment with base `self.base`.
    pub fn observe(&mut self, record: &Record) {
        match record.kind {
            // A new session: the server resends everything unfinished, relations included.
            RecordKind::Resume => {
                let base = self.base;
                *self = Openings::new(base);
                return;
            }
            RecordKind::Wal => {}
            _ => return,
        }
        let data = &record.data;
        match data.first() {
            Some(b'B' | b'b') => self.whole = Some(self.base),
            Some(b'C' | b'P') => self.whole = None,
            Some(b'S') => {
                if let Some(xid) = u32_at(data, 1) {
                    self.in_block = Some(xid);
                    self.streamed.entry(xid).or_insert(self.base);
                }
            }
            Some(b'E') => self.in_block = None,
            Some(b'c') => {
                if let Some(xid) = u32_at(data, 1) {
                    self.streamed.remove(&xid);
                    if let Some(relations) = self.stream_relations.remove(&xid) {
                        self.relations.extend(relations);
                    }
                }
            }
            Some(b'A') => {
                if let (Some(xid), Some(subxid)) = (u32_at(data, 1), u32_at(data, 5)) {
                    if xid == subxid {
                        self.streamed.remove(&xid);
                        self.stream_relations.remove(&xid);
                    }
                }
            }
            Some(b'R') => match self.in_block {
                Some(xid) => {
                    if let Some(oid) = u32_at(data, 5) {
                        let mut main = BytesMut::with_capacity(data.len() - 4);
                        main.put_u8(b'R');
                        main.put_slice(&data[5..]);
                        self.stream_relations
                            .entry(xid)
                            .or_default()
                            .insert(oid, main.freeze());
                    }
                }
                None => {
                    if let Some(oid) = u32_at(data, 1) {
                        self.relations.insert(oid, data.clone());
                    }
                }
            },
            _ => {}
        }
    }

    /// Starts a new segment with base `base`; returns its restart point.
    pub fn next_segment(&mut self, base: Lsn) -> Lsn {
        self.base = base;
        self.whole
            .into_iter()
            .chain(self.streamed.values().copied())
            .min()
            .unwrap_or(base)
    }

    /// The Schema records that open a new segment.
    pub fn schema_records(&self) -> impl Iterator<Item = Record> + '_ {
        self.relations.values().map(|payload| Record {
            kind: RecordKind::Schema,
            lsn: self.base,
            data: payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(bytes: &[u8]) -> Record {
        Record::wal(Lsn(1), Bytes::copy_from_slice(bytes))
    }

    fn relation(stream_xid: Option<u32>, oid: u32) -> Record {
        let mut b = vec![b'R'];
        if let Some(x) = stream_xid {
            b.extend(x.to_be_bytes());
        }
        b.extend(oid.to_be_bytes());
        b.extend(b"public\0t\0d\0\0");
        wal(&b)
    }

    fn with_xid(tag: u8, xid: u32, rest: &[u8]) -> Record {
        let mut b = vec![tag];
        b.extend(xid.to_be_bytes());
        b.extend(rest);
        wal(&b)
    }

    #[test]
    fn restart_points_at_the_oldest_open_transaction() {
        let mut o = Openings::new(Lsn(100));
        assert_eq!(o.next_segment(Lsn(100)), Lsn(100));
        o.observe(&with_xid(b'S', 7, &[1]));
        o.observe(&wal(b"E"));
        assert_eq!(
            o.next_segment(Lsn(200)),
            Lsn(100),
            "streamed 7 began at 100"
        );
        o.observe(&wal(b"B...."));
        assert_eq!(o.next_segment(Lsn(300)), Lsn(100));
        o.observe(&with_xid(b'c', 7, &[0]));
        assert_eq!(
            o.next_segment(Lsn(400)),
            Lsn(200),
            "the open Begin is in segment 200"
        );
        o.observe(&wal(b"C"));
        assert_eq!(o.next_segment(Lsn(500)), Lsn(500));
        o.observe(&with_xid(b'S', 8, &[1]));
        o.observe(&Record::marker(RecordKind::Resume, Lsn(1)));
        assert_eq!(
            o.next_segment(Lsn(600)),
            Lsn(600),
            "a Resume voids what was open"
        );
    }

    #[test]
    fn relations_are_repeated_including_committed_streams() {
        let mut o = Openings::new(Lsn(1));
        o.observe(&relation(None, 10));
        o.observe(&with_xid(b'S', 7, &[1]));
        o.observe(&relation(Some(7), 11));
        o.observe(&wal(b"E"));
        assert_eq!(
            o.schema_records().count(),
            1,
            "a streamed relation waits for its commit"
        );
        o.observe(&with_xid(b'c', 7, &[0]));
        let records: Vec<Record> = o.schema_records().collect();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.kind == RecordKind::Schema));
        let decoded = crate::source::pgoutput::decode(&records[1].data, false).unwrap();
        assert!(
            matches!(decoded, crate::source::pgoutput::Message::Relation(r) if r.oid == 11 && r.xid.is_none())
        );
    }
}
