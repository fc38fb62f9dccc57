//! The messages that describe tables and carry their changes: Relation, Type,
//! Insert, Update, Delete, Truncate and the logical Message, with the tuples
//! they hold. Each has its `parse` (after the tag) and its `put` (the inverse);
//! `in_stream` says the message leads with a streamed block's xid.

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{put_cstring, put_length, put_stream_xid, Reader};
use super::DecodeError;
use crate::base::position::Lsn;
use crate::base::table::TableName;

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
    pub fn table(&self) -> TableName {
        TableName::new(&self.namespace, &self.name)
    }

    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<Relation, DecodeError> {
        let xid = r.stream_xid(in_stream)?;
        let oid = r.u32("relation oid")?;
        let namespace = r.cstring("namespace")?;
        let name = r.cstring("relation name")?;
        let replica_identity = r.u8("replica identity")?;
        let count = r.u16("column count")?;
        let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining()));
        for _ in 0..count {
            columns.push(Column {
                flags: r.u8("column flags")?,
                name: r.cstring("column name")?,
                type_oid: r.u32("column type")?,
                type_modifier: r.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            xid,
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        b.put_u32(self.oid);
        put_cstring(b, &self.namespace);
        put_cstring(b, &self.name);
        b.put_u8(self.replica_identity);
        b.put_u16(u16::try_from(self.columns.len()).unwrap_or(u16::MAX));
        for column in &self.columns {
            b.put_u8(column.flags);
            put_cstring(b, &column.name);
            b.put_u32(column.type_oid);
            b.put_i32(column.type_modifier);
        }
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

/// A user-defined type's name, sent before the first relation that uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: String,
    pub name: String,
}

impl Type {
    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<Type, DecodeError> {
        Ok(Type {
            xid: r.stream_xid(in_stream)?,
            oid: r.u32("type oid")?,
            namespace: r.cstring("type namespace")?,
            name: r.cstring("type name")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        b.put_u32(self.oid);
        put_cstring(b, &self.namespace);
        put_cstring(b, &self.name);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub new: Tuple,
}

impl Insert {
    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<Insert, DecodeError> {
        let xid = r.stream_xid(in_stream)?;
        let relation_oid = r.u32("relation oid")?;
        r.marker(b"N", "insert")?;
        Ok(Insert {
            xid,
            relation_oid,
            new: Tuple::parse(r)?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        b.put_u32(self.relation_oid);
        b.put_u8(b'N');
        self.new.put(b);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    /// Sent only when the key changed, or always under REPLICA IDENTITY FULL.
    pub old: Option<OldTuple>,
    pub new: Tuple,
}

impl Update {
    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<Update, DecodeError> {
        let xid = r.stream_xid(in_stream)?;
        let relation_oid = r.u32("relation oid")?;
        let old = match r.marker(b"KON", "update")? {
            b'N' => None,
            marker => {
                let old = OldTuple::parse_after(marker, r)?;
                r.marker(b"N", "update")?;
                Some(old)
            }
        };
        Ok(Update {
            xid,
            relation_oid,
            old,
            new: Tuple::parse(r)?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        b.put_u32(self.relation_oid);
        if let Some(old) = &self.old {
            old.put(b);
        }
        b.put_u8(b'N');
        self.new.put(b);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub xid: Option<u32>,
    pub relation_oid: u32,
    pub old: OldTuple,
}

impl Delete {
    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<Delete, DecodeError> {
        let xid = r.stream_xid(in_stream)?;
        let relation_oid = r.u32("relation oid")?;
        let marker = r.marker(b"KO", "delete")?;
        Ok(Delete {
            xid,
            relation_oid,
            old: OldTuple::parse_after(marker, r)?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        b.put_u32(self.relation_oid);
        self.old.put(b);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub xid: Option<u32>,
    /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<Truncate, DecodeError> {
        let xid = r.stream_xid(in_stream)?;
        let count = r.length("relation count")?;
        let options = r.u8("truncate options")?;
        let mut relation_oids = Vec::with_capacity(count.min(r.remaining() / 4));
        for _ in 0..count {
            relation_oids.push(r.u32("relation oid")?);
        }
        Ok(Truncate {
            xid,
            options,
            relation_oids,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        put_length(b, self.relation_oids.len());
        b.put_u8(self.options);
        for oid in &self.relation_oids {
            b.put_u32(*oid);
        }
    }
}

/// What `pg_logical_emit_message` wrote; tidemark's DDL notes arrive this way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    pub xid: Option<u32>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

impl LogicalMessage {
    pub(super) fn parse(r: &mut Reader, in_stream: bool) -> Result<LogicalMessage, DecodeError> {
        let xid = r.stream_xid(in_stream)?;
        let flags = r.u8("message flags")?;
        let lsn = r.lsn("message lsn")?;
        let prefix = r.cstring("message prefix")?;
        let length = r.length("content length")?;
        Ok(LogicalMessage {
            xid,
            transactional: flags & 1 == 1,
            lsn,
            prefix,
            content: r.bytes(length, "message content")?,
        })
    }

    pub(super) fn put(&self, b: &mut BytesMut) {
        put_stream_xid(b, self.xid);
        b.put_u8(u8::from(self.transactional));
        b.put_u64(self.lsn.0);
        put_cstring(b, &self.prefix);
        put_length(b, self.content.len());
        b.put_slice(&self.content);
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

impl Tuple {
    fn parse(r: &mut Reader) -> Result<Tuple, DecodeError> {
        let count = r.u16("tuple column count")?;
        let mut values = Vec::with_capacity(usize::from(count).min(r.remaining()));
        for _ in 0..count {
            let offset = r.offset();
            let value = match r.u8("column kind")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let length = r.length("column length")?;
                    TupleValue::Text(r.bytes(length, "column value")?)
                }
                b'b' => {
                    let length = r.length("column length")?;
                    TupleValue::Binary(r.bytes(length, "column value")?)
                }
                kind => return Err(DecodeError::UnknownColumnKind { kind, offset }),
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn put(&self, b: &mut BytesMut) {
        b.put_u16(u16::try_from(self.0.len()).unwrap_or(u16::MAX));
        for value in &self.0 {
            let (kind, data) = match value {
                TupleValue::Null => (b'n', None),
                TupleValue::UnchangedToast => (b'u', None),
                TupleValue::Text(data) => (b't', Some(data)),
                TupleValue::Binary(data) => (b'b', Some(data)),
            };
            b.put_u8(kind);
            if let Some(data) = data {
                put_length(b, data.len());
                b.put_slice(data);
            }
        }
    }
}

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

    /// The tuple after its marker, `K` (key) or `O` (full row).
    fn parse_after(marker: u8, r: &mut Reader) -> Result<OldTuple, DecodeError> {
        let tuple = Tuple::parse(r)?;
        Ok(match marker {
            b'K' => OldTuple::Key(tuple),
            _ => OldTuple::Full(tuple),
        })
    }

    fn put(&self, b: &mut BytesMut) {
        let (marker, tuple) = match self {
            OldTuple::Key(tuple) => (b'K', tuple),
            OldTuple::Full(tuple) => (b'O', tuple),
        };
        b.put_u8(marker);
        tuple.put(b);
    }
}
