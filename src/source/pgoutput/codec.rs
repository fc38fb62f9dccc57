//! The two halves every message shares: a bounds-checked `Reader` whose reads
//! name the field they were reading, and `put_*` writers that are its inverse.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;
use crate::base::position::{Lsn, PgTimestamp};

pub(super) struct Reader {
    buf: Bytes,
    len: usize,
}

impl Reader {
    pub(super) fn new(payload: &Bytes) -> Reader {
        Reader {
            buf: payload.clone(),
            len: payload.len(),
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub(super) fn offset(&self) -> usize {
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

    pub(super) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        self.need(n, field)?;
        self.buf.advance(n);
        Ok(())
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_i32())
    }

    pub(super) fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.need(8, field)?;
        Ok(Lsn(self.buf.get_u64()))
    }

    pub(super) fn timestamp(&mut self, field: &'static str) -> Result<PgTimestamp, DecodeError> {
        self.need(8, field)?;
        Ok(PgTimestamp(self.buf.get_i64()))
    }

    /// The xid that leads a message sent inside a streamed block.
    pub(super) fn stream_xid(&mut self, in_stream: bool) -> Result<Option<u32>, DecodeError> {
        match in_stream {
            true => Ok(Some(self.u32("xid")?)),
            false => Ok(None),
        }
    }

    /// An Int32 length or count, which may not be negative.
    pub(super) fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.offset();
        let length = self.i32(field)?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
            field,
            offset,
            length,
        })
    }

    pub(super) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    pub(super) fn cstring(&mut self, field: &'static str) -> Result<String, DecodeError> {
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

    /// Reads a one-byte marker that must be one of `accepted`.
    pub(super) fn marker(
        &mut self,
        accepted: &[u8],
        message: &'static str,
    ) -> Result<u8, DecodeError> {
        let offset = self.offset();
        match self.u8("tuple marker")? {
            marker if accepted.contains(&marker) => Ok(marker),
            marker => Err(DecodeError::UnexpectedMarker {
                marker,
                message,
                offset,
            }),
        }
    }
}

pub(super) fn put_stream_xid(b: &mut BytesMut, xid: Option<u32>) {
    if let Some(xid) = xid {
        b.put_u32(xid);
    }
}

pub(super) fn put_cstring(b: &mut BytesMut, text: &str) {
    b.put_slice(text.as_bytes());
    b.put_u8(0);
}

/// An Int32 length; lengths past i32 cannot come from the server.
pub(super) fn put_length(b: &mut BytesMut, length: usize) {
    b.put_i32(i32::try_from(length).unwrap_or(i32::MAX));
}
