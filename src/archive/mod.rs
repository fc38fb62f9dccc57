//! The archive: sealed segments (and base snapshots) in an object store,
//! listed by a manifest (format: `proto/manifest.md`).
//!
//! Why a reader never sees wrong data:
//! - Every object is named in the manifest with its size and SHA-256, and is
//!   verified against both before use. The manifest's own key names its
//!   SHA-256.
//! - The manifest is written last. An object it does not list does not
//!   exist for readers, so a crash mid-upload leaves only unlisted garbage.
//! - Segments chain: each entry names its predecessor's hash, and covers the
//!   resume positions (start_lsn, end_lsn] that continue its predecessor's
//!   end. A break is reported as a gap, never bridged.
//! - A local segment is deleted only after a manifest listing it is stored.

pub mod audit;
pub mod crypt;
pub mod inventory;
pub mod last_upload;
pub mod manifest;
pub mod orphans;
pub mod reread;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod uploader;
pub mod verify;

use crate::base::exit::ExitCode;
use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("archive object {key} is corrupt: {problem}; restore it from a copy, or run `tidemark verify` to see what else is affected")]
    Corrupt { key: String, problem: String },
    #[error("archive object {key} is listed in the manifest but missing from the store; restore it from a copy")]
    Missing { key: String },
    #[error("manifest {key} has format version {version}; this tidemark reads version 1")]
    UnsupportedManifest { key: String, version: u64 },
    #[error("the archive at {store} belongs to database {found}, not {expected}; give each source its own [archive] url")]
    ForeignArchive {
        store: String,
        found: String,
        expected: String,
    },
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

impl ArchiveError {
    pub fn exit_code(&self) -> ExitCode {
        use ArchiveError::*;
        match self {
            Store(e) => e.exit_code(),
            Log(e) => e.exit_code(),
            Source(e) => e.exit_code(),
            UnsupportedManifest { .. } | ForeignArchive { .. } => ExitCode::BadInput,
            Corrupt { .. } | Missing { .. } => ExitCode::Failure,
        }
    }
}

impl ArchiveError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ArchiveError::Store(e) => e.is_retryable(),
            ArchiveError::Source(e) => e.is_retryable(),
            _ => false,
        }
    }
}
