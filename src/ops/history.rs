//! `tidemark history`: every change of a table or row, from the archive alone.

use std::io::Write;
use std::path::Path;

use super::OpError;
use crate::restore::history::{self, HistoryError, Query};

pub async fn run(config: &Path, query: &Query, json: bool, out: impl Write) -> Result<(), OpError> {
    let checked = super::load(config)?;
    let store = super::open_archive(&checked.config).await?;
    match history::run(&*store, query, json, &checked.config.log.dir, out).await {
        Ok(_) => Ok(()),
        // A reader that stopped reading (`| head`) is not a failure.
        Err(HistoryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}
