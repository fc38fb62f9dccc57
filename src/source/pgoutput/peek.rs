//! Peeking: what a message is, which transaction it names and whether it
//! finishes one, read from fixed offsets without decoding the message whole.
//! Capture does this for every message it receives, so it allocates nothing.
//!
//! `TxnState` is the one tracker of what is open at a point of the stream.
//! Why a keepalive position is a safe resume point only when nothing is open:
//! the server sends in order, so every transaction that finished before the
//! keepalive's position has arrived; one still open would be resent whole
//! after a restart, but only if the resume point is not past its start.

use super::DecodeError;
use crate::base::position::{EndLsn, Lsn, PgTimestamp};

/// A message's kind, from its tag byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeekKind {
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    StreamStart,
    StreamStop,
    StreamCommit,
    StreamAbort,
    BeginPrepare,
    Prepare,
    CommitPrepared,
    RollbackPrepared,
    StreamPrepare,
}

/// A transaction finished on the server (committed, or a prepared one rolled
/// back): confirming `end_lsn` tells the server never to send it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub end_lsn: EndLsn,
    /// When it finished on the server.
    pub time: PgTimestamp,
}

/// What `peek` reads of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peek {
    pub kind: PeekKind,
    /// The transaction the message names, where it names one.
    pub xid: Option<u32>,
    /// Stream Abort: the subtransaction aborted (equal to `xid` for the whole transaction).
    pub subxid: Option<u32>,
    /// Insert, Update, Delete and Relation: the relation's oid.
    pub relation_oid: Option<u32>,
    pub finished: Option<Finished>,
}

/// Peeks at one message. `in_block` is true between Stream Start and Stream
/// Stop, where most messages carry a leading xid.
pub fn peek(payload: &[u8], in_block: bool) -> Result<Peek, DecodeError> {
    use PeekKind::*;
    let tag = *payload.first().ok_or(DecodeError::Truncated {
        field: "message tag",
        offset: 0,
        needed: 1,
    })?;
    let kind = match tag {
        b'B' => Begin,
        b'C' => Commit,
        b'O' => Origin,
        b'R' => Relation,
        b'Y' => Type,
        b'I' => Insert,
        b'U' => Update,
        b'D' => Delete,
        b'T' => Truncate,
        b'M' => Message,
        b'S' => StreamStart,
        b'E' => StreamStop,
        b'c' => StreamCommit,
        b'A' => StreamAbort,
        b'b' => BeginPrepare,
        b'P' => Prepare,
        b'K' => CommitPrepared,
        b'r' => RollbackPrepared,
        b'p' => StreamPrepare,
        other => return Err(DecodeError::UnknownTag(other)),
    };
    let u32_at = |at: usize, field| read(payload, at, field).map(u32::from_be_bytes);
    let u64_at = |at: usize, field| read(payload, at, field).map(u64::from_be_bytes);
    let finished = |end_at: usize, time_at: usize| -> Result<Option<Finished>, DecodeError> {
        Ok(Some(Finished {
            end_lsn: EndLsn(Lsn(u64_at(end_at, "end lsn")?)),
            time: PgTimestamp(u64_at(time_at, "timestamp")? as i64),
        }))
    };
    let mut peek = Peek {
        kind,
        xid: None,
        subxid: None,
        relation_oid: None,
        finished: None,
    };
    // Offsets follow PostgreSQL's "Logical Replication Message Formats"; the tag is byte 0.
    match kind {
        Begin => peek.xid = Some(u32_at(17, "xid")?),
        Commit => peek.finished = finished(10, 18)?,
        CommitPrepared => {
            peek.finished = finished(10, 18)?;
            peek.xid = Some(u32_at(26, "xid")?);
        }
        // rollback_end_lsn, then the prepare and the rollback timestamps.
        RollbackPrepared => {
            peek.finished = finished(10, 26)?;
            peek.xid = Some(u32_at(34, "xid")?);
        }
        StreamCommit => {
            peek.xid = Some(u32_at(1, "xid")?);
            peek.finished = finished(14, 22)?;
        }
        StreamStart => peek.xid = Some(u32_at(1, "xid")?),
        StreamAbort => {
            peek.xid = Some(u32_at(1, "xid")?);
            peek.subxid = Some(u32_at(5, "subtransaction xid")?);
        }
        BeginPrepare => peek.xid = Some(u32_at(25, "xid")?),
        Prepare | StreamPrepare => peek.xid = Some(u32_at(26, "xid")?),
        Relation | Insert | Update | Delete => {
            let oid_at = if in_block {
                peek.xid = Some(u32_at(1, "xid")?);
                5
            } else {
                1
            };
            peek.relation_oid = Some(u32_at(oid_at, "relation oid")?);
        }
        Type | Truncate | Message if in_block => peek.xid = Some(u32_at(1, "xid")?),
        Type | Truncate | Message | Origin | StreamStop => {}
    }
    Ok(peek)
}

/// For a message that finishes a transaction, its end; the layouts of those
/// messages do not depend on being inside a streamed block.
pub fn finished(payload: &[u8]) -> Option<Finished> {
    peek(payload, false).ok()?.finished
}

fn read<const N: usize>(
    payload: &[u8],
    at: usize,
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    payload
        .get(at..at + N)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DecodeError::Truncated {
            field,
            offset: at,
            needed: (at + N).saturating_sub(payload.len()),
        })
}

/// What is open at a point of the stream: a transaction sent whole (Begin …
/// Commit or Prepare), and the streamed block being sent (Stream Start …
/// Stream Stop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnState {
    open: bool,
    block: Option<u32>,
}

impl TxnState {
    /// Peeks at the next message in this context and notes what it opens or closes.
    pub fn observe(&mut self, payload: &[u8]) -> Result<Peek, DecodeError> {
        let peek = peek(payload, self.block.is_some())?;
        match peek.kind {
            PeekKind::Begin | PeekKind::BeginPrepare => self.open = true,
            PeekKind::Commit | PeekKind::Prepare => self.open = false,
            PeekKind::StreamStart => self.block = peek.xid,
            PeekKind::StreamStop => self.block = None,
            _ => {}
        }
        Ok(peek)
    }

    /// The transaction whose streamed block is being sent, if one is.
    pub fn block(&self) -> Option<u32> {
        self.block
    }

    /// Nothing is open here, so a keepalive's position is a safe resume point.
    pub fn between_transactions(&self) -> bool {
        !self.open && self.block.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::CommitLsn;
    use crate::source::pgoutput::*;

    fn commit(end: u64) -> Commit {
        Commit {
            flags: 0,
            commit_lsn: CommitLsn(Lsn(end - 1)),
            end_lsn: EndLsn(Lsn(end)),
            commit_time: PgTimestamp(end as i64 * 10),
        }
    }

    #[test]
    fn peeks_agree_with_the_decoder() {
        let finished = |end: u64, time: i64| {
            Some(Finished {
                end_lsn: EndLsn(Lsn(end)),
                time: PgTimestamp(time),
            })
        };
        let prepare = PrepareInfo {
            flags: 0,
            prepare_lsn: Lsn(5),
            end_lsn: Lsn(6),
            prepare_time: PgTimestamp(7),
            xid: 44,
            gid: "g".into(),
        };
        let cases = [
            (
                Message::Begin(Begin {
                    final_lsn: CommitLsn(Lsn(9)),
                    commit_time: PgTimestamp(1),
                    xid: 42,
                }),
                false,
                PeekKind::Begin,
                Some(42),
                None,
                None,
            ),
            (
                Message::Commit(commit(30)),
                false,
                PeekKind::Commit,
                None,
                None,
                finished(30, 300),
            ),
            (
                Message::StreamCommit(StreamCommit {
                    xid: 43,
                    commit: commit(50),
                }),
                false,
                PeekKind::StreamCommit,
                Some(43),
                None,
                finished(50, 500),
            ),
            (
                Message::CommitPrepared(CommitPrepared {
                    flags: 0,
                    commit_lsn: CommitLsn(Lsn(60)),
                    end_lsn: EndLsn(Lsn(61)),
                    commit_time: PgTimestamp(62),
                    xid: 44,
                    gid: "g".into(),
                }),
                false,
                PeekKind::CommitPrepared,
                Some(44),
                None,
                finished(61, 62),
            ),
            (
                Message::RollbackPrepared(RollbackPrepared {
                    flags: 0,
                    prepare_end_lsn: EndLsn(Lsn(70)),
                    rollback_end_lsn: EndLsn(Lsn(71)),
                    prepare_time: PgTimestamp(72),
                    rollback_time: PgTimestamp(73),
                    xid: 44,
                    gid: "g".into(),
                }),
                false,
                PeekKind::RollbackPrepared,
                Some(44),
                None,
                finished(71, 73),
            ),
            (
                Message::BeginPrepare(prepare.clone()),
                false,
                PeekKind::BeginPrepare,
                Some(44),
                None,
                None,
            ),
            (
                Message::Prepare(prepare.clone()),
                false,
                PeekKind::Prepare,
                Some(44),
                None,
                None,
            ),
            (
                Message::Insert(Insert {
                    xid: Some(45),
                    relation_oid: 16384,
                    new: Tuple(vec![]),
                }),
                true,
                PeekKind::Insert,
                Some(45),
                Some(16384),
                None,
            ),
            (
                Message::Insert(Insert {
                    xid: None,
                    relation_oid: 16385,
                    new: Tuple(vec![]),
                }),
                false,
                PeekKind::Insert,
                None,
                Some(16385),
                None,
            ),
        ];
        for (message, in_block, kind, xid, oid, done) in cases {
            let bytes = encode(&message);
            let peeked = peek(&bytes, in_block).unwrap();
            assert_eq!(
                (
                    peeked.kind,
                    peeked.xid,
                    peeked.relation_oid,
                    peeked.finished
                ),
                (kind, xid, oid, done),
                "{message:?}"
            );
        }
    }

    #[test]
    fn tracks_what_is_open() {
        let mut state = TxnState::default();
        let begin = encode(&Message::Begin(Begin {
            final_lsn: CommitLsn(Lsn(9)),
            commit_time: PgTimestamp(1),
            xid: 1,
        }));
        state.observe(&begin).unwrap();
        assert!(!state.between_transactions());
        state
            .observe(&encode(&Message::Commit(commit(10))))
            .unwrap();
        assert!(state.between_transactions());
        state
            .observe(&encode(&Message::StreamStart(StreamStart {
                xid: 7,
                first_segment: true,
            })))
            .unwrap();
        assert_eq!(state.block(), Some(7));
        // Inside the block, a change carries the stream's xid before its relation.
        let insert = encode(&Message::Insert(Insert {
            xid: Some(7),
            relation_oid: 3,
            new: Tuple(vec![]),
        }));
        assert_eq!(state.observe(&insert).unwrap().relation_oid, Some(3));
        state.observe(&encode(&Message::StreamStop)).unwrap();
        assert!(state.between_transactions());
    }

    #[test]
    fn short_or_unknown_messages_are_errors() {
        assert!(peek(&[], false).is_err());
        assert!(peek(b"C\0", false).is_err());
        assert!(peek(b"Z", false).is_err());
        assert_eq!(finished(b"C"), None);
    }
}
