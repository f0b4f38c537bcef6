//! Sluice: a WebAssembly plugin host for change-data-capture transforms.
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod cli;
pub mod config;
pub mod decode;
pub mod dlq;
pub mod model;
pub mod operators;
pub mod pipeline;
pub mod plugin;
pub mod sink;
pub mod source;
pub mod stats;
