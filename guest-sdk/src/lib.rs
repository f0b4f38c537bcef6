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

#[cfg(all(feature = "wit-0-1", feature = "wit-0-2"))]
compile_error!("features `wit-0-1` and `wit-0-2` pick one interface version: enable one");

#[doc(hidden)]
#[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
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

#[doc(hidden)]
#[cfg(feature = "wit-0-2")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../wit/v0.2",
        pub_export_macro: true,
        export_macro_name: "__sluice_export_world",
        default_bindings_module: "sluice_guest::bindings",
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
#[cfg(feature = "wit-0-1")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "transform",
        path: "../wit/v0.1",
        pub_export_macro: true,
        export_macro_name: "__sluice_export_world",
        default_bindings_module: "sluice_guest::bindings",
        additional_derives: [PartialEq],
    });
}

#[cfg(not(feature = "wit-0-1"))]
mod aggregate;
mod decimal;
mod emitter;
#[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
mod join;
#[cfg(not(feature = "wit-0-1"))]
mod keyed;
#[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
mod lookup;
mod view;

#[cfg(not(feature = "wit-0-1"))]
pub use aggregate::{
    days, decode_counts, encode_counts, hours, minutes, project_by_columns, seconds, Aggregate,
    AggregateFn, Aggregation, CustomAggregate, EmitMode, EventTime, LatePolicy, Measure,
    Projection, Semantics, Window,
};
#[doc(hidden)]
#[cfg(not(feature = "wit-0-1"))]
pub use aggregate::{run_apply, run_finish, run_merge, run_project};
#[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
pub use join::{Join, JoinColumn, JoinKind, JoinSide, Side};
#[doc(hidden)]
#[cfg(not(feature = "wit-0-1"))]
pub use keyed::run_keyed;
#[cfg(not(feature = "wit-0-1"))]
pub use keyed::KeyedState;
#[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
pub use lookup::{lookup, FoundRow};

use bindings::sluice::transform::types as wit;

pub use bindings::sluice::transform::types::{
    ColumnType, DecimalParams, LogLevel, Op, PluginInfo, Value,
};
pub use decimal::{multiply_decimal, normalize_decimal};
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
    /// this change are discarded. The default writes nothing (a plugin made
    /// only of aggregations).
    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
        let _ = (change, out);
        Ok(())
    }

    /// Where a row image counts for the aggregation declared at `index`:
    /// its group, event time and one argument per measure; `Ok(None)` leaves
    /// the row out; an `Err` dead-letters the event. The default reads the
    /// declaration's columns by name ([`project_by_columns`]).
    #[cfg(not(feature = "wit-0-1"))]
    fn project(
        index: u32,
        aggregation: &Aggregation,
        row: &Row<'_>,
    ) -> Result<Option<Projection>, String> {
        let _ = index;
        project_by_columns(aggregation, row)
    }

    /// [`on_change`](Plugin::on_change) with the state the host keeps for
    /// the change's source row, for plugins that declare
    /// [`PluginInfo::keyed_state`] (see the `keyed` docs on [`KeyedState`]).
    /// An `Err` dead-letters the change and leaves the state as it was. The
    /// default ignores the state.
    #[cfg(not(feature = "wit-0-1"))]
    fn on_keyed_change(
        change: &Change<'_>,
        state: &mut KeyedState,
        out: &mut Emitter,
    ) -> Result<(), String> {
        let _ = state;
        Self::on_change(change, out)
    }

    /// The implementation of a custom measure, by its name (see [`Aggregate`]).
    #[cfg(not(feature = "wit-0-1"))]
    fn custom_aggregate(measure: &str) -> Option<CustomAggregate> {
        let _ = measure;
        None
    }
}

/// Build a [`PluginInfo`] without spelling out the record.
pub fn info(name: &str, version: &str, tables: &[&str], outputs: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: version.to_string(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
        outputs: outputs.iter().map(|t| t.to_string()).collect(),
        state_version: 0,
        #[cfg(not(feature = "wit-0-1"))]
        aggregations: Vec::new(),
        #[cfg(not(feature = "wit-0-1"))]
        keyed_state: false,
        #[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
        joins: Vec::new(),
        #[cfg(not(any(feature = "wit-0-1", feature = "wit-0-2")))]
        lookups: Vec::new(),
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
#[cfg(not(feature = "wit-0-1"))]
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

            fn process_keyed(
                input: $crate::bindings::sluice::transform::types::Batch,
                states: ::std::vec::Vec<$crate::bindings::sluice::transform::types::RowState>,
            ) -> $crate::bindings::sluice::transform::types::KeyedResult {
                $crate::run_keyed::<$plugin>(input, states)
            }

            fn project(
                aggregation: u32,
                source: $crate::bindings::sluice::transform::types::Table,
                rows: ::std::vec::Vec<::std::vec::Vec<$crate::Value>>,
            ) -> ::std::vec::Vec<
                ::std::result::Result<
                    ::std::option::Option<$crate::Projection>,
                    ::std::string::String,
                >,
            > {
                $crate::run_project::<$plugin>(aggregation, source, rows)
            }

            fn aggregate_apply(
                aggregation: u32,
                measure: u32,
                updates: ::std::vec::Vec<$crate::bindings::sluice::transform::types::StateUpdate>,
            ) -> ::std::vec::Vec<::std::result::Result<::std::vec::Vec<u8>, ::std::string::String>>
            {
                $crate::run_apply::<$plugin>(aggregation, measure, updates)
            }

            fn aggregate_merge(
                aggregation: u32,
                measure: u32,
                groups: ::std::vec::Vec<::std::vec::Vec<::std::vec::Vec<u8>>>,
            ) -> ::std::vec::Vec<::std::vec::Vec<u8>> {
                $crate::run_merge::<$plugin>(aggregation, measure, groups)
            }

            fn aggregate_finish(
                aggregation: u32,
                measure: u32,
                states: ::std::vec::Vec<::std::vec::Vec<u8>>,
            ) -> ::std::vec::Vec<$crate::Value> {
                $crate::run_finish::<$plugin>(aggregation, measure, states)
            }
        }

        $crate::bindings::__sluice_export_world!(__SluiceExport with_types_in $crate::bindings);
    };
}

/// Export a type implementing [`Plugin`] as the component's `plugin` interface.
#[cfg(feature = "wit-0-1")]
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
