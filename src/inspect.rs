//! `tidemark log`: committed changes from the local log, one line each, for people and scripts.

use std::io::Write;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::base::exit::ExitCode;
use crate::base::position::{CommitLsn, Lsn};
use crate::base::table::TableName;
use crate::log::committed::{Assembler, Change, TxnInfo, TxnSink};
use crate::log::LogError;
use crate::source::pgoutput::{OldTuple, Relation, Tuple, TupleValue};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl InspectError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            InspectError::Log(e) => e.exit_code(),
            InspectError::Output(_) => ExitCode::Failure,
        }
    }
}

pub struct Filter {
    pub from: Option<CommitLsn>,
    pub table: Option<TableName>,
}

/// One change as `tidemark log --json` prints it (documented in the README).
#[derive(Serialize)]
pub struct ChangeLine {
    pub commit_time: String,
    pub commit_lsn: String,
    pub lsn: String,
    pub xid: u32,
    pub table: TableName,
    pub op: &'static str,
    pub key: Option<Map<String, Value>>,
    pub new: Option<Map<String, Value>>,
    pub old: Option<Map<String, Value>>,
    /// Columns whose TOASTed value the change left as it was (not resent by the server).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unchanged_toast: Vec<String>,
}

struct Printer<W: Write> {
    out: W,
    json: bool,
    filter: Filter,
}

pub fn print(
    dir: &std::path::Path,
    filter: Filter,
    json: bool,
    out: impl Write,
) -> Result<(), InspectError> {
    let mut printer = Printer { out, json, filter };
    Assembler::run(dir, &mut printer)?;
    printer.out.flush()?;
    Ok(())
}

impl<W: Write> TxnSink for Printer<W> {
    type Error = InspectError;

    fn begin(&mut self, _txn: &TxnInfo) -> Result<(), InspectError> {
        Ok(())
    }

    fn change(&mut self, txn: &TxnInfo, lsn: Lsn, change: Change) -> Result<(), InspectError> {
        if self.filter.from.is_some_and(|from| txn.commit_lsn < from) {
            return Ok(());
        }
        for line in change_lines(txn, lsn, &change) {
            if let Some(table) = &self.filter.table {
                if line.table != *table {
                    continue;
                }
            }
            write_line(&mut self.out, &line, self.json)?;
        }
        Ok(())
    }

    fn commit(&mut self, _txn: &TxnInfo) -> Result<(), InspectError> {
        Ok(())
    }

    fn incomplete(&mut self, txn: &TxnInfo) -> Result<(), InspectError> {
        tracing::warn!(
            xid = txn.xid,
            commit_lsn = %txn.commit_lsn,
            "a transaction that began before the oldest local segment is not shown; its start was archived and removed locally"
        );
        Ok(())
    }
}

/// One change line, as JSON or as text for people.
pub fn write_line(out: &mut impl Write, line: &ChangeLine, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from)?;
        writeln!(out)
    } else {
        writeln!(
            out,
            "{} {} xid={} {} {} key={} new={} old={}",
            line.commit_time,
            line.commit_lsn,
            line.xid,
            line.op,
            line.table,
            json_or_dash(&line.key),
            json_or_dash(&line.new),
            json_or_dash(&line.old),
        )
    }
}

fn json_or_dash(map: &Option<Map<String, Value>>) -> String {
    map.as_ref()
        .map_or_else(|| "-".to_string(), |m| Value::Object(m.clone()).to_string())
}

/// The lines for one change: one per table (a truncate may name several).
pub fn change_lines(txn: &TxnInfo, lsn: Lsn, change: &Change) -> Vec<ChangeLine> {
    let line = |relation: &Relation, op, key, new, old, unchanged_toast| ChangeLine {
        commit_time: txn.commit_time.to_rfc3339(),
        commit_lsn: txn.commit_lsn.to_string(),
        lsn: lsn.to_string(),
        xid: txn.xid,
        table: relation.table(),
        op,
        key,
        new,
        old,
        unchanged_toast,
    };
    match change {
        Change::Insert { relation, new } => vec![line(
            relation,
            "insert",
            Some(key_of(relation, new)),
            Some(row(relation, new, false)),
            None,
            Vec::new(),
        )],
        Change::Update { relation, old, new } => {
            let key = match old {
                Some(old) => key_of(relation, old.tuple()),
                None => key_of(relation, new),
            };
            vec![line(
                relation,
                "update",
                Some(key),
                Some(row(relation, new, false)),
                old.as_ref().map(|o| old_row(relation, o)),
                unchanged(relation, new),
            )]
        }
        Change::Delete { relation, old } => vec![line(
            relation,
            "delete",
            Some(key_of(relation, old.tuple())),
            None,
            Some(old_row(relation, old)),
            Vec::new(),
        )],
        Change::Truncate { relations, .. } => relations
            .iter()
            .map(|r| line(r, "truncate", None, None, None, Vec::new()))
            .collect(),
        Change::Message { .. } => Vec::new(),
    }
}

fn value(v: &TupleValue) -> Option<Value> {
    match v {
        TupleValue::Null => Some(Value::Null),
        TupleValue::UnchangedToast => None,
        TupleValue::Text(bytes) => Some(Value::String(String::from_utf8_lossy(bytes).into_owned())),
        TupleValue::Binary(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Some(Value::String(format!("\\x{hex}")))
        }
    }
}

/// The row's columns by name; with `keys_only`, just the replica identity columns.
fn row(relation: &Relation, tuple: &Tuple, keys_only: bool) -> Map<String, Value> {
    relation
        .columns
        .iter()
        .zip(&tuple.0)
        .filter(|(c, _)| !keys_only || c.is_key())
        .filter_map(|(c, v)| value(v).map(|v| (c.name.clone(), v)))
        .collect()
}

fn key_of(relation: &Relation, tuple: &Tuple) -> Map<String, Value> {
    row(relation, tuple, true)
}

fn old_row(relation: &Relation, old: &OldTuple) -> Map<String, Value> {
    match old {
        OldTuple::Key(t) => row(relation, t, true),
        OldTuple::Full(t) => row(relation, t, false),
    }
}

fn unchanged(relation: &Relation, tuple: &Tuple) -> Vec<String> {
    relation
        .columns
        .iter()
        .zip(&tuple.0)
        .filter(|(_, v)| matches!(v, TupleValue::UnchangedToast))
        .map(|(c, _)| c.name.clone())
        .collect()
}
