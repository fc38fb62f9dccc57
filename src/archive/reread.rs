//! Re-reads: some watched tables read from the source again, on request.
//!
//! Capture asks for one when the stream cannot carry a table's values: a
//! rewrite (`ALTER TYPE … USING`, a volatile default), a column change seen
//! without a schema note, a table newly watched, or `tidemark snapshot
//! --table`.
//!
//! Why a re-read makes later restores exact: capture asks only once the
//! stream is between transactions past the change, so the change has
//! committed; the temporary slot created for the re-read then has its
//! consistent point C after it, and the re-read holds the changed values.
//! Capture's own slot confirmed no further than C, so the archive holds every
//! transaction after C (`snapshot`). Restore loads each table from its newest
//! re-read at or before the target and replays, for that table, only what
//! commits after that re-read's C.
//!
//! A request survives a crash: capture writes it to `rereads.pending` in the
//! log dir (fsynced) when the asking message arrives, before the log holds
//! that message and so before the slot can confirm it; a re-read stored
//! takes its tables off the file, and the next start asks for what is left.
//! The compactor, meeting a change no re-read covers, asks too.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::manifest::Manifest;
use super::snapshot::Kind;
use super::uploader::{self, Uploader};
use crate::base::retry::Retry;
use crate::base::table::TableName;
use crate::source::ddl::{Tables, UNWATCHED_PREFIX};

/// Where requests for re-reads go.
pub type Requests = mpsc::UnboundedSender<TableName>;

/// Requests not yet served, kept in the log dir across crashes.
#[derive(Clone, Debug)]
pub struct Pending {
    path: std::path::PathBuf,
}

/// Guards the file between capture's loop (adding) and the re-read task (taking off).
static PENDING_FILE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Pending {
    pub fn in_dir(log_dir: &std::path::Path) -> Pending {
        Pending {
            path: log_dir.join("rereads.pending"),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The tables asked for and not yet re-read; a missing or unreadable file holds none.
    pub fn load(&self) -> BTreeSet<TableName> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Adds `tables`, durably.
    pub fn add(&self, tables: &BTreeSet<TableName>) -> std::io::Result<()> {
        self.change(|pending| pending.extend(tables.iter().cloned()))
    }

    /// Takes `tables` off, once their re-read is stored.
    pub fn remove(&self, tables: &[TableName]) -> std::io::Result<()> {
        self.change(|pending| pending.retain(|t| !tables.contains(t)))
    }

    fn change(&self, edit: impl FnOnce(&mut BTreeSet<TableName>)) -> std::io::Result<()> {
        let _guard = PENDING_FILE.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self.load();
        let before = pending.clone();
        edit(&mut pending);
        if pending == before {
            return Ok(());
        }
        let body = serde_json::to_vec(&pending).expect("table sets serialize");
        crate::base::files::replace_durably(&self.path, &body)
    }
}

pub fn channel() -> (Requests, mpsc::UnboundedReceiver<TableName>) {
    mpsc::unbounded_channel()
}

/// The tables the archive's current state holds: the newest base
/// snapshot's, and those re-read after it.
fn held(manifest: &Manifest) -> BTreeSet<&TableName> {
    let Some(base) = manifest.snapshots.iter().max_by_key(|s| s.lsn) else {
        return BTreeSet::new();
    };
    std::iter::once(base)
        .chain(manifest.rereads.iter().filter(|r| r.lsn > base.lsn))
        .flat_map(|s| s.tables.iter().map(|t| &t.table))
        .collect()
}

/// Watched tables the archive's current state does not hold. They were
/// added to `[source] tables` since; a re-read is their first snapshot.
pub fn unheld(manifest: &Manifest, watched: &[TableName]) -> Vec<TableName> {
    if manifest.snapshots.is_empty() {
        return Vec::new();
    }
    let held = held(manifest);
    watched
        .iter()
        .filter(|t| !held.contains(t))
        .cloned()
        .collect()
}

/// Tables the archive's current state holds that are no longer watched.
pub fn unwatched(manifest: &Manifest, watched: &[TableName]) -> Vec<TableName> {
    held(manifest)
        .into_iter()
        .filter(|t| !watched.contains(t))
        .cloned()
        .collect()
}

/// Writes into the stream that `tables` are no longer watched: a restore to
/// a later point leaves them out, as the archive no longer follows them.
async fn say_unwatched(pg: &crate::pg::ConnInfo, tables: Vec<TableName>) {
    let message = serde_json::to_string(&Tables { tables }).expect("table lists serialize");
    let said = async {
        let client = pg.connect().await.map_err(|e| e.to_string())?;
        client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&UNWATCHED_PREFIX, &message],
            )
            .await
            .map_err(|e| e.to_string())
    };
    match said.await {
        Ok(_) => {
            tracing::info!(tables = %message, "tables left [source] tables: restores to later points leave them out")
        }
        Err(error) => {
            tracing::warn!(%error, "could not write that tables left [source] tables; the next start tries again")
        }
    }
}

/// Takes a re-read for every request until `stop`; requests that arrive
/// while one is taken are served together by the next.
pub async fn serve(
    uploader: Arc<Uploader>,
    pg: crate::pg::ConnInfo,
    publication: &str,
    watched: Vec<TableName>,
    mut requests: mpsc::UnboundedReceiver<TableName>,
    mut stop: watch::Receiver<bool>,
) {
    let mut retry = Retry::new(Duration::from_secs(1), Duration::from_secs(60));
    let pending = Pending::in_dir(uploader.log_dir());
    let (mut newly_watched, left) = match uploader.manifest().await {
        Ok(manifest) => (unheld(&manifest, &watched), unwatched(&manifest, &watched)),
        Err(_) => (Vec::new(), Vec::new()),
    };
    newly_watched.extend(pending.load());
    if !left.is_empty() {
        say_unwatched(&pg, left).await;
    }
    loop {
        let first = match newly_watched.pop() {
            Some(table) => Some(table),
            None => tokio::select! {
                request = requests.recv() => request,
                _ = stop.wait_for(|stop| *stop) => return,
            },
        };
        let Some(first) = first else { return };
        let mut tables = BTreeSet::from([first]);
        tables.extend(newly_watched.drain(..));
        while let Ok(more) = requests.try_recv() {
            tables.insert(more);
        }
        // A watched table renamed at the source is watched under its new name.
        let published = published(&pg, publication).await;
        let watched = published.as_deref().unwrap_or(&watched);
        let (tables, unwatched): (Vec<TableName>, Vec<TableName>) =
            tables.into_iter().partition(|t| watched.contains(t));
        for table in &unwatched {
            tracing::warn!(%table, "a re-read was asked of a table capture does not watch; add it to [source] tables");
        }
        forget(&pending, &unwatched);
        if tables.is_empty() {
            continue;
        }
        loop {
            match uploader::take_snapshot(&uploader, &pg, &tables, Kind::Reread).await {
                Ok(entry) => {
                    forget(&pending, &tables);
                    metrics::counter!(crate::telemetry::REREADS).increment(1);
                    tracing::info!(lsn = %entry.lsn, tables = ?tables.iter().map(ToString::to_string).collect::<Vec<_>>(), "re-read stored: restores from here on are exact for these tables");
                    retry.reset();
                    break;
                }
                Err(error) => {
                    metrics::counter!(crate::telemetry::ERRORS, "kind" => "snapshot").increment(1);
                    let backoff = retry.next_delay();
                    tracing::warn!(%error, retry_in_s = backoff.as_secs(), "a re-read failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                }
            }
        }
    }
}

/// The tables in the publication now, by their current names; `None` if the source cannot say.
async fn published(pg: &crate::pg::ConnInfo, publication: &str) -> Option<Vec<TableName>> {
    let client = pg.connect().await.ok()?;
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .ok()?;
    Some(
        rows.iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect(),
    )
}

fn forget(pending: &Pending, tables: &[TableName]) {
    if let Err(error) = pending.remove(tables) {
        tracing::warn!(%error, "could not update rereads.pending; the next start re-reads those tables again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest::test_entries::{manifest, snapshot};
    use crate::archive::manifest::TableObject;

    fn holding(
        mut entry: crate::archive::manifest::SnapshotEntry,
        tables: &[&str],
    ) -> crate::archive::manifest::SnapshotEntry {
        entry.tables = tables
            .iter()
            .map(|t| TableObject {
                table: TableName::new("public", *t),
                key: String::new(),
                columns: vec![],
                size: 0,
                sha256: String::new(),
                raw_size: 0,
            })
            .collect();
        entry
    }

    #[test]
    fn pending_requests_survive_in_the_file_until_served() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Pending::in_dir(dir.path());
        assert!(pending.load().is_empty());
        let t = |n: &str| TableName::new("public", n);
        pending.add(&BTreeSet::from([t("a"), t("b")])).unwrap();
        assert_eq!(Pending::in_dir(dir.path()).load().len(), 2);
        pending.remove(&[t("a")]).unwrap();
        assert_eq!(pending.load(), BTreeSet::from([t("b")]));
    }

    #[test]
    fn newly_watched_tables_are_those_no_current_snapshot_holds() {
        let t = |n: &str| TableName::new("public", n);
        let mut m = manifest(
            vec![
                holding(snapshot(100, 1), &["a"]),
                holding(snapshot(300, 3), &["a", "b"]),
            ],
            vec![],
        );
        m.rereads = vec![
            holding(snapshot(200, 2), &["c"]),
            holding(snapshot(400, 4), &["d"]),
        ];
        // c was re-read before the newest base, which does not hold it: it was dropped since.
        assert_eq!(
            unheld(&m, &[t("a"), t("b"), t("c"), t("d"), t("e")]),
            vec![t("c"), t("e")]
        );
        m.snapshots.clear();
        assert!(
            unheld(&m, &[t("e")]).is_empty(),
            "the base snapshot takes them all"
        );
    }
}
