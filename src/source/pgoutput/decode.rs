//! Decoding: one pgoutput message from its bytes. The tag picks the message's
//! own `parse`; every read is bounds-checked and names its field.

use bytes::Bytes;

use super::codec::Reader;
use super::*;

/// Decodes one pgoutput message. `in_stream` is true between Stream Start and Stream Stop.
pub fn decode(payload: &Bytes, in_stream: bool) -> Result<Message, DecodeError> {
    let mut r = Reader::new(payload);
    let r = &mut r;
    let message = match r.u8("message tag")? {
        b'B' => Message::Begin(Begin::parse(r)?),
        b'C' => Message::Commit(Commit::parse(r)?),
        b'O' => Message::Origin(Origin::parse(r)?),
        b'R' => Message::Relation(Relation::parse(r, in_stream)?),
        b'Y' => Message::Type(Type::parse(r, in_stream)?),
        b'I' => Message::Insert(Insert::parse(r, in_stream)?),
        b'U' => Message::Update(Update::parse(r, in_stream)?),
        b'D' => Message::Delete(Delete::parse(r, in_stream)?),
        b'T' => Message::Truncate(Truncate::parse(r, in_stream)?),
        b'M' => Message::LogicalMessage(LogicalMessage::parse(r, in_stream)?),
        b'S' => Message::StreamStart(StreamStart::parse(r)?),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit::parse(r)?),
        b'A' => Message::StreamAbort(StreamAbort::parse(r)?),
        b'b' => Message::BeginPrepare(PrepareInfo::parse_begin(r)?),
        b'P' => Message::Prepare(PrepareInfo::parse(r)?),
        b'p' => Message::StreamPrepare(PrepareInfo::parse(r)?),
        b'K' => Message::CommitPrepared(CommitPrepared::parse(r)?),
        b'r' => Message::RollbackPrepared(RollbackPrepared::parse(r)?),
        other => return Err(DecodeError::UnknownTag(other)),
    };
    match r.remaining() {
        0 => Ok(message),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
