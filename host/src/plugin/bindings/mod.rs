//! The only module that sees WIT-generated types: one `bindgen!` per
//! interface version the host runs (`v01`, `v02`, `v03`), the probe that tells
//! which one a component exports, and version-independent calls that take
//! and return the host's model.

#[macro_use]
mod convert;
#[macro_use]
mod stateful;
mod v01;
mod v02;
mod v03;

use wasmtime::component::{InstancePre, Linker};
use wasmtime::Store;

use crate::model;
use crate::operators::join::spec::JoinSpec;
use crate::operators::spec::AggregationSpec;
use crate::operators::{Projection, StateUpdate};
use crate::plugin::runtime::HostState;

/// One change's outcome as the plugin reported it.
pub type ChangeOutcome = Result<Vec<model::SinkWrite>, String>;

/// The plugin interfaces this host runs, newest first.
pub const PLUGIN_INTERFACES: [&str; 3] = [
    "sluice:transform/plugin@0.3.0",
    "sluice:transform/plugin@0.2.0",
    "sluice:transform/plugin@0.1.0",
];

/// Plugin self-description in host terms.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    /// The WIT version the component exports (`0.1.0` … `0.3.0`).
    pub interface: &'static str,
    pub tables: Vec<String>,
    pub outputs: Vec<String>,
    pub state_version: u32,
    /// Checked declarations (empty before 0.2).
    pub aggregations: Vec<AggregationSpec>,
    /// Runs as `process-keyed` in the sink's transaction (0.2).
    pub keyed_state: bool,
    /// Checked join declarations (0.3).
    pub joins: Vec<JoinSpec>,
    /// Tables read with `host.lookup` (0.3): `process` then runs in the
    /// sink's transaction.
    pub lookups: Vec<String>,
}

/// A `process-keyed` answer: one outcome per change, and the new state of
/// each row whose state changed (by the index of one of its changes;
/// `None` deletes it).
pub type KeyedAnswer = (Vec<ChangeOutcome>, Vec<(u32, Option<Vec<u8>>)>);

/// Add every version's host imports to the linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    v01::Transform::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v02::Transform::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    v03::Transform::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

/// A linked component of a known interface version.
pub enum PluginPre {
    V01(v01::TransformPre<HostState>),
    V02(v02::TransformPre<HostState>),
    V03(v03::TransformPre<HostState>),
}

impl PluginPre {
    /// Bind to the newest interface among `exports`; `None` if it exports none.
    pub fn probe(
        exports: &[String],
        pre: InstancePre<HostState>,
    ) -> Option<wasmtime::Result<PluginPre>> {
        let has = |i: &str| exports.iter().any(|n| n == i);
        if has(PLUGIN_INTERFACES[0]) {
            Some(v03::TransformPre::new(pre).map(PluginPre::V03))
        } else if has(PLUGIN_INTERFACES[1]) {
            Some(v02::TransformPre::new(pre).map(PluginPre::V02))
        } else if has(PLUGIN_INTERFACES[2]) {
            Some(v01::TransformPre::new(pre).map(PluginPre::V01))
        } else {
            None
        }
    }

    pub fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<PluginBindings> {
        Ok(match self {
            PluginPre::V01(p) => PluginBindings::V01(p.instantiate(store)?),
            PluginPre::V02(p) => PluginBindings::V02(p.instantiate(store)?),
            PluginPre::V03(p) => PluginBindings::V03(p.instantiate(store)?),
        })
    }
}

/// A live instance's exports. The outer `Err` of each call is a trap; the
/// inner one a broken answer (the plugin is as good as trapped).
pub enum PluginBindings {
    V01(v01::Transform),
    V02(v02::Transform),
    V03(v03::Transform),
}

/// Run `$body` with `$b` bound to the instance's exports and `$v` to its
/// version's conversion module, for calls that exist from 0.2 on.
macro_rules! since_v02 {
    ($self:expr, $call:literal, |$b:ident, $v:tt| $body:expr) => {
        match $self {
            PluginBindings::V02($b) => {
                #[allow(unused_imports)]
                use v02 as $v;
                $body
            }
            PluginBindings::V03($b) => {
                #[allow(unused_imports)]
                use v03 as $v;
                $body
            }
            PluginBindings::V01(_) => {
                return Err(wasmtime::Error::msg(concat!(
                    "`",
                    $call,
                    "` needs a plugin@0.2.0 component or newer; this one exports 0.1.0"
                )))
            }
        }
    };
}

/// A call's result: trap, broken answer, or the answer.
pub type Call<T> = wasmtime::Result<Result<T, String>>;

impl PluginBindings {
    pub fn describe(&self, store: &mut Store<HostState>) -> Call<PluginInfo> {
        Ok(match self {
            PluginBindings::V01(b) => {
                Ok(v01::info(b.sluice_transform_plugin().call_describe(store)?))
            }
            PluginBindings::V02(b) => v02::info(b.sluice_transform_plugin().call_describe(store)?),
            PluginBindings::V03(b) => v03::info(b.sluice_transform_plugin().call_describe(store)?),
        })
    }

    pub fn process(
        &self,
        store: &mut Store<HostState>,
        events: &[(&model::ChangeEvent, &model::RecordId)],
    ) -> Call<Vec<ChangeOutcome>> {
        Ok(match self {
            PluginBindings::V01(b) => {
                let batch = v01::to_batch(events);
                let r = b.sluice_transform_plugin().call_process(store, &batch)?;
                v01::from_result(r, events.len())
            }
            PluginBindings::V02(b) => {
                let batch = v02::to_batch(events);
                let r = b.sluice_transform_plugin().call_process(store, &batch)?;
                v02::from_result(r, events.len())
            }
            PluginBindings::V03(b) => {
                let batch = v03::to_batch(events);
                let r = b.sluice_transform_plugin().call_process(store, &batch)?;
                v03::from_result(r, events.len())
            }
        })
    }

    /// `process-keyed` over changes with the stored states of their rows
    /// (by the index of each row's first change).
    pub fn process_keyed(
        &self,
        store: &mut Store<HostState>,
        events: &[(&model::ChangeEvent, &model::RecordId)],
        states: &[(u32, Vec<u8>)],
    ) -> Call<KeyedAnswer> {
        since_v02!(self, "process-keyed", |b, v| {
            let batch = v::to_batch(events);
            let states = v::row_states(states);
            let r = b
                .sluice_transform_plugin()
                .call_process_keyed(store, &batch, &states)?;
            Ok(v::from_keyed(r, events.len()))
        })
    }

    /// Where each row image counts for aggregation `aggregation`.
    pub fn project(
        &self,
        store: &mut Store<HostState>,
        aggregation: u32,
        source: &model::TableDesc,
        rows: &[&[model::Value]],
    ) -> Call<Vec<Result<Option<Projection>, String>>> {
        since_v02!(self, "project", |b, v| {
            let (table, rows_in) = v::project_args(source, rows);
            let answer =
                b.sluice_transform_plugin()
                    .call_project(store, aggregation, &table, &rows_in)?;
            Ok(v::projections(answer, rows.len()))
        })
    }

    /// Fold rows into custom aggregate states; one result per update.
    pub fn aggregate_apply(
        &self,
        store: &mut Store<HostState>,
        aggregation: u32,
        measure: u32,
        updates: &[StateUpdate],
    ) -> Call<Vec<Result<Vec<u8>, String>>> {
        since_v02!(self, "aggregate-apply", |b, v| {
            let answer = b.sluice_transform_plugin().call_aggregate_apply(
                store,
                aggregation,
                measure,
                &v::state_updates(updates),
            )?;
            Ok(expect_len(answer, updates.len(), "states"))
        })
    }

    /// Merge each group's partial states into one.
    pub fn aggregate_merge(
        &self,
        store: &mut Store<HostState>,
        aggregation: u32,
        measure: u32,
        groups: &[Vec<Vec<u8>>],
    ) -> Call<Vec<Vec<u8>>> {
        since_v02!(self, "aggregate-merge", |b, _| {
            let answer = b.sluice_transform_plugin().call_aggregate_merge(
                store,
                aggregation,
                measure,
                groups,
            )?;
            Ok(expect_len(answer, groups.len(), "merged states"))
        })
    }

    /// The output value of each state.
    pub fn aggregate_finish(
        &self,
        store: &mut Store<HostState>,
        aggregation: u32,
        measure: u32,
        states: &[Vec<u8>],
    ) -> Call<Vec<model::Value>> {
        since_v02!(self, "aggregate-finish", |b, v| {
            let answer = b.sluice_transform_plugin().call_aggregate_finish(
                store,
                aggregation,
                measure,
                states,
            )?;
            Ok(expect_len(answer, states.len(), "values").map(v::finished))
        })
    }
}

fn expect_len<T>(answer: Vec<T>, expected: usize, what: &str) -> Result<Vec<T>, String> {
    if answer.len() == expected {
        Ok(answer)
    } else {
        Err(format!(
            "plugin returned {} {what} for {expected}",
            answer.len()
        ))
    }
}
