//! `tidemark snapshot --table T`: asks the running capture to read tables
//! from the source again, as Debezium's ad-hoc snapshot signal does. Use it
//! after a change tidemark cannot see (a bulk load with logical decoding off,
//! a change made while the event triggers were missing).
//!
//! The request travels in the source's own WAL (a logical message), so
//! capture meets it in order and takes the re-read once it has committed
//! (`archive::reread`); the command waits for the manifest to list it.

use std::path::Path;
use std::time::{Duration, Instant};

use super::OpError;
use crate::archive::manifest::{self, SnapshotEntry};
use crate::archive::ArchiveError;
use crate::base::position::Lsn;
use crate::base::table::TableName;
use crate::source::ddl::{Tables, REREAD_PREFIX};
use crate::source::SourceError;

/// How often the command looks for the re-read in the archive.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Asks for a re-read of `tables` and waits up to `wait` for the archive to list it.
pub async fn run(
    config: &Path,
    tables: &[TableName],
    wait: Duration,
) -> Result<SnapshotEntry, OpError> {
    let checked = super::load(config)?;
    if let Some(table) = tables.iter().find(|t| !checked.tables.contains(t)) {
        return Err(OpError::Usage(format!(
            "table {table} is not watched; add it to [source] tables and restart capture (a newly watched table is read in full at start)"
        )));
    }
    let store = super::open_archive(&checked.config).await?;
    let pg = &checked.pg;
    let source_error = |e: tokio_postgres::Error| {
        ArchiveError::from(SourceError::from_sql(e, &pg.describe(), pg.user()))
    };
    let client = pg
        .connect()
        .await
        .map_err(|e| ArchiveError::from(SourceError::from_connect(e, pg)))?;
    let slot = &checked.config.source.slot;
    let active: Option<bool> = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(source_error)?
        .map(|row| row.get(0));
    if active != Some(true) {
        return Err(OpError::Usage(format!(
            "capture is not running (slot {slot} is not in use); start `tidemark capture` with this config: it takes the re-read"
        )));
    }
    let request = serde_json::to_string(&Tables {
        tables: tables.to_vec(),
    })
    .expect("requests serialize");
    let asked: String = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, $2)::text",
            &[&REREAD_PREFIX, &request],
        )
        .await
        .map_err(source_error)?
        .get(0);
    let asked: Lsn = asked
        .parse()
        .map_err(|_| OpError::Found(format!("the server returned LSN {asked:?}")))?;
    let started = Instant::now();
    loop {
        if let Some((_, latest)) = manifest::load_latest(&*store).await? {
            let taken = latest.rereads.iter().find(|r| {
                r.lsn.0 > asked
                    && tables
                        .iter()
                        .all(|t| r.tables.iter().any(|o| &o.table == t))
            });
            if let Some(taken) = taken {
                return Ok(taken.clone());
            }
        }
        if started.elapsed() >= wait {
            return Err(OpError::Found(format!(
                "capture has not stored the re-read within {}; its log says why (is the archive reachable?)",
                humantime::format_duration(wait)
            )));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
