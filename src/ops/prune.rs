//! `tidemark prune`: delete what `[retention]` no longer needs, manifest first.

use std::path::Path;

use super::OpError;
use crate::archive::manifest;
use crate::archive::retention::{self, PrunePlan};
use crate::base::position::PgTimestamp;

/// What was deleted, or with `dry_run` what would be; `None` for an empty archive.
pub async fn run(config: &Path, dry_run: bool) -> Result<Option<PrunePlan>, OpError> {
    let checked = super::load(config)?;
    let policy = checked.config.retention.clone().ok_or_else(|| {
        OpError::Usage(
            "the config has no [retention] section; add one, e.g. window = \"7d\", daily = 7, weekly = 4, monthly = 6".into(),
        )
    })?;
    let store = super::open_archive(&checked.config).await?;
    let _lock = super::sole_writer(&checked.config.log.dir, "prunes after every compaction")?;
    let Some((_, latest)) = manifest::load_latest(&*store).await? else {
        return Ok(None);
    };
    let plan = retention::plan(&latest, &policy, PgTimestamp::now());
    if !dry_run && !plan.is_empty() {
        manifest::update(&*store, |m| plan.apply_to(m)).await?;
        retention::delete(&*store, &plan).await?;
    }
    Ok(Some(plan))
}
