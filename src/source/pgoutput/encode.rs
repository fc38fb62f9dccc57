//! Encoding: a message back to the bytes the server sends, the exact inverse
//! of `decode` (a property test holds them to it). Tests and benchmarks build
//! their streams with it instead of writing bytes by hand.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;

/// The message's bytes. A message that carries `Some(xid)` is encoded as it
/// is sent inside a streamed block.
pub fn encode(message: &Message) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(message.tag());
    let b = &mut buf;
    match message {
        Message::Begin(m) => m.put(b),
        Message::Commit(m) => m.put(b),
        Message::Origin(m) => m.put(b),
        Message::Relation(m) => m.put(b),
        Message::Type(m) => m.put(b),
        Message::Insert(m) => m.put(b),
        Message::Update(m) => m.put(b),
        Message::Delete(m) => m.put(b),
        Message::Truncate(m) => m.put(b),
        Message::LogicalMessage(m) => m.put(b),
        Message::StreamStart(m) => m.put(b),
        Message::StreamStop => {}
        Message::StreamCommit(m) => m.put(b),
        Message::StreamAbort(m) => m.put(b),
        Message::BeginPrepare(m) => m.put_begin(b),
        Message::Prepare(m) | Message::StreamPrepare(m) => m.put(b),
        Message::CommitPrepared(m) => m.put(b),
        Message::RollbackPrepared(m) => m.put(b),
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
    use crate::source::pgoutput::*;
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
            (any::<u32>(), commit).prop_map(|(xid, commit)| (
                Message::StreamCommit(StreamCommit { xid, commit }),
                false
            )),
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
                Message::Insert(Insert {
                    xid,
                    relation_oid,
                    new
                }),
                xid.is_some()
            )),
            (
                xid.clone(),
                any::<u32>(),
                prop::option::of(tuple()),
                tuple()
            )
                .prop_map(|(xid, relation_oid, old, new)| (
                    Message::Update(Update {
                        xid,
                        relation_oid,
                        old: old.map(OldTuple::Full),
                        new
                    }),
                    xid.is_some()
                )),
            (xid.clone(), any::<u32>(), tuple()).prop_map(|(xid, relation_oid, old)| (
                Message::Delete(Delete {
                    xid,
                    relation_oid,
                    old: OldTuple::Key(old)
                }),
                xid.is_some()
            )),
            (xid.clone(), prop::collection::vec(any::<u32>(), 0..4)).prop_map(
                |(xid, relation_oids)| (
                    Message::Truncate(Truncate {
                        xid,
                        options: 1,
                        relation_oids
                    }),
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
                    Message::LogicalMessage(LogicalMessage {
                        xid,
                        transactional,
                        lsn: Lsn(7),
                        prefix,
                        content: content.into()
                    }),
                    xid.is_some()
                )),
            (any::<u32>(), any::<bool>()).prop_map(|(xid, first_segment)| (
                Message::StreamStart(StreamStart { xid, first_segment }),
                false
            )),
            Just((Message::StreamStop, true)),
            (any::<u32>(), any::<u32>()).prop_map(|(xid, subxid)| (
                Message::StreamAbort(StreamAbort { xid, subxid }),
                false
            )),
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
