//! The segment log: capture's durable, append-only record of everything the
//! server sent for the watched tables (byte format: `proto/segment.md`).
//!
//! Correctness argument:
//! - Every record is framed with its length and a CRC32C. On open, the writer
//!   reads the last segment and cuts it at the first frame that is partial or
//!   fails its CRC. Anything past that point was never fsynced (fsync covers a
//!   prefix of the file), so no confirmed record is lost by the cut.
//! - The *resume LSN* of the log is the highest end LSN of a transaction whose
//!   finishing message (Commit, Stream Commit, Commit/Rollback Prepared) is in
//!   the log, or of a Progress record. The server never needs to resend
//!   anything before it. Capture reports to PostgreSQL only the resume LSN of
//!   the fsynced prefix, so the slot never passes what is durable here.
//! - After a crash the server resends every transaction that did not finish
//!   before the resume LSN, from its start. Capture writes a Resume record at
//!   the start of every session, and readers drop every transaction left
//!   unfinished before a Resume record. Each committed transaction is thus read
//!   exactly once: the copy written before the crash was either finished (and
//!   is then never resent) or is dropped.
//! - A segment is sealed by appending a Seal record that holds its index,
//!   then fsyncing; a sealed segment is never written again.

pub mod audit;
pub mod committed;
pub mod openings;
pub mod reader;
pub mod record;
pub mod segment;
mod syncer;
pub mod writer;

use crate::base::exit::ExitCode;
use std::path::PathBuf;

pub use reader::{LogReader, Position};
pub use record::{Record, RecordKind, SegmentIndex};
pub use writer::{Appender, LogWriter, Recovery};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log dir {}: {source}; check [log] dir and that tidemark's user may write there", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("log dir {} is in use by another tidemark capture; stop it, or give this one its own [log] dir", path.display())]
    Locked { path: PathBuf },
    #[error("{} does not exist; check [log] dir, or run `tidemark capture` first", path.display())]
    Missing { path: PathBuf },
    #[error("segment {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("segment {} is corrupt at byte {offset} ({problem}); restore it from the archive or move it aside", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        problem: record::FrameError,
    },
    #[error("segment {} is not a whole sealed segment: {problem}", path.display())]
    NotSealed { path: PathBuf, problem: String },
    #[error("{} is not a tidemark segment (bad magic); remove stray .seg files from the log dir", path.display())]
    NotASegment { path: PathBuf },
    #[error("segment {} has format version {version}; this tidemark reads version {}", path.display(), segment::FORMAT_VERSION)]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("transaction {xid} (commit {commit_lsn}) started before the segments read begin, so its changes cannot be applied whole; tidemark refuses rather than apply part of it")]
    Incomplete {
        xid: u32,
        commit_lsn: crate::base::position::CommitLsn,
    },
    #[error("transaction {xid} changes relation {oid}, but no Relation message for it came first; the log is incomplete, rebuild it from the archive")]
    UnknownRelation { xid: u32, oid: u32 },
    #[error("record at {} offset {offset} is not valid pgoutput: {problem}", path.display())]
    Decode {
        path: PathBuf,
        offset: u64,
        problem: crate::source::pgoutput::DecodeError,
    },
}

impl LogError {
    pub fn exit_code(&self) -> ExitCode {
        use LogError::*;
        match self {
            Dir { .. }
            | Locked { .. }
            | Missing { .. }
            | NotASegment { .. }
            | UnsupportedVersion { .. } => ExitCode::BadInput,
            Io { .. }
            | Corrupt { .. }
            | NotSealed { .. }
            | Incomplete { .. }
            | UnknownRelation { .. }
            | Decode { .. } => ExitCode::Failure,
        }
    }
}
