//! `tidemark drill`: a measured restore rehearsal against the source.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::OpError;
use crate::log::audit::Outcome;
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
    let report = drill::run(
        &*store,
        &checked.pg,
        target,
        &checked.config.log.dir,
        progress,
        &phases,
    )
    .await;
    let (outcome, details) = match &report {
        Ok(r) => (
            if r.pass { Outcome::Ok } else { Outcome::Failed },
            json!({
                "target": target.describe(),
                "lsn": r.lsn,
                "tables": r.tables,
                "rto_seconds": r.rto_seconds,
                "rpo_seconds": r.rpo_seconds,
            }),
        ),
        Err(e) => (
            Outcome::Failed,
            json!({ "target": target.describe(), "error": e.to_string() }),
        ),
    };
    super::audit::record(&checked, "drill", outcome, details).await;
    Ok(report?)
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
