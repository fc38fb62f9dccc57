//! `tidemark drill`: a measured restore rehearsal against the source.

use std::io::Write;
use std::path::Path;

use super::OpError;
use crate::replay::progress::Phases;
use crate::restore::drill::{self, Report};

pub async fn run(
    config: &Path,
    target: &crate::pg::ConnInfo,
    progress: &mut impl Write,
) -> Result<Report, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    let phases = Phases::on_stderr();
    Ok(drill::run(
        &*store,
        &checked.pg,
        target,
        &checked.config.log.dir,
        progress,
        &phases,
    )
    .await?)
}

/// The failure a report with differences is: exit 1.
pub fn differences(report: &Report) -> Result<(), OpError> {
    if report.pass {
        return Ok(());
    }
    Err(OpError::Found(
        "the drill found differences between the restore and the source".into(),
    ))
}
