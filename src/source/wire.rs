//! The streaming replication sub-protocol carried in CopyData: pure functions over bytes.
//!
//! Server to client: XLogData (`w`) and Primary keepalive (`k`).
//! Client to server: Standby status update (`r`).

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
    #[error("replication frame {tag:?} is {len} bytes, shorter than its {need}-byte header")]
    Short { tag: char, len: usize, need: usize },
    #[error("unknown replication frame tag {0:#04x}")]
    UnknownTag(u8),
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
pub fn standby_status_update(flushed: EndLsn, now: PgTimestamp) -> Bytes {
    let mut buf = BytesMut::with_capacity(34);
    buf.put_u8(b'r');
    buf.put_u64(flushed.as_u64());
    buf.put_u64(flushed.as_u64());
    buf.put_u64(flushed.as_u64());
    buf.put_i64(now.0);
    buf.put_u8(0);
    buf.freeze()
}

#[cfg(test)]
mod tests {
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
        let update = standby_status_update(EndLsn(Lsn(0x10)), PgTimestamp(3));
        assert_eq!(update.len(), 34);
        assert_eq!(update[0], b'r');
        for field in 0..3 {
            let start = 1 + field * 8;
            assert_eq!(&update[start..start + 8], &0x10u64.to_be_bytes());
        }
    }
}
