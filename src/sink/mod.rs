//! Sinks: readers that hang off the segment log and publish what it holds.
//! The archive is the log's first reader; these are the others.

#[cfg(feature = "kafka")]
pub mod kafka;
