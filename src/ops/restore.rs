//! `tidemark restore`: tables as they were at a point, into a target database.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::OpError;
use crate::log::audit::Outcome;
use crate::replay::apply::Target;
use crate::replay::progress::Phases;
use crate::restore::command::{self, Request, Summary};

pub async fn run(
    config: &Path,
    request: &Request,
    progress: &mut impl Write,
) -> Result<Summary, OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    let phases = Phases::on_stderr();
    let summary = command::run(&*store, request, &checked.config.log.dir, progress, &phases).await;
    if !request.dry_run {
        let mut details = json!({
            "to": match request.to {
                Target::Lsn(lsn) => lsn.to_string(),
                Target::Time(time) => time.to_string(),
                Target::Latest => "latest".into(),
            },
            "target": request.target.as_ref().map(|t| t.describe()),
            "tables": request.tables,
            "where": request.predicate,
        });
        match &summary {
            Ok(s) => {
                details["tables"] = json!(s.tables);
                // Rows written: loaded from the snapshot, and changed by the replay.
                details["rows"] = json!(s.rows_loaded + s.changes);
                details["seconds"] = json!(s.seconds);
            }
            Err(e) => details["error"] = json!(e.to_string()),
        }
        super::audit::record(&checked, "restore", Outcome::of(&summary), details).await;
    }
    Ok(summary?)
}
