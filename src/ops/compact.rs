//! `tidemark compact`: a new base snapshot from the archive alone, by hand.

use std::path::Path;

use serde_json::json;

use super::OpError;
use crate::archive::manifest;
use crate::compact::Compacted;
use crate::log::audit::Outcome;

/// The compaction done, or `None` when there was nothing to compact.
pub async fn run(config: &Path) -> Result<Option<Compacted>, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    let log_dir = &checked.config.log.dir;
    let _lock = super::sole_writer(log_dir, "compacts every [archive] compact_interval")?;
    let started = std::time::Instant::now();
    let done = async {
        let Some((_, latest)) = manifest::load_latest(&*store).await? else {
            return Ok(None);
        };
        let Some(done) = crate::compact::compact(store.clone(), &latest, log_dir).await? else {
            return Ok(None);
        };
        let entry = done.snapshot.clone();
        manifest::update(&*store, |m| m.snapshots.push(entry)).await?;
        Ok::<_, OpError>(Some(done))
    }
    .await;
    let details = match &done {
        Ok(Some(done)) => done.audit_details(started.elapsed()),
        Ok(None) => json!({ "compacted": false }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    super::audit::record(&checked, "compact", Outcome::of(&done), details).await;
    done
}
