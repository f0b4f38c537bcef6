//! `sluice:transform@0.2.0` (`wit/v0.2/transform.wit`): 0.1 plus
//! aggregations (declarations, `project`, custom aggregate states) and keyed
//! state; plugins built against it keep running unchanged.

use crate::model;
use crate::operators::spec::{
    AggregateFn, AggregationSpec, EmitMode, EventTimeSpec, LatePolicy, MeasureSpec, Semantics,
    WindowSpec,
};
use crate::operators::Projection;
use crate::plugin::bindings::ChangeOutcome;
use crate::plugin::runtime::HostState;

wasmtime::component::bindgen!({
    world: "transform",
    path: "../wit/v0.2",
});

use self::sluice::transform::types as wit;
pub use exports::sluice::transform::plugin::{Batch, BatchResult};

model_conversions!();

stateful_conversions!();

pub(super) fn info(i: wit::PluginInfo) -> Result<super::PluginInfo, String> {
    let aggregations = i
        .aggregations
        .into_iter()
        .map(|a| {
            let spec = aggregation(a);
            spec.check().map(|()| spec)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(super::PluginInfo {
        name: i.name,
        version: i.version,
        interface: "0.2.0",
        tables: i.tables,
        outputs: i.outputs,
        state_version: i.state_version,
        aggregations,
        keyed_state: i.keyed_state,
        joins: Vec::new(),
        lookups: Vec::new(),
    })
}

impl sluice::transform::types::Host for HostState {}

impl sluice::transform::host::Host for HostState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        self.log_line(log_level(level), &message);
    }
}
