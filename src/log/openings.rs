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
use crate::base::position::EndLsn;
use crate::source::pgoutput::{PeekKind, TxnState};

#[derive(Default)]
pub struct Openings {
    /// Base of the segment being written.
    base: EndLsn,
    /// The open non-streamed transaction: the base of the segment its Begin is in.
    whole: Option<EndLsn>,
    /// Open streamed transactions: xid → base of the segment of their first block.
    streamed: HashMap<u32, EndLsn>,
    /// What is open in the stream; its streamed block, if any.
    state: TxnState,
    /// Main-context Relation messages by relation oid, as received.
    relations: BTreeMap<u32, Bytes>,
    /// Relations sent inside a streamed transaction, in main-context form; they
    /// join the main context when it commits (pgoutput stops resending them).
    stream_relations: HashMap<u32, BTreeMap<u32, Bytes>>,
}

impl Openings {
    pub fn new(base: EndLsn) -> Openings {
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
        // What cannot be peeked at opens and closes nothing; readers name it.
        let Ok(peek) = self.state.observe(data) else {
            return;
        };
        match (peek.kind, peek.xid) {
            (PeekKind::Begin | PeekKind::BeginPrepare, _) => self.whole = Some(self.base),
            (PeekKind::Commit | PeekKind::Prepare, _) => self.whole = None,
            (PeekKind::StreamStart, Some(xid)) => {
                self.streamed.entry(xid).or_insert(self.base);
            }
            (PeekKind::StreamCommit, Some(xid)) => {
                self.streamed.remove(&xid);
                if let Some(relations) = self.stream_relations.remove(&xid) {
                    self.relations.extend(relations);
                }
            }
            (PeekKind::StreamAbort, Some(xid)) if peek.subxid == Some(xid) => {
                self.streamed.remove(&xid);
                self.stream_relations.remove(&xid);
            }
            (PeekKind::Relation, block) => {
                let Some(oid) = peek.relation_oid else {
                    return;
                };
                match block {
                    // Inside a block: kept in main-context form, without the stream xid.
                    Some(xid) => {
                        let mut main = BytesMut::with_capacity(data.len() - 4);
                        main.put_u8(b'R');
                        main.put_slice(&data[5..]);
                        self.stream_relations
                            .entry(xid)
                            .or_default()
                            .insert(oid, main.freeze());
                    }
                    None => {
                        self.relations.insert(oid, data.clone());
                    }
                }
            }
            _ => {}
        }
    }

    /// Starts a new segment with base `base`; returns its restart point.
    pub fn next_segment(&mut self, base: EndLsn) -> EndLsn {
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
            lsn: self.base.0,
            data: payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{EndLsn, Lsn};

    use crate::source::pgoutput::build;

    fn wal(payload: Bytes) -> Record {
        Record::wal(Lsn(1), payload)
    }

    #[test]
    fn restart_points_at_the_oldest_open_transaction() {
        let mut o = Openings::new(EndLsn(Lsn(100)));
        assert_eq!(o.next_segment(EndLsn(Lsn(100))), EndLsn(Lsn(100)));
        o.observe(&wal(build::stream_start(7)));
        o.observe(&wal(build::stream_stop()));
        assert_eq!(
            o.next_segment(EndLsn(Lsn(200))),
            EndLsn(Lsn(100)),
            "streamed 7 began at 100"
        );
        o.observe(&wal(build::begin(1)));
        assert_eq!(o.next_segment(EndLsn(Lsn(300))), EndLsn(Lsn(100)));
        o.observe(&wal(build::stream_commit(7, 60)));
        assert_eq!(
            o.next_segment(EndLsn(Lsn(400))),
            EndLsn(Lsn(200)),
            "the open Begin is in segment 200"
        );
        o.observe(&wal(build::commit(50)));
        assert_eq!(o.next_segment(EndLsn(Lsn(500))), EndLsn(Lsn(500)));
        o.observe(&wal(build::stream_start(8)));
        o.observe(&Record::marker(RecordKind::Resume, EndLsn(Lsn(1))));
        assert_eq!(
            o.next_segment(EndLsn(Lsn(600))),
            EndLsn(Lsn(600)),
            "a Resume voids what was open"
        );
    }

    #[test]
    fn relations_are_repeated_including_committed_streams() {
        let mut o = Openings::new(EndLsn(Lsn(1)));
        o.observe(&wal(build::relation_with_oid(None, 10)));
        o.observe(&wal(build::stream_start(7)));
        o.observe(&wal(build::relation_with_oid(Some(7), 11)));
        o.observe(&wal(build::stream_stop()));
        assert_eq!(
            o.schema_records().count(),
            1,
            "a streamed relation waits for its commit"
        );
        o.observe(&wal(build::stream_commit(7, 60)));
        let records: Vec<Record> = o.schema_records().collect();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.kind == RecordKind::Schema));
        let decoded = crate::source::pgoutput::decode(&records[1].data, false).unwrap();
        assert!(
            matches!(decoded, crate::source::pgoutput::Message::Relation(r) if r.oid == 11 && r.xid.is_none())
        );
    }
}
