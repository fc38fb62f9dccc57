//! `tidemark list`: the restore window, snapshots, segments and gaps.

use std::path::Path;

use super::OpError;
use crate::archive::inventory::{self, Inventory};
use crate::archive::manifest;

pub async fn run(config: &Path) -> Result<Inventory, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    let latest = manifest::load_latest(&*store).await?;
    Ok(inventory::inventory(
        latest.as_ref().map(|(k, m)| (k.as_str(), m)),
    ))
}
