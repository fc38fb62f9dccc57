//! Replay: tables rebuilt from a base snapshot plus the archived segments
//! after it, into a PostgreSQL database. Compaction and restore both call it;
//! neither knows the other.
//!
//! Why the result is exact at a target:
//! - The snapshot holds every transaction whose commit record precedes its
//!   LSN, and none after (`archive::snapshot`).
//! - The plan (`rebuild::plan`) takes the newest snapshot at or before the
//!   target and the contiguous segment chain after it, starting at the first
//!   segment's restart point, so every transaction open there is read whole.
//!   A missing link is an error, never bridged.
//! - Every object is checked against its manifest entry before a byte of it
//!   is used (`load::fetch_verified`).
//! - The log reader yields each committed transaction once, in commit order,
//!   dropping aborted and unfinished ones (`log::committed`).
//! - The applier (`apply`) skips those the snapshot holds and stops at the
//!   first transaction past the target. Commit order is the order the source
//!   applied them, so replaying them in that order reproduces the source's
//!   state at the target. Per-key merging (`merge`) keeps only each key's
//!   last image within a batch, which that order makes equal to replaying
//!   every change. A table the rebuild creates, with an integer or uuid key,
//!   waits for its changes: they fold into its snapshot's COPY (`fold`), so
//!   each row is loaded once; anything a fold cannot carry loads the table
//!   whole and goes the way of `merge`. Inserts into tables without a key go
//!   in as COPY: a multiset takes rows in any order.

pub mod apply;
pub mod at_target;
pub mod fold;
pub mod load;
pub mod merge;
pub mod pipeline;
pub mod progress;
pub mod rebuild;
pub mod scratch;
