//! Messages as the tests need them, built through `encode`: the one place
//! unit tests get pgoutput bytes from. A relation is table `public.t` (oid
//! 100) with one key column `id` (int4); a commit ending at `end` has commit
//! LSN `end - 1` and commit time `end`.

use bytes::Bytes;

use super::*;
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};

const RELATION_OID: u32 = 100;

pub fn relation(stream_xid: Option<u32>) -> Bytes {
    relation_with_oid(stream_xid, RELATION_OID)
}

/// The same table's relation message under another oid.
pub fn relation_with_oid(stream_xid: Option<u32>, oid: u32) -> Bytes {
    encode(&Message::Relation(Relation {
        xid: stream_xid,
        oid,
        namespace: "public".into(),
        name: "t".into(),
        replica_identity: b'd',
        columns: vec![Column {
            flags: 1,
            name: "id".into(),
            type_oid: 23,
            type_modifier: -1,
        }],
    }))
}

pub fn insert(stream_xid: Option<u32>, id: &str) -> Bytes {
    encode(&Message::Insert(Insert {
        xid: stream_xid,
        relation_oid: RELATION_OID,
        new: Tuple(vec![TupleValue::Text(Bytes::copy_from_slice(
            id.as_bytes(),
        ))]),
    }))
}

pub fn begin(xid: u32) -> Bytes {
    encode(&Message::Begin(Begin {
        final_lsn: CommitLsn(Lsn(0)),
        commit_time: PgTimestamp(0),
        xid,
    }))
}

fn ending_at(end: u64) -> Commit {
    Commit {
        flags: 0,
        commit_lsn: CommitLsn(Lsn(end - 1)),
        end_lsn: EndLsn(Lsn(end)),
        commit_time: PgTimestamp(end as i64),
    }
}

pub fn commit(end: u64) -> Bytes {
    encode(&Message::Commit(ending_at(end)))
}

pub fn stream_start(xid: u32) -> Bytes {
    encode(&Message::StreamStart(StreamStart {
        xid,
        first_segment: true,
    }))
}

pub fn stream_stop() -> Bytes {
    encode(&Message::StreamStop)
}

pub fn stream_commit(xid: u32, end: u64) -> Bytes {
    encode(&Message::StreamCommit(StreamCommit {
        xid,
        commit: ending_at(end),
    }))
}

pub fn stream_abort(xid: u32, subxid: u32) -> Bytes {
    encode(&Message::StreamAbort(StreamAbort { xid, subxid }))
}

/// A transactional logical message, outside a streamed block.
pub fn message(prefix: &str, content: &[u8]) -> Bytes {
    encode(&Message::LogicalMessage(LogicalMessage {
        xid: None,
        transactional: true,
        lsn: Lsn(1),
        prefix: prefix.into(),
        content: Bytes::copy_from_slice(content),
    }))
}

/// Table `public.t` as a decoded Relation (oid 1): text columns `(name, is_key)`.
pub fn text_relation(columns: &[(&str, bool)], replica_identity: u8) -> Relation {
    Relation {
        xid: None,
        oid: 1,
        namespace: "public".into(),
        name: "t".into(),
        replica_identity,
        columns: columns
            .iter()
            .map(|(name, key)| Column {
                flags: u8::from(*key),
                name: name.to_string(),
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// A value in PostgreSQL's text form.
pub fn text(value: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
}
