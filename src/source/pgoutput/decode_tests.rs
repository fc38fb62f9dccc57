//! Tests of `decode`.

use super::*;
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

fn frame(build: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::new();
    build(&mut buf);
    buf.freeze()
}

fn text_column(buf: &mut BytesMut, value: &str) {
    buf.put_u8(b't');
    buf.put_i32(value.len() as i32);
    buf.put_slice(value.as_bytes());
}

#[test]
fn begin_and_commit() {
    let begin = frame(|b| {
        b.put_u8(b'B');
        b.put_u64(0x1_0000_0010);
        b.put_i64(42);
        b.put_u32(777);
    });
    assert_eq!(
        decode(&begin, false).unwrap(),
        Message::Begin(Begin {
            final_lsn: CommitLsn(Lsn(0x1_0000_0010)),
            commit_time: PgTimestamp(42),
            xid: 777
        })
    );
    let commit = frame(|b| {
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(100);
        b.put_u64(130);
        b.put_i64(42);
    });
    assert_eq!(finished(&commit).map(|f| f.end_lsn), Some(EndLsn(Lsn(130))));
    assert!(matches!(
        decode(&commit, false).unwrap(),
        Message::Commit(Commit {
            end_lsn: EndLsn(Lsn(130)),
            ..
        })
    ));
}

#[test]
fn relation_and_update_with_old_key_inside_a_stream() {
    let relation = frame(|b| {
        b.put_u8(b'R');
        b.put_u32(9); // stream xid
        b.put_u32(16384);
        b.put_slice(b"public\0payments\0");
        b.put_u8(b'd');
        b.put_u16(2);
        b.put_u8(1);
        b.put_slice(b"id\0");
        b.put_u32(20);
        b.put_i32(-1);
        b.put_u8(0);
        b.put_slice(b"note\0");
        b.put_u32(25);
        b.put_i32(-1);
    });
    let Message::Relation(rel) = decode(&relation, true).unwrap() else {
        panic!("not a relation")
    };
    assert_eq!(rel.xid, Some(9));
    assert_eq!(
        (rel.namespace.as_str(), rel.name.as_str()),
        ("public", "payments")
    );
    assert!(rel.columns[0].is_key() && !rel.columns[1].is_key());

    let update = frame(|b| {
        b.put_u8(b'U');
        b.put_u32(9);
        b.put_u32(16384);
        b.put_u8(b'K');
        b.put_u16(2);
        text_column(b, "1");
        b.put_u8(b'n');
        b.put_u8(b'N');
        b.put_u16(2);
        text_column(b, "2");
        b.put_u8(b'u');
    });
    assert_eq!(
        decode(&update, true).unwrap(),
        Message::Update(Update {
            xid: Some(9),
            relation_oid: 16384,
            old: Some(OldTuple::Key(Tuple(vec![
                TupleValue::Text(Bytes::from_static(b"1")),
                TupleValue::Null
            ]))),
            new: Tuple(vec![
                TupleValue::Text(Bytes::from_static(b"2")),
                TupleValue::UnchangedToast
            ]),
        })
    );
    // The same bytes outside a stream are misread as a relation oid of 9 and fail.
    assert!(decode(&update, false).is_err());
}

#[test]
fn stream_control_and_two_phase_messages() {
    let start = frame(|b| {
        b.put_u8(b'S');
        b.put_u32(5);
        b.put_u8(1);
    });
    assert_eq!(
        decode(&start, false).unwrap(),
        Message::StreamStart(StreamStart {
            xid: 5,
            first_segment: true
        })
    );
    let abort = frame(|b| {
        b.put_u8(b'A');
        b.put_u32(5);
        b.put_u32(6);
    });
    assert_eq!(
        decode(&abort, false).unwrap(),
        Message::StreamAbort(StreamAbort { xid: 5, subxid: 6 })
    );
    let stream_commit = frame(|b| {
        b.put_u8(b'c');
        b.put_u32(5);
        b.put_u8(0);
        b.put_u64(10);
        b.put_u64(20);
        b.put_i64(30);
    });
    assert_eq!(
        finished(&stream_commit).map(|f| f.end_lsn),
        Some(EndLsn(Lsn(20)))
    );
    let rollback = frame(|b| {
        b.put_u8(b'r');
        b.put_u8(0);
        b.put_u64(1);
        b.put_u64(2);
        b.put_i64(3);
        b.put_i64(4);
        b.put_u32(5);
        b.put_slice(b"gid-1\0");
    });
    assert_eq!(finished(&rollback).map(|f| f.end_lsn), Some(EndLsn(Lsn(2))));
    assert!(matches!(
        decode(&rollback, false).unwrap(),
        Message::RollbackPrepared(RollbackPrepared { xid: 5, ref gid, .. }) if gid == "gid-1"
    ));
    let begin_prepare = frame(|b| {
        b.put_u8(b'b');
        b.put_u64(1);
        b.put_u64(2);
        b.put_i64(3);
        b.put_u32(4);
        b.put_slice(b"g\0");
    });
    assert!(matches!(
        decode(&begin_prepare, false).unwrap(),
        Message::BeginPrepare(PrepareInfo { xid: 4, .. })
    ));
}

#[test]
fn truncate_and_logical_message() {
    let truncate = frame(|b| {
        b.put_u8(b'T');
        b.put_i32(2);
        b.put_u8(1);
        b.put_u32(10);
        b.put_u32(11);
    });
    assert_eq!(
        decode(&truncate, false).unwrap(),
        Message::Truncate(Truncate {
            xid: None,
            options: 1,
            relation_oids: vec![10, 11]
        })
    );
    let message = frame(|b| {
        b.put_u8(b'M');
        b.put_u8(1);
        b.put_u64(99);
        b.put_slice(b"app\0");
        b.put_i32(3);
        b.put_slice(b"hey");
    });
    assert!(matches!(
        decode(&message, false).unwrap(),
        Message::LogicalMessage(LogicalMessage { transactional: true, ref content, .. }) if &content[..] == b"hey"
    ));
}

#[test]
fn malformed_input_is_an_error() {
    assert_eq!(
        decode(&Bytes::from_static(b"Z"), false),
        Err(DecodeError::UnknownTag(b'Z'))
    );
    assert!(matches!(
        decode(&Bytes::from_static(b"B\0\0"), false),
        Err(DecodeError::Truncated {
            field: "final_lsn",
            ..
        })
    ));
    let negative = frame(|b| {
        b.put_u8(b'I');
        b.put_u32(1);
        b.put_u8(b'N');
        b.put_u16(1);
        b.put_u8(b't');
        b.put_i32(-5);
    });
    assert!(matches!(
        decode(&negative, false),
        Err(DecodeError::NegativeLength { .. })
    ));
    assert!(matches!(
        decode(&Bytes::from_static(b"E!"), false),
        Err(DecodeError::TrailingBytes(1))
    ));
    assert!(matches!(
        decode(&Bytes::new(), false),
        Err(DecodeError::Truncated {
            field: "message tag",
            ..
        })
    ));
}

fn real_messages(hex: &str) -> Vec<Bytes> {
    hex.lines()
        .map(|line| {
            let bytes = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>();
            Bytes::from(bytes)
        })
        .collect()
}

#[test]
fn decodes_a_real_protocol_v1_transaction() {
    let messages: Vec<Message> = real_messages(include_str!(
        "../../../tests/fixtures/pgoutput/v1-mixed.hex"
    ))
    .iter()
    .map(|m| decode(m, false).unwrap())
    .collect();
    assert!(matches!(messages.first(), Some(Message::Begin(_))));
    assert!(matches!(messages.last(), Some(Message::Commit(_))));
    let acct = messages
        .iter()
        .find_map(|m| match m {
            Message::Relation(r) if r.name == "acct" => Some(r),
            _ => None,
        })
        .unwrap();
    let names: Vec<&str> = acct.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "balance", "tags", "doc", "m", "big"]);
    assert!(acct.columns[0].is_key() && !acct.columns[1].is_key());
    assert!(messages
        .iter()
        .any(|m| matches!(m, Message::Type(Type { name, .. }) if name == "mood")));
    let updates: Vec<&Message> = messages
        .iter()
        .filter(|m| matches!(m, Message::Update(_)))
        .collect();
    // The balance update leaves the TOASTed column unsent; the key change carries the old key;
    // the REPLICA IDENTITY FULL table carries the whole old row.
    assert!(
        matches!(updates[0], Message::Update(Update { old: None, new, .. }) if new.0[6] == TupleValue::UnchangedToast)
    );
    assert!(matches!(
        updates[1],
        Message::Update(Update {
            old: Some(OldTuple::Key(_)),
            ..
        })
    ));
    assert!(matches!(
        updates[2],
        Message::Update(Update {
            old: Some(OldTuple::Full(_)),
            ..
        })
    ));
    assert!(messages.iter().any(|m| matches!(m,
        Message::LogicalMessage(LogicalMessage { prefix, content, transactional: true, .. }) if prefix == "app" && &content[..] == b"hello")));
    assert!(messages
        .iter()
        .any(|m| matches!(m, Message::Truncate(Truncate { relation_oids, .. }) if relation_oids.len() == 2)));
}

#[test]
fn decodes_real_protocol_v2_streamed_blocks() {
    let mut in_stream = false;
    let (mut starts, mut commits) = (0, 0);
    let mut inserts_by_xid = std::collections::HashMap::<u32, usize>::new();
    let mut committed_xid = None;
    for bytes in real_messages(include_str!(
        "../../../tests/fixtures/pgoutput/v2-streamed.hex"
    )) {
        let message = decode(&bytes, in_stream).unwrap();
        match message {
            Message::StreamStart(_) => {
                in_stream = true;
                starts += 1;
            }
            Message::StreamStop => in_stream = false,
            Message::Insert(Insert { xid: Some(xid), .. }) => {
                *inserts_by_xid.entry(xid).or_default() += 1
            }
            Message::StreamCommit(StreamCommit { xid, .. }) => {
                commits += 1;
                committed_xid = Some(xid);
            }
            _ => {}
        }
    }
    assert!(starts >= 2);
    assert_eq!(commits, 1);
    assert_eq!(inserts_by_xid.len(), 1);
    assert_eq!(inserts_by_xid[&committed_xid.unwrap()], 1491);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256), in_stream: bool) {
        let payload = Bytes::from(data);
        let _ = decode(&payload, in_stream);
        let _ = peek(&payload, in_stream);
    }

    #[test]
    fn valid_tags_with_arbitrary_bodies_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..128),
        in_stream: bool,
    ) {
        let mut data = vec![tag];
        data.extend(body);
        let _ = peek(&data, in_stream);
        let _ = decode(&Bytes::from(data), in_stream);
    }
}
