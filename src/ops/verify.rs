//! `tidemark verify`: re-read every archived object.

use std::path::Path;

use serde_json::json;

use super::OpError;
use crate::archive::verify::{self, Report};
use crate::log::audit::Outcome;

pub async fn run(config: &Path, deep: bool) -> Result<Report, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    let report = verify::verify(&*store, deep, &std::env::temp_dir())
        .await
        .map_err(crate::archive::ArchiveError::from);
    let (outcome, details) = match &report {
        Ok(r) => (
            if r.ok { Outcome::Ok } else { Outcome::Failed },
            json!({
                "deep": deep,
                "objects": r.objects_checked,
                "bytes": r.bytes_checked,
                "problems": r.problems,
            }),
        ),
        Err(e) => (
            Outcome::Failed,
            json!({ "deep": deep, "error": e.to_string() }),
        ),
    };
    super::audit::record(&checked, "verify", outcome, details).await;
    Ok(report?)
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
