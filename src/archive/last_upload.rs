//! What this host last stored: the archive's newest restore point as of the
//! last manifest the uploader wrote, kept in the log dir (`archived.json`).
//! `status` falls back on it while the store cannot be read, so the RPO of
//! an outage keeps growing from a known point instead of turning unknown.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::inventory;
use super::manifest::Manifest;
use crate::base::position::{PgTimestamp, Position};

const FILE_NAME: &str = "archived.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastUpload {
    /// The newest restore point the stored manifest makes restorable.
    pub latest: Option<Position>,
    pub manifest: String,
    pub at: PgTimestamp,
}

/// Records the manifest just stored; a failure only costs `status` its fallback.
pub fn record(log_dir: &Path, key: &str, manifest: &Manifest) {
    let last = LastUpload {
        latest: inventory::inventory(Some((key, manifest)))
            .window
            .map(|w| w.latest),
        manifest: key.to_string(),
        at: PgTimestamp::now(),
    };
    let body = serde_json::to_vec(&last).expect("a position serializes");
    if let Err(error) = crate::base::files::replace_durably(&log_dir.join(FILE_NAME), &body) {
        tracing::warn!(%error, "cannot record the last upload in the log dir");
    }
}

pub fn read(log_dir: &Path) -> Option<LastUpload> {
    serde_json::from_slice(&std::fs::read(log_dir.join(FILE_NAME)).ok()?).ok()
}
