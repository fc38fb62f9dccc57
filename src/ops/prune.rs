//! `tidemark prune`: delete what `[retention]` no longer needs, manifest
//! first, and orphans (objects no manifest lists) older than a day.

use std::path::Path;

use serde_json::json;

use super::OpError;
use crate::archive::retention::{self, PrunePlan};
use crate::archive::{manifest, orphans};
use crate::base::position::PgTimestamp;
use crate::log::audit::Outcome;

/// What was deleted, or with `dry_run` what would be; `None` for an empty archive.
/// Without `[retention]`, only orphans are deleted.
pub async fn run(config: &Path, dry_run: bool) -> Result<Option<PrunePlan>, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    let _lock = super::sole_writer(&checked.config.log.dir, "prunes after every compaction")?;
    let pruned = prune(&checked, &*store, dry_run).await;
    if !dry_run {
        let details = match &pruned {
            Ok(plan) => json!(plan),
            Err(e) => json!({ "error": e.to_string() }),
        };
        super::audit::record(&checked, "prune", Outcome::of(&pruned), details).await;
    }
    pruned
}

async fn prune(
    checked: &crate::config::Checked,
    store: &dyn crate::archive::store::ObjectStore,
    dry_run: bool,
) -> Result<Option<PrunePlan>, OpError> {
    let Some((_, latest)) = manifest::load_latest(store).await? else {
        return Ok(None);
    };
    let mut plan = match &checked.config.retention {
        Some(policy) => retention::plan(&latest, policy, PgTimestamp::now()),
        None => PrunePlan::default(),
    };
    if !dry_run && !plan.is_empty() {
        manifest::update(store, |m| plan.apply_to(m)).await?;
        retention::delete(store, &plan).await?;
    }
    plan.deleted_orphans = if dry_run {
        let listed = store
            .list("")
            .await
            .map_err(crate::archive::ArchiveError::from)?;
        let manifests = orphans::kept_manifests(store, &listed).await?;
        orphans::find(&listed, &manifests)
            .into_iter()
            .filter(|o| o.older_than(orphans::MIN_AGE))
            .collect()
    } else {
        orphans::delete_old(store).await?
    };
    Ok(Some(plan))
}
