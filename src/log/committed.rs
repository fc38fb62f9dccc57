//! Committed transactions from the log, each once, in commit order.
//!
//! Why this is exact:
//! - A non-streamed transaction is sent whole at its commit, Begin to Commit,
//!   with nothing in between. A fragment without its Commit was cut short by a
//!   crash; the server resends it whole after the Resume record, so fragments
//!   are dropped at Resume.
//! - A streamed transaction arrives in blocks (Stream Start .. Stream Stop)
//!   interleaved with others. Only the positions of its blocks are kept; at
//!   Stream Commit they are read again and its changes emitted, minus those of
//!   subtransactions it aborted. Stream Abort of the top-level xid, or a
//!   Resume before the commit, drops it. Memory stays bounded by the number of
//!   blocks, not by the size of the transaction.
//! - Relation messages follow pgoutput's two contexts: the main stream, and one
//!   per streamed transaction. A committed streamed transaction's relations
//!   become known to the main stream too, as pgoutput then stops resending them.
//! - Prepared transactions are held by GID and emitted at Commit Prepared.
//!
//! The assembler reads no file itself: records are pushed to it in log order,
//! and it re-reads a span through `Reread` (the log dir, or memory in tests).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::reader::{LogReader, Position};
use super::record::{Record, RecordKind};
use super::LogError;
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
use crate::source::pgoutput::{
    self, CommitPrepared, Delete, Insert, LogicalMessage, Message, OldTuple, Relation,
    RollbackPrepared, StreamAbort, StreamCommit, StreamStart, Truncate, Tuple, TxnState, Update,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnInfo {
    pub xid: u32,
    pub commit_lsn: CommitLsn,
    pub end_lsn: EndLsn,
    pub commit_time: PgTimestamp,
}

#[derive(Debug)]
pub enum Change {
    Insert {
        relation: Arc<Relation>,
        new: Tuple,
    },
    Update {
        relation: Arc<Relation>,
        old: Option<OldTuple>,
        new: Tuple,
    },
    Delete {
        relation: Arc<Relation>,
        old: OldTuple,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
        options: u8,
    },
    Message {
        prefix: String,
        content: Bytes,
    },
}

/// Receives committed transactions.
pub trait TxnSink {
    type Error: From<LogError>;
    fn begin(&mut self, txn: &TxnInfo) -> Result<(), Self::Error>;
    fn change(&mut self, txn: &TxnInfo, lsn: Lsn, change: Change) -> Result<(), Self::Error>;
    fn commit(&mut self, txn: &TxnInfo) -> Result<(), Self::Error>;

    /// A transaction finished whose start is not in what was read (reading
    /// began after it started). The default refuses, naming it; a sink for
    /// which the transaction cannot matter may ignore it.
    fn incomplete(&mut self, txn: &TxnInfo) -> Result<(), Self::Error> {
        Err(LogError::Incomplete {
            xid: txn.xid,
            commit_lsn: txn.commit_lsn,
        }
        .into())
    }

    /// Whether the sink needs nothing more: reading stops.
    fn satisfied(&self) -> bool {
        false
    }

    /// Every transaction ending at or before `lsn` has been emitted (a
    /// Progress record read while no transaction was open). Most sinks need
    /// not care.
    fn passed(&mut self, _lsn: EndLsn) -> Result<(), Self::Error> {
        Ok(())
    }
}

type Relations = HashMap<u32, Arc<Relation>>;

/// Where a transaction's messages are: one span for a whole transaction, one per streamed block.
#[derive(Default)]
struct Spans {
    starts: Vec<Position>,
    aborted_subxids: HashSet<u32>,
    /// The first block read was not the transaction's first: earlier ones are missing.
    missing_start: bool,
}

/// The open non-streamed transaction: kept in memory while small, else re-read.
struct Open {
    xid: u32,
    start: Position,
    records: Option<Vec<Record>>,
    bytes: usize,
}

const MAX_BUFFERED_TXN_BYTES: usize = 8 << 20;

/// Where the assembler reads a span of the log again: a streamed
/// transaction's blocks, or a transaction too large to hold in memory.
pub trait Reread {
    /// The records from `start` on, in log order.
    fn from(&self, start: Position) -> Result<Records<'_>, LogError>;
    /// The file (or other place) a position is in, for error messages.
    fn place(&self, position: Position) -> PathBuf;
}

/// Records with their positions, in log order.
pub type Records<'a> = Box<dyn Iterator<Item = Result<(Position, Record), LogError>> + 'a>;

/// The segment log in a directory.
pub struct LogDir(pub PathBuf);

impl Reread for LogDir {
    fn from(&self, start: Position) -> Result<Records<'_>, LogError> {
        let mut reader = LogReader::open_at(&self.0, start)?;
        Ok(Box::new(std::iter::from_fn(move || {
            reader.next_record().transpose()
        })))
    }

    fn place(&self, position: Position) -> PathBuf {
        self.0.join(super::segment::file_name(position.seq))
    }
}

/// Turns the log's records, pushed in order, into committed transactions.
/// It reads nothing itself but what `Reread` gives it.
pub struct Assembler<R: Reread> {
    log: R,
    main_relations: Relations,
    open: Option<Open>,
    /// What is open in the stream, as capture and the segment openings see it.
    state: TxnState,
    streamed: HashMap<u32, Spans>,
    prepared: HashMap<String, (TxnSpans, u32)>,
}

enum TxnSpans {
    Whole(Open),
    Streamed(Spans),
}

impl Assembler<LogDir> {
    /// Reads the whole log in `dir` and feeds every committed transaction to `sink`.
    pub fn run<S: TxnSink>(dir: &Path, sink: &mut S) -> Result<(), S::Error> {
        let mut assembler = Assembler::new(LogDir(dir.to_path_buf()));
        let mut reader = LogReader::open(dir)?;
        while let Some((position, record)) = reader.next_record()? {
            assembler.push(position, record, sink)?;
            if sink.satisfied() {
                break;
            }
        }
        Ok(())
    }
}

impl<R: Reread> Assembler<R> {
    pub fn new(log: R) -> Assembler<R> {
        Assembler {
            log,
            main_relations: HashMap::new(),
            open: None,
            state: TxnState::default(),
            streamed: HashMap::new(),
            prepared: HashMap::new(),
        }
    }

    fn decode(
        &self,
        position: Position,
        record: &Record,
        in_stream: bool,
    ) -> Result<Message, LogError> {
        pgoutput::decode(&record.data, in_stream).map_err(|problem| LogError::Decode {
            path: self.log.place(position),
            offset: position.offset,
            problem,
        })
    }

    /// Takes the next record of the log, in order.
    pub fn push<S: TxnSink>(
        &mut self,
        position: Position,
        record: Record,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        match record.kind {
            RecordKind::Resume => {
                self.open = None;
                self.state = TxnState::default();
                self.streamed.clear();
                self.main_relations.clear();
                return Ok(());
            }
            RecordKind::Progress => {
                if self.state.between_transactions() {
                    sink.passed(EndLsn(record.lsn))?;
                }
                return Ok(());
            }
            RecordKind::Seal => return Ok(()),
            RecordKind::Schema => {
                if let Message::Relation(relation) = self.decode(position, &record, false)? {
                    self.main_relations.insert(relation.oid, Arc::new(relation));
                }
                return Ok(());
            }
            RecordKind::Wal => {}
        }
        let block = self.state.block();
        let message = self.decode(position, &record, block.is_some())?;
        // The message decoded, so the peek cannot fail.
        let _ = self.state.observe(&record.data);
        if let Some(xid) = block {
            if let Message::StreamStart(_) = message {
                // A block never nests; a second start means the first was cut off.
                self.streamed.remove(&xid);
            } else if !matches!(message, Message::StreamStop) {
                return Ok(());
            }
        }
        match message {
            Message::Begin(begin) => {
                self.open = Some(Open {
                    xid: begin.xid,
                    start: position,
                    records: Some(Vec::new()),
                    bytes: 0,
                });
            }
            Message::BeginPrepare(info) => {
                self.open = Some(Open {
                    xid: info.xid,
                    start: position,
                    records: Some(Vec::new()),
                    bytes: 0,
                });
            }
            Message::Commit(commit) => match self.open.take() {
                Some(open) => {
                    let txn = TxnInfo {
                        xid: open.xid,
                        commit_lsn: commit.commit_lsn,
                        end_lsn: commit.end_lsn,
                        commit_time: commit.commit_time,
                    };
                    self.emit(&txn, TxnSpans::Whole(open), sink)?;
                }
                // Its Begin came before what was read.
                None => sink.incomplete(&TxnInfo {
                    xid: 0,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                })?,
            },
            Message::Prepare(info) => {
                if let Some(open) = self.open.take() {
                    self.prepared
                        .insert(info.gid, (TxnSpans::Whole(open), info.xid));
                }
            }
            Message::StreamStart(StreamStart { xid, first_segment }) => {
                let spans = self.streamed.entry(xid).or_insert_with(|| Spans {
                    missing_start: !first_segment,
                    ..Spans::default()
                });
                spans.starts.push(position);
            }
            Message::StreamCommit(StreamCommit { xid, commit }) => {
                let txn = TxnInfo {
                    xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                };
                match self.streamed.remove(&xid) {
                    Some(spans) if !spans.missing_start => {
                        self.emit(&txn, TxnSpans::Streamed(spans), sink)?
                    }
                    _ => sink.incomplete(&txn)?,
                }
            }
            Message::StreamAbort(StreamAbort { xid, subxid }) => {
                if xid == subxid {
                    self.streamed.remove(&xid);
                } else if let Some(spans) = self.streamed.get_mut(&xid) {
                    spans.aborted_subxids.insert(subxid);
                }
            }
            Message::StreamPrepare(info) => {
                if let Some(spans) = self.streamed.remove(&info.xid) {
                    self.prepared
                        .insert(info.gid, (TxnSpans::Streamed(spans), info.xid));
                }
            }
            Message::CommitPrepared(CommitPrepared {
                commit_lsn,
                end_lsn,
                commit_time,
                gid,
                ..
            }) => {
                if let Some((spans, xid)) = self.prepared.remove(&gid) {
                    let txn = TxnInfo {
                        xid,
                        commit_lsn,
                        end_lsn,
                        commit_time,
                    };
                    self.emit(&txn, spans, sink)?;
                }
            }
            Message::RollbackPrepared(RollbackPrepared { gid, .. }) => {
                self.prepared.remove(&gid);
            }
            _ => {
                if let Some(open) = self.open.as_mut() {
                    open.bytes += record.data.len();
                    match open.records.as_mut() {
                        Some(records) if open.bytes <= MAX_BUFFERED_TXN_BYTES => {
                            records.push(record)
                        }
                        _ => open.records = None,
                    }
                }
            }
        }
        Ok(())
    }

    fn emit<S: TxnSink>(
        &mut self,
        txn: &TxnInfo,
        spans: TxnSpans,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        sink.begin(txn)?;
        match spans {
            TxnSpans::Whole(open) => match open.records {
                Some(records) => {
                    for record in records {
                        let message = self.decode(open.start, &record, false)?;
                        let mut relations = std::mem::take(&mut self.main_relations);
                        let result = apply(
                            txn,
                            record.lsn,
                            message,
                            &mut relations,
                            &HashSet::new(),
                            sink,
                        );
                        self.main_relations = relations;
                        result?;
                    }
                }
                None => {
                    let mut relations = std::mem::take(&mut self.main_relations);
                    let result = self.replay(
                        txn,
                        open.start,
                        false,
                        &mut relations,
                        &HashSet::new(),
                        sink,
                    );
                    self.main_relations = relations;
                    result?;
                }
            },
            TxnSpans::Streamed(spans) => {
                let mut relations = Relations::new();
                for start in &spans.starts {
                    self.replay(
                        txn,
                        *start,
                        true,
                        &mut relations,
                        &spans.aborted_subxids,
                        sink,
                    )?;
                }
                self.main_relations.extend(relations);
            }
        }
        sink.commit(txn)
    }

    /// Re-reads the messages from `start` (a Begin or Stream Start) to the end of its span.
    fn replay<S: TxnSink>(
        &self,
        txn: &TxnInfo,
        start: Position,
        in_stream: bool,
        relations: &mut Relations,
        aborted: &HashSet<u32>,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        // Skips the Begin or Stream Start itself.
        for read in self.log.from(start)?.skip(1) {
            let (position, record) = read?;
            if record.kind != RecordKind::Wal {
                continue;
            }
            let message = self.decode(position, &record, in_stream)?;
            if matches!(
                message,
                Message::Commit(_) | Message::Prepare(_) | Message::StreamStop
            ) {
                break;
            }
            apply(txn, record.lsn, message, relations, aborted, sink)?;
        }
        Ok(())
    }
}

fn apply<S: TxnSink>(
    txn: &TxnInfo,
    lsn: Lsn,
    message: Message,
    relations: &mut Relations,
    aborted: &HashSet<u32>,
    sink: &mut S,
) -> Result<(), S::Error> {
    let lookup = |oid: u32| {
        relations
            .get(&oid)
            .cloned()
            .ok_or(LogError::UnknownRelation { xid: txn.xid, oid })
    };
    let skip = |xid: Option<u32>| xid.is_some_and(|x| aborted.contains(&x));
    let change = match message {
        Message::Relation(relation) => {
            relations.insert(relation.oid, Arc::new(relation));
            None
        }
        Message::Insert(Insert {
            xid,
            relation_oid,
            new,
        }) if !skip(xid) => Some(Change::Insert {
            relation: lookup(relation_oid)?,
            new,
        }),
        Message::Update(Update {
            xid,
            relation_oid,
            old,
            new,
        }) if !skip(xid) => Some(Change::Update {
            relation: lookup(relation_oid)?,
            old,
            new,
        }),
        Message::Delete(Delete {
            xid,
            relation_oid,
            old,
        }) if !skip(xid) => Some(Change::Delete {
            relation: lookup(relation_oid)?,
            old,
        }),
        Message::Truncate(Truncate {
            xid,
            options,
            relation_oids,
        }) if !skip(xid) => Some(Change::Truncate {
            relations: relation_oids
                .iter()
                .map(|oid| lookup(*oid))
                .collect::<Result<_, _>>()?,
            options,
        }),
        Message::LogicalMessage(LogicalMessage {
            xid,
            transactional: true,
            prefix,
            content,
            ..
        }) if !skip(xid) => Some(Change::Message { prefix, content }),
        _ => None,
    };
    match change {
        Some(change) => sink.change(txn, lsn, change),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "committed_tests.rs"]
mod tests;
