//! Decoding: one pgoutput message from its bytes. Every read is bounds-checked
//! and names the field it was reading.

use bytes::{Buf, Bytes};

use super::*;

/// Decodes one pgoutput message. `in_stream` is true between Stream Start and Stream Stop.
pub fn decode(payload: &Bytes, in_stream: bool) -> Result<Message, DecodeError> {
    let mut r = Reader {
        buf: payload.clone(),
        len: payload.len(),
    };
    let tag = r.u8("message tag")?;
    let stream_xid = |r: &mut Reader| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            Ok(Some(r.u32("xid")?))
        } else {
            Ok(None)
        }
    };
    let message = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: CommitLsn(r.lsn("final_lsn")?),
            commit_time: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(r.commit()?),
        b'O' => Message::Origin {
            origin_lsn: r.lsn("origin lsn")?,
            name: r.cstring("origin name")?,
        },
        b'R' => {
            let xid = stream_xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            let namespace = r.cstring("namespace")?;
            let name = r.cstring("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let count = r.u16("column count")?;
            let mut columns = Vec::with_capacity(usize::from(count).min(r.buf.remaining()));
            for _ in 0..count {
                columns.push(Column {
                    flags: r.u8("column flags")?,
                    name: r.cstring("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            xid: stream_xid(&mut r)?,
            oid: r.u32("type oid")?,
            namespace: r.cstring("type namespace")?,
            name: r.cstring("type name")?,
        },
        b'I' => {
            let xid = stream_xid(&mut r)?;
            let relation_oid = r.u32("relation oid")?;
            r.expect_marker(b'N', "insert")?;
            Message::Insert {
                xid,
                relation_oid,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let xid = stream_xid(&mut r)?;
            let relation_oid = r.u32("relation oid")?;
            let offset = r.offset();
            let old = match r.u8("update marker")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                marker => {
                    return Err(DecodeError::UnexpectedMarker {
                        marker,
                        message: "update",
                        offset,
                    })
                }
            };
            if old.is_some() {
                r.expect_marker(b'N', "update")?;
            }
            Message::Update {
                xid,
                relation_oid,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let xid = stream_xid(&mut r)?;
            let relation_oid = r.u32("relation oid")?;
            let offset = r.offset();
            let old = match r.u8("delete marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                marker => {
                    return Err(DecodeError::UnexpectedMarker {
                        marker,
                        message: "delete",
                        offset,
                    })
                }
            };
            Message::Delete {
                xid,
                relation_oid,
                old,
            }
        }
        b'T' => {
            let xid = stream_xid(&mut r)?;
            let count = r.i32("relation count")?;
            let count = r.length(count, "relation count")?;
            let options = r.u8("truncate options")?;
            let mut relation_oids = Vec::with_capacity(count.min(r.buf.remaining() / 4));
            for _ in 0..count {
                relation_oids.push(r.u32("relation oid")?);
            }
            Message::Truncate {
                xid,
                options,
                relation_oids,
            }
        }
        b'M' => {
            let xid = stream_xid(&mut r)?;
            let flags = r.u8("message flags")?;
            let lsn = r.lsn("message lsn")?;
            let prefix = r.cstring("message prefix")?;
            let length = r.i32("content length")?;
            let length = r.length(length, "content length")?;
            Message::LogicalMessage {
                xid,
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: r.bytes(length, "message content")?,
            }
        }
        b'S' => Message::StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: r.u32("xid")?,
            commit: r.commit()?,
        },
        b'A' => {
            let xid = r.u32("xid")?;
            let subxid = r.u32("subtransaction xid")?;
            // Protocol version 4 appends the abort LSN and time; they add nothing we use.
            if r.buf.remaining() == 16 {
                r.buf.advance(16);
            }
            Message::StreamAbort { xid, subxid }
        }
        b'b' => Message::BeginPrepare(PrepareInfo {
            flags: 0,
            prepare_lsn: r.lsn("prepare lsn")?,
            end_lsn: r.lsn("end lsn")?,
            prepare_time: r.timestamp("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstring("gid")?,
        }),
        b'P' => Message::Prepare(r.prepare()?),
        b'p' => Message::StreamPrepare(r.prepare()?),
        b'K' => Message::CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: CommitLsn(r.lsn("commit lsn")?),
            end_lsn: EndLsn(r.lsn("end lsn")?),
            commit_time: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstring("gid")?,
        },
        b'r' => Message::RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: EndLsn(r.lsn("prepare end lsn")?),
            rollback_end_lsn: EndLsn(r.lsn("rollback end lsn")?),
            prepare_time: r.timestamp("prepare timestamp")?,
            rollback_time: r.timestamp("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstring("gid")?,
        },
        other => return Err(DecodeError::UnknownTag(other)),
    };
    match r.buf.remaining() {
        0 => Ok(message),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

/// A bounds-checked reader; every read names the field it was reading.
struct Reader {
    buf: Bytes,
    len: usize,
}

impl Reader {
    fn offset(&self) -> usize {
        self.len - self.buf.remaining()
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                field,
                offset: self.offset(),
                needed: n - self.buf.remaining(),
            });
        }
        Ok(())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_i32())
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, field)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp, DecodeError> {
        self.need(8, field)?;
        Ok(PgTimestamp(self.buf.get_i64()))
    }

    fn length(&self, length: i32, field: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
            field,
            offset: self.offset(),
            length,
        })
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    fn cstring(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.offset();
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { field, offset })?;
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 1);
        Ok(text)
    }

    fn expect_marker(&mut self, expected: u8, message: &'static str) -> Result<(), DecodeError> {
        let offset = self.offset();
        match self.u8("tuple marker")? {
            marker if marker == expected => Ok(()),
            marker => Err(DecodeError::UnexpectedMarker {
                marker,
                message,
                offset,
            }),
        }
    }

    fn commit(&mut self) -> Result<Commit, DecodeError> {
        Ok(Commit {
            flags: self.u8("commit flags")?,
            commit_lsn: CommitLsn(self.lsn("commit lsn")?),
            end_lsn: EndLsn(self.lsn("end lsn")?),
            commit_time: self.timestamp("commit timestamp")?,
        })
    }

    fn prepare(&mut self) -> Result<PrepareInfo, DecodeError> {
        Ok(PrepareInfo {
            flags: self.u8("flags")?,
            prepare_lsn: self.lsn("prepare lsn")?,
            end_lsn: self.lsn("end lsn")?,
            prepare_time: self.timestamp("prepare timestamp")?,
            xid: self.u32("xid")?,
            gid: self.cstring("gid")?,
        })
    }

    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.u16("tuple column count")?;
        let mut values = Vec::with_capacity(usize::from(count).min(self.buf.remaining()));
        for _ in 0..count {
            let offset = self.offset();
            let value = match self.u8("column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let length = self.i32("column length")?;
                    let length = self.length(length, "column length")?;
                    let data = self.bytes(length, "column value")?;
                    if kind == b't' {
                        TupleValue::Text(data)
                    } else {
                        TupleValue::Binary(data)
                    }
                }
                kind => return Err(DecodeError::UnknownColumnKind { kind, offset }),
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
