//! The replication connection's bytes, as pure functions: splitting the
//! backend's message stream into messages, and the streaming replication
//! sub-protocol carried in CopyData.
//!
//! Server to client: XLogData (`w`) and Primary keepalive (`k`).
//! Client to server: Standby status update (`r`).
//!
//! Nothing here panics on any input: every length is checked before use, and
//! a message that claims to be larger than any the server sends is an error,
//! not an allocation.

use bytes::{BufMut, Bytes, BytesMut};

use crate::base::position::{EndLsn, Lsn, PgTimestamp};

#[derive(Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// A pgoutput message, and the WAL position it belongs to.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        payload: Bytes,
    },
    /// The server's decoding position; a reply is due now if `reply_requested`.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("backend message {tag:?} claims a length of {len} bytes, outside 4 to {MAX_MESSAGE}")]
    BadLength { tag: char, len: usize },
    #[error("replication frame {tag:?} is {len} bytes, shorter than its {need}-byte header")]
    Short { tag: char, len: usize, need: usize },
    #[error("unknown replication frame tag {0:#04x}")]
    UnknownTag(u8),
}

/// The largest backend message accepted: PostgreSQL allocates at most 1 GB
/// for one, and a larger length means the stream is out of step.
pub const MAX_MESSAGE: usize = 1 << 30;

/// Splits the next whole backend message (tag, length, body) off the front
/// of `buf`; `None` until it has all arrived.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = char::from(header[0]);
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(FrameError::BadLength { tag, len });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(1 + len)))
}

/// What a backend message is, while streaming.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamMessage {
    /// CopyData: its payload.
    CopyData(Bytes),
    /// The server ended the stream: CopyDone, or, when a walsender stops for
    /// a server shutdown, CommandComplete straight away (walsender.c, WalSndDone).
    CopyDone,
    /// A notice: nothing to act on.
    Notice,
    /// Anything else (an ErrorResponse, say): its tag, and the whole message.
    Other(u8, BytesMut),
}

/// Classifies one whole message from `split_message`.
pub fn stream_message(mut message: BytesMut) -> StreamMessage {
    match message.first() {
        Some(b'd') => {
            let _ = message.split_to(5);
            StreamMessage::CopyData(message.freeze())
        }
        Some(b'c' | b'C') => StreamMessage::CopyDone,
        Some(b'N') => StreamMessage::Notice,
        Some(&tag) => StreamMessage::Other(tag, message),
        None => StreamMessage::Other(0, message),
    }
}

const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;

pub fn parse_server_frame(mut data: Bytes) -> Result<ServerFrame, FrameError> {
    let be_u64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8-byte slice"));
    match data.first() {
        Some(b'w') => {
            if data.len() < XLOG_HEADER {
                return Err(FrameError::Short {
                    tag: 'w',
                    len: data.len(),
                    need: XLOG_HEADER,
                });
            }
            let wal_start = Lsn(be_u64(&data[1..9]));
            let wal_end = Lsn(be_u64(&data[9..17]));
            let payload = data.split_off(XLOG_HEADER);
            Ok(ServerFrame::XLogData {
                wal_start,
                wal_end,
                payload,
            })
        }
        Some(b'k') => {
            if data.len() < KEEPALIVE_LEN {
                return Err(FrameError::Short {
                    tag: 'k',
                    len: data.len(),
                    need: KEEPALIVE_LEN,
                });
            }
            Ok(ServerFrame::Keepalive {
                wal_end: Lsn(be_u64(&data[1..9])),
                reply_requested: data[17] == 1,
            })
        }
        Some(&tag) => Err(FrameError::UnknownTag(tag)),
        None => Err(FrameError::UnknownTag(0)),
    }
}

/// A standby status update reporting `flushed` as written, flushed and applied.
///
/// Logical slots advance `confirmed_flush_lsn` from the flush field; reporting
/// one position for all three keeps the server's view exactly at what is durable.
pub fn standby_status_update(flushed: EndLsn, now: PgTimestamp, reply_requested: bool) -> Bytes {
    let mut buf = BytesMut::with_capacity(34);
    buf.put_u8(b'r');
    buf.put_u64(flushed.as_u64());
    buf.put_u64(flushed.as_u64());
    buf.put_u64(flushed.as_u64());
    buf.put_i64(now.0);
    buf.put_u8(u8::from(reply_requested));
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend(((body.len() + 4) as u32).to_be_bytes());
        m.extend(body);
        m
    }

    #[test]
    fn splits_whole_messages_and_waits_for_the_rest() {
        let mut stream = message(b'd', b"wxyz");
        stream.extend(message(b'c', b""));
        let mut buf = BytesMut::from(&stream[..7]);
        assert_eq!(split_message(&mut buf), Ok(None));
        buf.extend_from_slice(&stream[7..]);
        let first = split_message(&mut buf).unwrap().unwrap();
        assert_eq!(
            stream_message(first),
            StreamMessage::CopyData(Bytes::from_static(b"wxyz"))
        );
        let second = split_message(&mut buf).unwrap().unwrap();
        assert_eq!(stream_message(second), StreamMessage::CopyDone);
        assert_eq!(split_message(&mut buf), Ok(None));
    }

    #[test]
    fn a_walsender_stopping_for_shutdown_ends_the_stream() {
        // WalSndDone sends CommandComplete ("COPY 0") without a CopyDone first.
        let done = BytesMut::from(&message(b'C', b"COPY 0\0")[..]);
        assert_eq!(stream_message(done), StreamMessage::CopyDone);
    }

    #[test]
    fn impossible_lengths_are_errors_not_allocations() {
        for len in [0u32, 3, u32::MAX] {
            let mut buf = BytesMut::from(&[b'd'][..]);
            buf.extend_from_slice(&len.to_be_bytes());
            assert!(matches!(
                split_message(&mut buf),
                Err(FrameError::BadLength { tag: 'd', .. })
            ));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        /// Any bytes, in any chunks: splitting, classifying and parsing never panic.
        #[test]
        fn any_stream_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let cut = cut.min(data.len());
            let mut buf = BytesMut::from(&data[..cut]);
            for chunk in [&data[..0], &data[cut..]] {
                buf.extend_from_slice(chunk);
                while let Ok(Some(message)) = split_message(&mut buf) {
                    match stream_message(message) {
                        StreamMessage::CopyData(payload) => {
                            let _ = parse_server_frame(payload);
                        }
                        // What the connection does with the rest: parse it as a backend message.
                        StreamMessage::Other(_, mut message) => {
                            let _ = postgres_protocol::message::backend::Message::parse(&mut message);
                        }
                        StreamMessage::CopyDone | StreamMessage::Notice => {}
                    }
                }
            }
        }

        /// Well-framed messages with arbitrary bodies split back exactly.
        #[test]
        fn framed_messages_split_back(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut buf = BytesMut::new();
            for body in &bodies {
                buf.extend_from_slice(&message(b'd', body));
            }
            for body in &bodies {
                let split = split_message(&mut buf).unwrap().unwrap();
                prop_assert_eq!(stream_message(split), StreamMessage::CopyData(Bytes::copy_from_slice(body)));
            }
            prop_assert!(buf.is_empty());
        }
    }

    use super::*;
    use crate::base::position::{EndLsn, Lsn};

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut frame = vec![b'w'];
        frame.extend(5u64.to_be_bytes());
        frame.extend(9u64.to_be_bytes());
        frame.extend(0u64.to_be_bytes());
        frame.extend(b"B...");
        assert_eq!(
            parse_server_frame(Bytes::from(frame)).unwrap(),
            ServerFrame::XLogData {
                wal_start: Lsn(5),
                wal_end: Lsn(9),
                payload: Bytes::from_static(b"B...")
            }
        );
        let mut keepalive = vec![b'k'];
        keepalive.extend(77u64.to_be_bytes());
        keepalive.extend(0u64.to_be_bytes());
        keepalive.push(1);
        assert_eq!(
            parse_server_frame(Bytes::from(keepalive)).unwrap(),
            ServerFrame::Keepalive {
                wal_end: Lsn(77),
                reply_requested: true
            }
        );
    }

    #[test]
    fn rejects_short_and_unknown_frames() {
        assert!(matches!(
            parse_server_frame(Bytes::from_static(b"w\0\0")),
            Err(FrameError::Short { tag: 'w', .. })
        ));
        assert!(matches!(
            parse_server_frame(Bytes::from_static(b"k\0")),
            Err(FrameError::Short { tag: 'k', .. })
        ));
        assert_eq!(
            parse_server_frame(Bytes::from_static(b"x")),
            Err(FrameError::UnknownTag(b'x'))
        );
    }

    #[test]
    fn status_update_reports_one_position() {
        let update = standby_status_update(EndLsn(Lsn(0x10)), PgTimestamp(3), false);
        assert_eq!(update.len(), 34);
        assert_eq!(update[0], b'r');
        for field in 0..3 {
            let start = 1 + field * 8;
            assert_eq!(&update[start..start + 8], &0x10u64.to_be_bytes());
        }
        assert_eq!(update[33], 0);
        let probe = standby_status_update(EndLsn(Lsn(0x10)), PgTimestamp(3), true);
        assert_eq!(probe[33], 1, "asks the server to answer at once");
    }
}
