//! The neutral core: the types every layer speaks, with no network I/O and no
//! dependency on any other module of the crate. A table is a
//! [`table::TableName`]; a WAL position is a [`position::Lsn`], typed as a
//! commit or an end position where the difference matters. `files` holds
//! the one rule for secret files we read.

pub mod exit;
pub mod files;
pub mod hashing;
pub mod position;
pub mod retry;
pub mod secret;
pub mod table;
mod text;
