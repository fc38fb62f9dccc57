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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::reader::{LogReader, Position};
use super::record::{Record, RecordKind};
use super::LogError;
use crate::base::position::{CommitLsn, EndLsn, Lsn, PgTimestamp};
use crate::source::pgoutput::{self, Message, OldTuple, Relation, Tuple};

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

pub struct Assembler {
    dir: PathBuf,
    main_relations: Relations,
    open: Option<Open>,
    /// Streamed block being read: its top-level xid.
    in_block: Option<u32>,
    streamed: HashMap<u32, Spans>,
    prepared: HashMap<String, (TxnSpans, u32)>,
}

enum TxnSpans {
    Whole(Open),
    Streamed(Spans),
}

impl Assembler {
    pub fn new(dir: &Path) -> Assembler {
        Assembler {
            dir: dir.to_path_buf(),
            main_relations: HashMap::new(),
            open: None,
            in_block: None,
            streamed: HashMap::new(),
            prepared: HashMap::new(),
        }
    }

    /// Reads the whole log and feeds every committed transaction to `sink`.
    pub fn run<S: TxnSink>(dir: &Path, sink: &mut S) -> Result<(), S::Error> {
        let mut assembler = Assembler::new(dir);
        let mut reader = LogReader::open(dir)?;
        while let Some((position, record)) = reader.next_record()? {
            assembler.push(position, record, sink)?;
        }
        Ok(())
    }

    fn decode(
        &self,
        position: Position,
        record: &Record,
        in_stream: bool,
    ) -> Result<Message, LogError> {
        pgoutput::decode(&record.data, in_stream).map_err(|problem| LogError::Decode {
            path: self.dir.join(super::segment::file_name(position.seq)),
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
                self.in_block = None;
                self.streamed.clear();
                self.main_relations.clear();
                return Ok(());
            }
            RecordKind::Progress => {
                if self.open.is_none() && self.in_block.is_none() {
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
        let message = self.decode(position, &record, self.in_block.is_some())?;
        if let Some(xid) = self.in_block {
            if matches!(message, Message::StreamStop) {
                self.in_block = None;
            } else if let Message::StreamStart { .. } = message {
                // A block never nests; a second start means the first was cut off.
                self.in_block = None;
                self.streamed.remove(&xid);
            } else {
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
            Message::StreamStart { xid, first_segment } => {
                self.in_block = Some(xid);
                let spans = self.streamed.entry(xid).or_insert_with(|| Spans {
                    missing_start: !first_segment,
                    ..Spans::default()
                });
                spans.starts.push(position);
            }
            Message::StreamCommit { xid, commit } => {
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
            Message::StreamAbort { xid, subxid } => {
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
            Message::CommitPrepared {
                commit_lsn,
                end_lsn,
                commit_time,
                gid,
                ..
            } => {
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
            Message::RollbackPrepared { gid, .. } => {
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
                        let message = pgoutput::decode(&record.data, false).map_err(|problem| {
                            LogError::Decode {
                                path: self.dir.join(super::segment::file_name(open.start.seq)),
                                offset: open.start.offset,
                                problem,
                            }
                        })?;
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
        let mut reader = LogReader::open_at(&self.dir, start)?;
        reader.next_record()?; // the Begin or Stream Start itself
        while let Some((position, record)) = reader.next_record()? {
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
        Message::Insert {
            xid,
            relation_oid,
            new,
        } if !skip(xid) => Some(Change::Insert {
            relation: lookup(relation_oid)?,
            new,
        }),
        Message::Update {
            xid,
            relation_oid,
            old,
            new,
        } if !skip(xid) => Some(Change::Update {
            relation: lookup(relation_oid)?,
            old,
            new,
        }),
        Message::Delete {
            xid,
            relation_oid,
            old,
        } if !skip(xid) => Some(Change::Delete {
            relation: lookup(relation_oid)?,
            old,
        }),
        Message::Truncate {
            xid,
            options,
            relation_oids,
        } if !skip(xid) => Some(Change::Truncate {
            relations: relation_oids
                .iter()
                .map(|oid| lookup(*oid))
                .collect::<Result<_, _>>()?,
            options,
        }),
        Message::LogicalMessage {
            xid,
            transactional: true,
            prefix,
            content,
            ..
        } if !skip(xid) => Some(Change::Message { prefix, content }),
        _ => None,
    };
    match change {
        Some(change) => sink.change(txn, lsn, change),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::position::{EndLsn, Lsn};
    use crate::log::writer::LogWriter;
    use crate::source::pgoutput::build::*;

    #[derive(Default)]
    struct Collect(Vec<(u32, String)>);

    impl TxnSink for Collect {
        type Error = LogError;
        fn begin(&mut self, _: &TxnInfo) -> Result<(), LogError> {
            Ok(())
        }
        fn change(&mut self, txn: &TxnInfo, _: Lsn, change: Change) -> Result<(), LogError> {
            if let Change::Insert { new, .. } = change {
                let pgoutput::TupleValue::Text(id) = &new.0[0] else {
                    panic!()
                };
                self.0
                    .push((txn.xid, String::from_utf8_lossy(id).into_owned()));
            }
            Ok(())
        }
        fn commit(&mut self, _: &TxnInfo) -> Result<(), LogError> {
            Ok(())
        }
        fn passed(&mut self, lsn: EndLsn) -> Result<(), LogError> {
            self.0.push((0, format!("passed {lsn}")));
            Ok(())
        }
    }

    fn assemble(records: Vec<Record>) -> Vec<(u32, String)> {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        for r in &records {
            writer.append(r).unwrap();
        }
        writer.sync().unwrap();
        let mut sink = Collect::default();
        Assembler::run(dir.path(), &mut sink).unwrap();
        sink.0
    }

    fn wal(payload: Bytes) -> Record {
        Record::wal(Lsn(1), payload)
    }

    fn resume() -> Record {
        Record::marker(RecordKind::Resume, EndLsn(Lsn(1)))
    }

    #[test]
    fn fragments_before_a_resume_are_dropped_and_the_resend_counts_once() {
        let records = vec![
            // Streamed transaction 7: one whole block before the crash.
            wal(stream_start(7)),
            wal(relation(Some(7))),
            wal(insert(Some(7), "s1")),
            wal(stream_stop()),
            // Non-streamed transaction 8, cut off before its commit.
            wal(begin(8)),
            wal(relation(None)),
            wal(insert(None, "t1")),
            resume(),
            // The server resends both whole.
            wal(stream_start(7)),
            wal(relation(Some(7))),
            wal(insert(Some(7), "s1")),
            wal(insert(Some(7), "s2")),
            wal(stream_stop()),
            wal(begin(8)),
            wal(relation(None)),
            wal(insert(None, "t1")),
            wal(commit(50)),
            wal(stream_commit(7, 60)),
        ];
        assert_eq!(
            assemble(records),
            vec![
                (8, "t1".to_string()),
                (7, "s1".to_string()),
                (7, "s2".to_string())
            ]
        );
    }

    #[test]
    fn progress_is_passed_on_only_while_no_transaction_is_open() {
        let progress = |lsn| Record::marker(RecordKind::Progress, EndLsn(Lsn(lsn)));
        let records = vec![
            progress(0x10),
            wal(begin(8)),
            progress(0x20),
            wal(relation(None)),
            wal(insert(None, "t1")),
            wal(commit(50)),
            wal(stream_start(7)),
            progress(0x30),
            wal(stream_stop()),
            progress(0x40),
        ];
        assert_eq!(
            assemble(records),
            vec![
                (0, "passed 0/10".to_string()),
                (8, "t1".to_string()),
                (0, "passed 0/40".to_string()),
            ]
        );
    }

    #[test]
    fn aborted_streams_and_subtransactions_never_appear() {
        let records = vec![
            wal(stream_start(7)),
            wal(relation(Some(7))),
            wal(insert(Some(7), "kept")),
            wal(insert(Some(9), "sub-aborted")),
            wal(stream_stop()),
            wal(stream_start(8)),
            wal(relation(Some(8))),
            wal(insert(Some(8), "aborted")),
            wal(stream_stop()),
            wal(stream_abort(7, 9)),
            wal(stream_abort(8, 8)),
            wal(stream_commit(7, 60)),
        ];
        assert_eq!(assemble(records), vec![(7, "kept".to_string())]);
    }

    #[test]
    fn transactions_whose_start_was_not_read_are_refused_not_applied_in_part() {
        // A streamed transaction seen from its second block on.
        let later_block =
            crate::source::pgoutput::encode(&crate::source::pgoutput::Message::StreamStart {
                xid: 7,
                first_segment: false,
            });
        let records = vec![
            wal(later_block),
            wal(relation(Some(7))),
            wal(insert(Some(7), "s2")),
            wal(stream_stop()),
            wal(stream_commit(7, 60)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        for r in &records {
            writer.append(r).unwrap();
        }
        writer.sync().unwrap();
        let error = Assembler::run(dir.path(), &mut Collect::default()).unwrap_err();
        assert!(
            matches!(error, LogError::Incomplete { xid: 7, .. }),
            "{error}"
        );

        // A non-streamed transaction seen from after its Begin.
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        for payload in [insert(None, "x"), commit(10)] {
            writer.append(&wal(payload)).unwrap();
        }
        writer.sync().unwrap();
        let error = Assembler::run(dir.path(), &mut Collect::default()).unwrap_err();
        assert!(
            matches!(
                error,
                LogError::Incomplete {
                    commit_lsn: CommitLsn(Lsn(9)),
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_change_without_its_relation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        for payload in [begin(1), insert(None, "x"), commit(10)] {
            writer.append(&wal(payload)).unwrap();
        }
        writer.sync().unwrap();
        let error = Assembler::run(dir.path(), &mut Collect::default()).unwrap_err();
        assert!(
            matches!(error, LogError::UnknownRelation { xid: 1, oid: 100 }),
            "{error}"
        );
    }
}
