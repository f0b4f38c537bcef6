//! `tests/guests/distinct`'s own source, compiled against the frozen WIT 0.2.

#[path = "../../distinct/src/lib.rs"]
mod distinct;
