//! tidemark: continuous point-in-time protection for critical PostgreSQL tables.
//!
//! The data path, in the order of the modules: `source` (the replication
//! slot) → `capture` → `log` (the durable segment log) → `archive` →
//! `restore`, with `sink` (the Kafka feed) and `inspect` reading the log too.
//! See `docs/architecture.md`.

pub mod alert;
pub mod archive;
pub mod base;
#[cfg(feature = "bench")]
pub mod bench;
pub mod capture;
pub mod child;
pub mod compact;
pub mod config;
pub mod inspect;
pub mod log;
pub mod ops;
pub mod pg;
pub mod quickstart;
pub mod replay;
pub mod restore;
pub mod sink;
pub mod source;
pub mod telemetry;
