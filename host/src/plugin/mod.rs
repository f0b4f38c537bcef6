//! Plugins: WIT bindings, the Wasm runtime, the live plugin set and loading.

pub mod bindings;
pub mod lazy;
pub mod loader;
pub mod runtime;
pub mod set;
