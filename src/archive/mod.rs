//! The archive: sealed segments and base snapshots in an object store, listed
//! by a manifest (format: `proto/manifest.md`).

pub mod store;
