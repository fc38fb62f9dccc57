//! One module per command. Each takes its parsed arguments, does the work
//! through the layers below, and returns a typed result; `main` only parses,
//! dispatches and prints. Every failure is an [`OpError`], whose
//! `exit_code()` says whether a person must fix the input (2) or something
//! failed while running (1).

pub mod alerts;
pub mod audit;
#[cfg(feature = "bench")]
pub mod bench;
pub mod capture;
pub mod compact;
pub mod drill;
pub mod history;
pub mod list;
pub mod log;
pub mod prune;
pub mod quickstart;
pub mod restore;
pub mod schedule;
pub mod snapshot;
pub mod status;
pub mod verify;

use std::path::Path;
use std::sync::Arc;

use crate::archive::store::ObjectStore;
use crate::base::exit::ExitCode;
use crate::config::{Checked, Config};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Arguments or a config that cannot work together; the text says what to change.
    #[error("{0}")]
    Usage(String),
    /// The command ran to the end and found something wrong (a failed verify or drill).
    #[error("{0}")]
    Found(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Compact(#[from] crate::compact::CompactError),
    #[error(transparent)]
    Restore(#[from] crate::restore::command::RestoreError),
    #[error(transparent)]
    Drill(#[from] crate::restore::drill::DrillError),
    #[error(transparent)]
    History(#[from] crate::restore::history::HistoryError),
    #[error(transparent)]
    Inspect(#[from] crate::inspect::InspectError),
    #[error(transparent)]
    Quickstart(#[from] crate::quickstart::QuickstartError),
    #[cfg(feature = "bench")]
    #[error(transparent)]
    Bench(#[from] crate::bench::BenchError),
}

impl OpError {
    pub fn exit_code(&self) -> ExitCode {
        use OpError::*;
        match self {
            Usage(_) => ExitCode::BadInput,
            Found(_) => ExitCode::Failure,
            Config(e) => e.exit_code(),
            Archive(e) => e.exit_code(),
            Log(e) => e.exit_code(),
            Telemetry(e) => e.exit_code(),
            Capture(e) => e.exit_code(),
            Compact(e) => e.exit_code(),
            Restore(e) => e.exit_code(),
            Drill(e) => e.exit_code(),
            History(e) => e.exit_code(),
            Inspect(e) => e.exit_code(),
            Quickstart(e) => e.exit_code(),
            #[cfg(feature = "bench")]
            Bench(e) => e.exit_code(),
        }
    }
}

/// The config at `path`, checked.
pub fn load(path: &Path) -> Result<Checked, OpError> {
    Ok(Config::load(path)?)
}

/// The archive store a config names; a config without one is bad input.
pub async fn open_archive(config: &Config) -> Result<Arc<dyn ObjectStore>, OpError> {
    let archive = config.archive.as_ref().ok_or_else(|| {
        OpError::Usage(
            "the config has no [archive] section; add one with url = \"file:///path\" or \"s3://bucket/prefix\"".into(),
        )
    })?;
    Ok(crate::archive::store::open_configured(archive)
        .await
        .map_err(crate::archive::ArchiveError::from)?)
}

/// Takes the log dir's lock, so this command is the archive's only writer;
/// capture holds it while it runs and does `what` by itself.
pub fn sole_writer(log_dir: &Path, what: &str) -> Result<std::fs::File, OpError> {
    std::fs::create_dir_all(log_dir).map_err(|source| crate::log::LogError::Dir {
        path: log_dir.to_path_buf(),
        source,
    })?;
    crate::log::writer::lock_dir(log_dir).map_err(|e| match e {
        crate::log::LogError::Locked { path } => OpError::Usage(format!(
            "capture is running on {} and {what}; stop it first to do this by hand",
            path.display()
        )),
        other => other.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::crypt::CryptError;
    use crate::archive::store::StoreError;
    use crate::archive::ArchiveError;
    use crate::restore::command::RestoreError;

    /// An archive error reaching a command keeps its own kind: what a person
    /// must fix is 2 however deep it comes from, a damaged object is 1.
    #[test]
    fn exit_codes_follow_the_error_not_the_command() {
        let refused = || StoreError::Refused {
            store: "s3://b".into(),
            action: "get",
            key: "k".into(),
            message: "403".into(),
        };
        let wrong_key = || CryptError::WrongKey {
            object: "k".into(),
            found: "a".into(),
            configured: "b".into(),
        };
        let corrupt = || ArchiveError::Corrupt {
            key: "k".into(),
            problem: "flipped".into(),
        };
        let cases = [
            (
                OpError::from(RestoreError::Archive(refused().into())),
                ExitCode::BadInput,
            ),
            (
                OpError::from(RestoreError::Archive(StoreError::from(wrong_key()).into())),
                ExitCode::BadInput,
            ),
            (
                OpError::from(RestoreError::Archive(corrupt())),
                ExitCode::Failure,
            ),
            (OpError::from(corrupt()), ExitCode::Failure),
            (
                OpError::from(RestoreError::BadTarget("x".into())),
                ExitCode::BadInput,
            ),
            (OpError::Found("differences".into()), ExitCode::Failure),
            (OpError::Usage("no [archive]".into()), ExitCode::BadInput),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit_code(), code, "{error}");
        }
    }
}
