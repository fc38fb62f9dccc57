//! pgoutput: everything tidemark knows of the logical replication message
//! format lives in this module. Bytes in, typed messages out, and back; no I/O.
//!
//! - `transaction` and `change`: one type per message, each with its `parse`
//!   and its `put`, over `codec`'s bounds-checked reader and writers.
//! - `decode`: one message, whole, dispatched on its tag.
//! - `encode`: the inverse, for tests and benchmarks that build streams.
//! - `peek`: what a message is and which transaction it opens or finishes,
//!   from its first bytes, cheap enough for every message capture receives;
//!   and `TxnState`, the one tracker of what is open in the stream, shared
//!   by capture, the segment openings and the committed-transaction assembler.
//!
//! Covers every message of logical replication protocol versions 1 to 3
//! (PostgreSQL's "Logical Replication Message Formats"). Inside a streamed
//! block (between Stream Start and Stream Stop) most messages carry an extra
//! leading xid, so the caller says whether it is inside one.
//!
//! Malformed input is an error, never a panic: every read is bounds-checked.

#[cfg(test)]
pub mod build;
mod change;
mod codec;
mod decode;
mod encode;
mod peek;
mod transaction;

pub use change::{
    Column, Delete, Insert, LogicalMessage, OldTuple, Relation, Truncate, Tuple, TupleValue, Type,
    Update,
};
pub use decode::decode;
pub use encode::encode;
pub use peek::{finished, peek, Finished, Peek, PeekKind, TxnState};
pub use transaction::{
    Begin, Commit, CommitPrepared, Origin, PrepareInfo, RollbackPrepared, StreamAbort,
    StreamCommit, StreamStart,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error(
        "pgoutput message ends early: needed {needed} more bytes for {field} at offset {offset}"
    )]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("unknown pgoutput message tag {0:#04x}")]
    UnknownTag(u8),
    #[error("unknown tuple column kind {kind:#04x} at offset {offset}")]
    UnknownColumnKind { kind: u8, offset: usize },
    #[error("unexpected tuple marker {marker:#04x} in {message} at offset {offset}")]
    UnexpectedMarker {
        marker: u8,
        message: &'static str,
        offset: usize,
    },
    #[error("string without terminating NUL in {field} at offset {offset}")]
    UnterminatedString { field: &'static str, offset: usize },
    #[error("negative length {length} in {field} at offset {offset}")]
    NegativeLength {
        field: &'static str,
        offset: usize,
        length: i32,
    },
    #[error("{0} trailing bytes after a complete pgoutput message")]
    TrailingBytes(usize),
}

/// One pgoutput message; each variant's type has its own `parse` and `put`.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    LogicalMessage(LogicalMessage),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(PrepareInfo),
    Prepare(PrepareInfo),
    CommitPrepared(CommitPrepared),
    RollbackPrepared(RollbackPrepared),
    StreamPrepare(PrepareInfo),
}

impl Message {
    /// The byte that opens the message on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin(_) => b'B',
            Message::Commit(_) => b'C',
            Message::Origin(_) => b'O',
            Message::Relation(_) => b'R',
            Message::Type(_) => b'Y',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::LogicalMessage(_) => b'M',
            Message::StreamStart(_) => b'S',
            Message::StreamStop => b'E',
            Message::StreamCommit(_) => b'c',
            Message::StreamAbort(_) => b'A',
            Message::BeginPrepare(_) => b'b',
            Message::Prepare(_) => b'P',
            Message::CommitPrepared(_) => b'K',
            Message::RollbackPrepared(_) => b'r',
            Message::StreamPrepare(_) => b'p',
        }
    }
}
