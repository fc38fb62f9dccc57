//! `tidemark verify`: re-read every archived object.

use std::path::Path;

use super::OpError;
use crate::archive::verify::{self, Report};

pub async fn run(config: &Path, deep: bool) -> Result<Report, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    Ok(verify::verify(&*store, deep, &std::env::temp_dir())
        .await
        .map_err(crate::archive::ArchiveError::from)?)
}

/// The failure a report with problems is: exit 1, naming each bad object.
pub fn problems(report: &Report) -> Result<(), OpError> {
    if report.ok {
        return Ok(());
    }
    let keys: Vec<&str> = report.problems.iter().map(|p| p.key.as_str()).collect();
    Err(OpError::Found(format!(
        "the archive failed verification: {}",
        keys.join(", ")
    )))
}
