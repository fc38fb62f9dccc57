//! `tidemark log`: the committed changes in the local log.

use std::io::Write;
use std::path::Path;

use super::OpError;
use crate::inspect::{self, Filter, InspectError};

pub fn run(config: &Path, filter: Filter, json: bool, out: impl Write) -> Result<(), OpError> {
    let checked = super::load(config)?;
    match inspect::print(&checked.config.log.dir, filter, json, out) {
        // A reader that stopped reading (`| head`) is not a failure.
        Err(InspectError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
