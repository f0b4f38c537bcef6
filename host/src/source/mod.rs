//! Sources of raw change records.

pub mod file;
pub mod kafka;
