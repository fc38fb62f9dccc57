//! Tests of `committed`.

use super::*;
use crate::base::position::{EndLsn, Lsn};
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

/// Records held in memory, one position each in a made-up segment.
struct Held(Vec<(Position, Record)>);

impl Reread for Held {
    fn from(&self, start: Position) -> Result<Records<'_>, LogError> {
        Ok(Box::new(
            self.0
                .iter()
                .filter(move |(at, _)| *at >= start)
                .cloned()
                .map(Ok),
        ))
    }

    fn place(&self, _: Position) -> PathBuf {
        PathBuf::from("memory")
    }
}

/// Pushes `records` through an assembler, as a reader of the log would.
fn try_assemble(records: Vec<Record>) -> Result<Vec<(u32, String)>, LogError> {
    let held: Vec<(Position, Record)> = records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            (
                Position {
                    seq: 1,
                    offset: i as u64,
                },
                record,
            )
        })
        .collect();
    let mut assembler = Assembler::new(Held(held.clone()));
    let mut sink = Collect::default();
    for (position, record) in held {
        assembler.push(position, record, &mut sink)?;
    }
    Ok(sink.0)
}

fn assemble(records: Vec<Record>) -> Vec<(u32, String)> {
    try_assemble(records).unwrap()
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
    let later_block = crate::source::pgoutput::encode(
        &crate::source::pgoutput::Message::StreamStart(crate::source::pgoutput::StreamStart {
            xid: 7,
            first_segment: false,
        }),
    );
    let records = vec![
        wal(later_block),
        wal(relation(Some(7))),
        wal(insert(Some(7), "s2")),
        wal(stream_stop()),
        wal(stream_commit(7, 60)),
    ];
    let error = try_assemble(records).unwrap_err();
    assert!(
        matches!(error, LogError::Incomplete { xid: 7, .. }),
        "{error}"
    );

    // A non-streamed transaction seen from after its Begin.
    let error = try_assemble(vec![wal(insert(None, "x")), wal(commit(10))]).unwrap_err();
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
    let records = vec![wal(begin(1)), wal(insert(None, "x")), wal(commit(10))];
    let error = try_assemble(records).unwrap_err();
    assert!(
        matches!(error, LogError::UnknownRelation { xid: 1, oid: 100 }),
        "{error}"
    );
}
