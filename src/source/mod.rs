//! The source: PostgreSQL, read through a logical replication slot with pgoutput.
//!
//! `pgoutput` and `wire` are pure decoders over bytes; `conn` is the thin I/O
//! layer that carries them; `setup` checks the server and creates the
//! publication and slot.

pub mod conn;
pub mod ddl;
pub mod error;
pub mod pgoutput;
pub mod schema;
pub mod sequences;
pub mod setup;
pub mod wire;

pub use error::SourceError;
