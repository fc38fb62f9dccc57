//! pgoutput: everything tidemark knows of the logical replication message
//! format lives in this module. Bytes in, typed messages out, and back; no I/O.
//!
//! - `decode`: one message, whole.
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
mod decode;
mod encode;
mod peek;

pub use decode::decode;
pub use encode::encode;
pub use peek::{finished, peek, Finished, Peek, PeekKind, TxnState};

use bytes::Bytes;

use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};

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

#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin {
        origin_lsn: Lsn,
        name: String,
    },
    Relation(Relation),
    Type {
        xid: Option<u32>,
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        relation_oid: u32,
        new: Tuple,
    },
    Update {
        xid: Option<u32>,
        relation_oid: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        xid: Option<u32>,
        relation_oid: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        options: u8,
        relation_oids: Vec<u32>,
    },
    LogicalMessage {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        commit: Commit,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
    BeginPrepare(PrepareInfo),
    Prepare(PrepareInfo),
    CommitPrepared {
        flags: u8,
        commit_lsn: CommitLsn,
        end_lsn: EndLsn,
        commit_time: PgTimestamp,
        xid: u32,
        gid: String,
    },
    RollbackPrepared {
        flags: u8,
        prepare_end_lsn: EndLsn,
        rollback_end_lsn: EndLsn,
        prepare_time: PgTimestamp,
        rollback_time: PgTimestamp,
        xid: u32,
        gid: String,
    },
    StreamPrepare(PrepareInfo),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: CommitLsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: CommitLsn,
    pub end_lsn: EndLsn,
    pub commit_time: PgTimestamp,
}

/// Begin Prepare, Prepare and Stream Prepare share one layout (Begin Prepare has no flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrepareInfo {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// pg_class.relreplident: 'd' default (primary key), 'n' nothing, 'f' full, 'i' index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

impl Relation {
    /// The table this relation describes.
    pub fn table(&self) -> crate::base::table::TableName {
        crate::base::table::TableName::new(&self.namespace, &self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Bit 1: the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl Column {
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TupleValue {
    Null,
    /// A TOASTed value the update did not change; the server does not resend it.
    UnchangedToast,
    Text(Bytes),
    Binary(Bytes),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<TupleValue>);

/// The old row of an update or delete: only the key columns, or the whole row
/// under REPLICA IDENTITY FULL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    Key(Tuple),
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}
