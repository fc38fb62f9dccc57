//! `tidemark history`: every change of a table, or of one row, between two
//! times, from the archive alone: the audit question "who changed payment 42,
//! and when".

use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::archive::manifest;
use crate::archive::store::ObjectStore;
use crate::archive::ArchiveError;
use crate::base::exit::ExitCode;
use crate::base::position::{Lsn, PgTimestamp};
use crate::base::table::TableName;
use crate::inspect::{change_lines, ChangeLine};
use crate::log::committed::{Assembler, Change, TxnInfo, TxnSink};
use crate::replay::load;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("--key {0:?} is not a JSON object of key columns; write it like '{{\"id\": 42}}'")]
    BadKey(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl HistoryError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            HistoryError::BadKey(_) => ExitCode::BadInput,
            HistoryError::Archive(e) => e.exit_code(),
            HistoryError::Log(e) => e.exit_code(),
            HistoryError::Output(_) => ExitCode::Failure,
        }
    }
}

pub struct Query {
    pub table: TableName,
    /// Key columns and values; values compare as PostgreSQL's text forms.
    pub key: Option<Map<String, Value>>,
    pub from: Option<PgTimestamp>,
    pub to: Option<PgTimestamp>,
}

/// Parses `--key`, turning numbers and booleans into the text forms changes carry.
pub fn parse_key(text: &str) -> Result<Map<String, Value>, HistoryError> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| HistoryError::BadKey(text.to_string()))?;
    let Value::Object(map) = value else {
        return Err(HistoryError::BadKey(text.to_string()));
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => Value::String(s),
                Value::Null => Value::Null,
                other => Value::String(other.to_string()),
            };
            (k, v)
        })
        .collect())
}

struct Filter<'a, W: Write> {
    query: &'a Query,
    json: bool,
    out: W,
    found: u64,
}

fn matches_key(line: &ChangeLine, key: &Map<String, Value>) -> bool {
    let side = |row: &Option<Map<String, Value>>| {
        row.as_ref()
            .is_some_and(|r| key.iter().all(|(k, v)| r.get(k) == Some(v)))
    };
    side(&line.key) || side(&line.new) || side(&line.old)
}

impl<W: Write> TxnSink for Filter<'_, W> {
    type Error = HistoryError;

    fn begin(&mut self, _: &TxnInfo) -> Result<(), HistoryError> {
        Ok(())
    }

    fn change(&mut self, txn: &TxnInfo, lsn: Lsn, change: Change) -> Result<(), HistoryError> {
        if self.query.from.is_some_and(|f| txn.commit_time < f)
            || self.query.to.is_some_and(|t| txn.commit_time > t)
        {
            return Ok(());
        }
        for line in change_lines(txn, lsn, &change) {
            if line.table != self.query.table {
                continue;
            }
            if let Some(key) = &self.query.key {
                if !matches_key(&line, key) {
                    continue;
                }
            }
            self.found += 1;
            crate::inspect::write_line(&mut self.out, &line, self.json)?;
        }
        Ok(())
    }

    fn commit(&mut self, _: &TxnInfo) -> Result<(), HistoryError> {
        Ok(())
    }

    fn incomplete(&mut self, txn: &TxnInfo) -> Result<(), HistoryError> {
        let in_range = self.query.from.is_none_or(|f| txn.commit_time >= f)
            && self.query.to.is_none_or(|t| txn.commit_time <= t);
        if in_range {
            return Err(crate::log::LogError::Incomplete {
                xid: txn.xid,
                commit_lsn: txn.commit_lsn,
            }
            .into());
        }
        Ok(())
    }
}

/// Prints the matching changes; returns how many there were.
pub async fn run(
    store: &dyn ObjectStore,
    query: &Query,
    json: bool,
    work_dir: &Path,
    out: impl Write,
) -> Result<u64, HistoryError> {
    let Some((_, manifest)) = manifest::load_latest(store).await? else {
        return Ok(0);
    };
    // Read from the first segment: a transaction, and the Relation messages
    // describing its tables, can begin segments before its commit.
    let last = manifest.segments.iter().rposition(|s| {
        query
            .to
            .is_none_or(|t| s.first_commit_time.is_none_or(|first| first <= t))
    });
    let segments = match last {
        Some(last) => &manifest.segments[..=last],
        None => &[][..],
    };
    let dir = tempfile::tempdir_in(work_dir).map_err(|source| crate::log::LogError::Dir {
        path: work_dir.to_path_buf(),
        source,
    })?;
    load::fetch_segments(
        store,
        segments,
        dir.path(),
        &indicatif::ProgressBar::hidden(),
    )
    .await?;
    let mut filter = Filter {
        query,
        json,
        out,
        found: 0,
    };
    let path = dir.path().to_path_buf();
    // The reader is synchronous and the data is local now.
    tokio::task::block_in_place(|| Assembler::run(&path, &mut filter))?;
    filter.out.flush()?;
    Ok(filter.found)
}
