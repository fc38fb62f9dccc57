//! Restore: rebuilds watched tables from a base snapshot plus the archived
//! segments after it.
//!
//! Why the result is exact at a target: the snapshot holds every transaction
//! whose commit record precedes its LSN, and none after. The segments after it
//! hold every later transaction, whole, and the log reader yields each once,
//! in commit order, dropping aborted and unfinished ones. The applier skips
//! those the snapshot holds and stops at the first transaction past the
//! target. Since commit order is the order the source applied them, replaying
//! them in that order reproduces the source's state at the target.

pub mod apply;
pub mod command;
pub mod drill;
pub mod history;
pub mod load;
pub mod merge;
pub mod progress;
pub mod rebuild;
