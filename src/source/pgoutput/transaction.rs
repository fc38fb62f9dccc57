//! The messages that frame transactions: Begin and Commit, the streamed
//! block's Start, Stop, Commit and Abort, two-phase Prepare and its outcomes,
//! and Origin. Each has its `parse` (after the tag) and its `put` (the inverse).

use bytes::{BufMut, BytesMut};

use super::codec::{put_cstring, Reader};
use super::DecodeError;
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: CommitLsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

impl Begin {
    pub(super) fn parse(r: &mut Reader) -> Result<Begin, DecodeError> {
        Ok(Begin {
            final_lsn: CommitLsn(r.lsn("final_lsn")?),
            commit_time: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u64(self.final_lsn.as_u64());
        b.put_i64(self.commit_time.0);
        b.put_u32(self.xid);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: CommitLsn,
    pub end_lsn: EndLsn,
    pub commit_time: PgTimestamp,
}

impl Commit {
    pub(super) fn parse(r: &mut Reader) -> Result<Commit, DecodeError> {
        Ok(Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: CommitLsn(r.lsn("commit lsn")?),
            end_lsn: EndLsn(r.lsn("end lsn")?),
            commit_time: r.timestamp("commit timestamp")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u8(self.flags);
        b.put_u64(self.commit_lsn.as_u64());
        b.put_u64(self.end_lsn.as_u64());
        b.put_i64(self.commit_time.0);
    }
}

/// Where a replicated transaction came from (only with `origin` filtering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub origin_lsn: Lsn,
    pub name: String,
}

impl Origin {
    pub(super) fn parse(r: &mut Reader) -> Result<Origin, DecodeError> {
        Ok(Origin {
            origin_lsn: r.lsn("origin lsn")?,
            name: r.cstring("origin name")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u64(self.origin_lsn.0);
        put_cstring(b, &self.name);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    pub first_segment: bool,
}

impl StreamStart {
    pub(super) fn parse(r: &mut Reader) -> Result<StreamStart, DecodeError> {
        Ok(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u32(self.xid);
        b.put_u8(u8::from(self.first_segment));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub commit: Commit,
}

impl StreamCommit {
    pub(super) fn parse(r: &mut Reader) -> Result<StreamCommit, DecodeError> {
        Ok(StreamCommit {
            xid: r.u32("xid")?,
            commit: Commit::parse(r)?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u32(self.xid);
        self.commit.put(b);
    }
}

/// `subxid == xid` aborts the whole streamed transaction, else one subtransaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
}

impl StreamAbort {
    pub(super) fn parse(r: &mut Reader) -> Result<StreamAbort, DecodeError> {
        let abort = StreamAbort {
            xid: r.u32("xid")?,
            subxid: r.u32("subtransaction xid")?,
        };
        // Protocol version 4 appends the abort LSN and time; they add nothing we use.
        if r.remaining() == 16 {
            r.skip(16, "abort lsn and time")?;
        }
        Ok(abort)
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u32(self.xid);
        b.put_u32(self.subxid);
    }
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

impl PrepareInfo {
    pub(super) fn parse_begin(r: &mut Reader) -> Result<PrepareInfo, DecodeError> {
        Self::parse_after_flags(r, 0)
    }

    pub(super) fn parse(r: &mut Reader) -> Result<PrepareInfo, DecodeError> {
        let flags = r.u8("flags")?;
        Self::parse_after_flags(r, flags)
    }

    fn parse_after_flags(r: &mut Reader, flags: u8) -> Result<PrepareInfo, DecodeError> {
        Ok(PrepareInfo {
            flags,
            prepare_lsn: r.lsn("prepare lsn")?,
            end_lsn: r.lsn("end lsn")?,
            prepare_time: r.timestamp("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstring("gid")?,
        })
    }

    pub(super) fn put_begin(&self, b: &mut BytesMut) {
        b.put_u64(self.prepare_lsn.0);
        b.put_u64(self.end_lsn.0);
        b.put_i64(self.prepare_time.0);
        b.put_u32(self.xid);
        put_cstring(b, &self.gid);
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u8(self.flags);
        self.put_begin(b);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPrepared {
    pub flags: u8,
    pub commit_lsn: CommitLsn,
    pub end_lsn: EndLsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

impl CommitPrepared {
    pub(super) fn parse(r: &mut Reader) -> Result<CommitPrepared, DecodeError> {
        Ok(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: CommitLsn(r.lsn("commit lsn")?),
            end_lsn: EndLsn(r.lsn("end lsn")?),
            commit_time: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstring("gid")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u8(self.flags);
        b.put_u64(self.commit_lsn.as_u64());
        b.put_u64(self.end_lsn.as_u64());
        b.put_i64(self.commit_time.0);
        b.put_u32(self.xid);
        put_cstring(b, &self.gid);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollbackPrepared {
    pub flags: u8,
    pub prepare_end_lsn: EndLsn,
    pub rollback_end_lsn: EndLsn,
    pub prepare_time: PgTimestamp,
    pub rollback_time: PgTimestamp,
    pub xid: u32,
    pub gid: String,
}

impl RollbackPrepared {
    pub(super) fn parse(r: &mut Reader) -> Result<RollbackPrepared, DecodeError> {
        Ok(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: EndLsn(r.lsn("prepare end lsn")?),
            rollback_end_lsn: EndLsn(r.lsn("rollback end lsn")?),
            prepare_time: r.timestamp("prepare timestamp")?,
            rollback_time: r.timestamp("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstring("gid")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        b.put_u8(self.flags);
        b.put_u64(self.prepare_end_lsn.as_u64());
        b.put_u64(self.rollback_end_lsn.as_u64());
        b.put_i64(self.prepare_time.0);
        b.put_i64(self.rollback_time.0);
        b.put_u32(self.xid);
        put_cstring(b, &self.gid);
    }
}
