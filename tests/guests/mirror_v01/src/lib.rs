//! `plugins/mirror`'s own source, compiled against the frozen WIT 0.1.

#[path = "../../../../plugins/mirror/src/lib.rs"]
mod mirror;
