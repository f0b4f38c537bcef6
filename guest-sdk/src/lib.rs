//! Write Sluice change-data-capture plugins in Rust.
//!
//! A plugin is a WebAssembly component that the Sluice host loads from its plugin
//! folder. The host decodes Debezium events and calls your plugin with typed
//! changes; you answer each change with rows to upsert or keys to delete in sink
//! tables, or with an error that sends the event to the dead-letter queue.
//!
//! The SDK hides the batch protocol of the WIT interface (`wit/transform.wit`):
//! you write one function per change, the SDK handles descriptors and batching.
//!
//! # A complete plugin
//!
//! ```no_run
//! use sluice_guest::{export_plugin, Change, Column, ColumnType, Emitter, Op, Plugin, PluginInfo, Value};
//!
//! struct UpperNames;
//!
//! impl Plugin for UpperNames {
//!     fn describe() -> PluginInfo {
//!         sluice_guest::info("upper_names", "1.0.0", &["customers"], &["customer_names"])
//!     }
//!
//!     fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
//!         let table = out.sink_table(
//!             "customer_names",
//!             &[Column::new("id", ColumnType::Int, false), Column::new("name", ColumnType::Text, true)],
//!             &["id"],
//!         )?;
//!         match change.op() {
//!             Op::Delete => out.delete(table, change.key().to_vec()),
//!             Op::Truncate => Ok(()),
//!             _ => {
//!                 let row = change.after().ok_or("change without an after image")?;
//!                 let name = match row.get("name") {
//!                     Some(Value::Text(s)) => Value::Text(s.to_uppercase()),
//!                     _ => Value::Null,
//!                 };
//!                 out.upsert(table, vec![row.require("id")?.clone(), name])
//!             }
//!         }
//!     }
//! }
//!
//! export_plugin!(UpperNames);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and drop the `.wasm` into the host's plugin folder.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__sluice_export_world",
        default_bindings_module: "sluice_guest::bindings",
        additional_derives: [PartialEq],
    });
}

mod decimal;
mod emitter;
mod view;

use bindings::sluice::transform::types as wit;

pub use bindings::sluice::transform::types::{
    ColumnType, DecimalParams, LogLevel, Op, PluginInfo, Value,
};
pub use decimal::normalize_decimal;
pub use emitter::{Column, Emitter, SinkRef};
pub use view::{Change, Row, Table};

/// Your plugin: describe yourself once, then handle one change at a time.
///
/// Plugins keep no state across calls that matters: the host may rebuild the
/// instance at any batch boundary (after a trap, or on reload).
pub trait Plugin {
    /// Name, version and the tables you handle; called once at load.
    fn describe() -> PluginInfo;

    /// Turn one change into sink writes through `out`. An `Err` sends the event
    /// to the dead-letter queue with your message; writes already emitted for
    /// this change are discarded.
    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String>;
}

/// Build a [`PluginInfo`] without spelling out the record.
pub fn info(name: &str, version: &str, tables: &[&str], outputs: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        outputs: outputs.iter().map(|t| t.to_string()).collect(),
        state_version: 0,
    }
}

/// Log through the host, tagged with this plugin's name.
pub fn log(level: LogLevel, message: &str) {
    bindings::sluice::transform::host::log(level, message);
}

/// Runs `P` over a batch; used by [`export_plugin!`], not called directly.
#[doc(hidden)]
pub fn run_batch<P: Plugin>(input: wit::Batch) -> wit::BatchResult {
    let tables: Vec<Table<'_>> = input.tables.iter().map(Table::new).collect();
    let mut out = Emitter::default();
    let mut results = Vec::with_capacity(input.changes.len());
    for raw in &input.changes {
        let result = match tables.get(raw.table as usize) {
            Some(table) => {
                let change = Change::new(table, raw);
                P::on_change(&change, &mut out)
            }
            None => Err(format!(
                "host sent a change for table #{} but only {} descriptors",
                raw.table,
                tables.len()
            )),
        };
        results.push(out.finish_change(result));
    }
    wit::BatchResult {
        tables: out.into_tables(),
        results,
    }
}

/// Export a type implementing [`Plugin`] as the component's `plugin` interface.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __SluiceExport;

        impl $crate::bindings::exports::sluice::transform::plugin::Guest for __SluiceExport {
            fn describe() -> $crate::PluginInfo {
                <$plugin as $crate::Plugin>::describe()
            }

            fn process(
                input: $crate::bindings::sluice::transform::types::Batch,
            ) -> $crate::bindings::sluice::transform::types::BatchResult {
                $crate::run_batch::<$plugin>(input)
            }
        }

        $crate::bindings::__sluice_export_world!(__SluiceExport with_types_in $crate::bindings);
    };
}
