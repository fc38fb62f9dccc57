//! Encoding: a message back to the bytes the server sends, the exact inverse
//! of `decode` (a property test holds them to it). Tests and benchmarks build
//! their streams with it instead of writing bytes by hand.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Commit, Message, OldTuple, PrepareInfo, Tuple, TupleValue};

/// The message's bytes. A message that carries `Some(xid)` is encoded as it
/// is sent inside a streamed block.
pub fn encode(message: &Message) -> Bytes {
    let mut b = BytesMut::new();
    let stream_xid = |b: &mut BytesMut, xid: &Option<u32>| {
        if let Some(xid) = xid {
            b.put_u32(*xid);
        }
    };
    match message {
        Message::Begin(begin) => {
            b.put_u8(b'B');
            b.put_u64(begin.final_lsn.as_u64());
            b.put_i64(begin.commit_time.0);
            b.put_u32(begin.xid);
        }
        Message::Commit(commit) => {
            b.put_u8(b'C');
            put_commit(&mut b, commit);
        }
        Message::Origin { origin_lsn, name } => {
            b.put_u8(b'O');
            b.put_u64(origin_lsn.0);
            put_cstring(&mut b, name);
        }
        Message::Relation(relation) => {
            b.put_u8(b'R');
            stream_xid(&mut b, &relation.xid);
            b.put_u32(relation.oid);
            put_cstring(&mut b, &relation.namespace);
            put_cstring(&mut b, &relation.name);
            b.put_u8(relation.replica_identity);
            b.put_u16(relation.columns.len() as u16);
            for column in &relation.columns {
                b.put_u8(column.flags);
                put_cstring(&mut b, &column.name);
                b.put_u32(column.type_oid);
                b.put_i32(column.type_modifier);
            }
        }
        Message::Type {
            xid,
            oid,
            namespace,
            name,
        } => {
            b.put_u8(b'Y');
            stream_xid(&mut b, xid);
            b.put_u32(*oid);
            put_cstring(&mut b, namespace);
            put_cstring(&mut b, name);
        }
        Message::Insert {
            xid,
            relation_oid,
            new,
        } => {
            b.put_u8(b'I');
            stream_xid(&mut b, xid);
            b.put_u32(*relation_oid);
            b.put_u8(b'N');
            put_tuple(&mut b, new);
        }
        Message::Update {
            xid,
            relation_oid,
            old,
            new,
        } => {
            b.put_u8(b'U');
            stream_xid(&mut b, xid);
            b.put_u32(*relation_oid);
            if let Some(old) = old {
                put_old(&mut b, old);
            }
            b.put_u8(b'N');
            put_tuple(&mut b, new);
        }
        Message::Delete {
            xid,
            relation_oid,
            old,
        } => {
            b.put_u8(b'D');
            stream_xid(&mut b, xid);
            b.put_u32(*relation_oid);
            put_old(&mut b, old);
        }
        Message::Truncate {
            xid,
            options,
            relation_oids,
        } => {
            b.put_u8(b'T');
            stream_xid(&mut b, xid);
            b.put_i32(relation_oids.len() as i32);
            b.put_u8(*options);
            for oid in relation_oids {
                b.put_u32(*oid);
            }
        }
        Message::LogicalMessage {
            xid,
            transactional,
            lsn,
            prefix,
            content,
        } => {
            b.put_u8(b'M');
            stream_xid(&mut b, xid);
            b.put_u8(u8::from(*transactional));
            b.put_u64(lsn.0);
            put_cstring(&mut b, prefix);
            b.put_i32(content.len() as i32);
            b.put_slice(content);
        }
        Message::StreamStart { xid, first_segment } => {
            b.put_u8(b'S');
            b.put_u32(*xid);
            b.put_u8(u8::from(*first_segment));
        }
        Message::StreamStop => b.put_u8(b'E'),
        Message::StreamCommit { xid, commit } => {
            b.put_u8(b'c');
            b.put_u32(*xid);
            put_commit(&mut b, commit);
        }
        Message::StreamAbort { xid, subxid } => {
            b.put_u8(b'A');
            b.put_u32(*xid);
            b.put_u32(*subxid);
        }
        Message::BeginPrepare(info) => {
            b.put_u8(b'b');
            b.put_u64(info.prepare_lsn.0);
            b.put_u64(info.end_lsn.0);
            b.put_i64(info.prepare_time.0);
            b.put_u32(info.xid);
            put_cstring(&mut b, &info.gid);
        }
        Message::Prepare(info) => put_prepare(&mut b, b'P', info),
        Message::StreamPrepare(info) => put_prepare(&mut b, b'p', info),
        Message::CommitPrepared {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
            xid,
            gid,
        } => {
            b.put_u8(b'K');
            b.put_u8(*flags);
            b.put_u64(commit_lsn.as_u64());
            b.put_u64(end_lsn.as_u64());
            b.put_i64(commit_time.0);
            b.put_u32(*xid);
            put_cstring(&mut b, gid);
        }
        Message::RollbackPrepared {
            flags,
            prepare_end_lsn,
            rollback_end_lsn,
            prepare_time,
            rollback_time,
            xid,
            gid,
        } => {
            b.put_u8(b'r');
            b.put_u8(*flags);
            b.put_u64(prepare_end_lsn.as_u64());
            b.put_u64(rollback_end_lsn.as_u64());
            b.put_i64(prepare_time.0);
            b.put_i64(rollback_time.0);
            b.put_u32(*xid);
            put_cstring(&mut b, gid);
        }
    }
    b.freeze()
}

fn put_commit(b: &mut BytesMut, commit: &Commit) {
    b.put_u8(commit.flags);
    b.put_u64(commit.commit_lsn.as_u64());
    b.put_u64(commit.end_lsn.as_u64());
    b.put_i64(commit.commit_time.0);
}

fn put_prepare(b: &mut BytesMut, tag: u8, info: &PrepareInfo) {
    b.put_u8(tag);
    b.put_u8(info.flags);
    b.put_u64(info.prepare_lsn.0);
    b.put_u64(info.end_lsn.0);
    b.put_i64(info.prepare_time.0);
    b.put_u32(info.xid);
    put_cstring(b, &info.gid);
}

fn put_old(b: &mut BytesMut, old: &OldTuple) {
    match old {
        OldTuple::Key(tuple) => {
            b.put_u8(b'K');
            put_tuple(b, tuple);
        }
        OldTuple::Full(tuple) => {
            b.put_u8(b'O');
            put_tuple(b, tuple);
        }
    }
}

fn put_tuple(b: &mut BytesMut, tuple: &Tuple) {
    b.put_u16(tuple.0.len() as u16);
    for value in &tuple.0 {
        match value {
            TupleValue::Null => b.put_u8(b'n'),
            TupleValue::UnchangedToast => b.put_u8(b'u'),
            TupleValue::Text(data) | TupleValue::Binary(data) => {
                b.put_u8(if matches!(value, TupleValue::Text(_)) {
                    b't'
                } else {
                    b'b'
                });
                b.put_i32(data.len() as i32);
                b.put_slice(data);
            }
        }
    }
}

fn put_cstring(b: &mut BytesMut, text: &str) {
    b.put_slice(text.as_bytes());
    b.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
    use crate::source::pgoutput::{decode, Begin, Column, Relation};
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(|v| TupleValue::Text(v.into())),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(|v| TupleValue::Binary(v.into())),
        ]
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        prop::collection::vec(value(), 0..5).prop_map(Tuple)
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z.\" ,/]{1,8}"
    }

    /// Messages, each with whether it is sent inside a streamed block.
    fn message() -> impl Strategy<Value = (Message, bool)> {
        let xid = prop::option::of(any::<u32>());
        let commit =
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(flags, c, e, t)| {
                Commit {
                    flags,
                    commit_lsn: CommitLsn(Lsn(c)),
                    end_lsn: EndLsn(Lsn(e)),
                    commit_time: PgTimestamp(t),
                }
            });
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, xid)| (
                Message::Begin(Begin {
                    final_lsn: CommitLsn(Lsn(l)),
                    commit_time: PgTimestamp(t),
                    xid
                }),
                false
            )),
            commit.clone().prop_map(|c| (Message::Commit(c), false)),
            (any::<u32>(), commit)
                .prop_map(|(xid, commit)| (Message::StreamCommit { xid, commit }, false)),
            (
                xid.clone(),
                any::<u32>(),
                name(),
                name(),
                prop::collection::vec(name(), 0..4)
            )
                .prop_map(|(xid, oid, namespace, name, columns)| (
                    Message::Relation(Relation {
                        xid,
                        oid,
                        namespace,
                        name,
                        replica_identity: b'd',
                        columns: columns
                            .into_iter()
                            .map(|name| Column {
                                flags: 1,
                                name,
                                type_oid: 25,
                                type_modifier: -1
                            })
                            .collect(),
                    }),
                    xid.is_some()
                )),
            (xid.clone(), any::<u32>(), tuple()).prop_map(|(xid, relation_oid, new)| (
                Message::Insert {
                    xid,
                    relation_oid,
                    new
                },
                xid.is_some()
            )),
            (
                xid.clone(),
                any::<u32>(),
                prop::option::of(tuple()),
                tuple()
            )
                .prop_map(|(xid, relation_oid, old, new)| (
                    Message::Update {
                        xid,
                        relation_oid,
                        old: old.map(OldTuple::Full),
                        new
                    },
                    xid.is_some()
                )),
            (xid.clone(), any::<u32>(), tuple()).prop_map(|(xid, relation_oid, old)| (
                Message::Delete {
                    xid,
                    relation_oid,
                    old: OldTuple::Key(old)
                },
                xid.is_some()
            )),
            (xid.clone(), prop::collection::vec(any::<u32>(), 0..4)).prop_map(
                |(xid, relation_oids)| (
                    Message::Truncate {
                        xid,
                        options: 1,
                        relation_oids
                    },
                    xid.is_some()
                )
            ),
            (
                xid,
                any::<bool>(),
                name(),
                prop::collection::vec(any::<u8>(), 0..8)
            )
                .prop_map(|(xid, transactional, prefix, content)| (
                    Message::LogicalMessage {
                        xid,
                        transactional,
                        lsn: Lsn(7),
                        prefix,
                        content: content.into()
                    },
                    xid.is_some()
                )),
            (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| (
                Message::StreamStart { xid, first_segment },
                false
            )),
            Just((Message::StreamStop, true)),
            (any::<u32>(), any::<u32>())
                .prop_map(|(xid, subxid)| (Message::StreamAbort { xid, subxid }, false)),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode((message, in_block) in message()) {
            let bytes = encode(&message);
            prop_assert_eq!(decode(&bytes, in_block).unwrap(), message);
        }
    }
}
