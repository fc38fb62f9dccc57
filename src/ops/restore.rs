//! `tidemark restore`: tables as they were at a point, into a target database.

use std::io::Write;
use std::path::Path;

use super::OpError;
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
    Ok(command::run(&*store, request, &checked.config.log.dir, progress, &phases).await?)
}
