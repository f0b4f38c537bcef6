//! `sluice:transform@0.1.0` (`wit/v0.1/transform.wit`): plugins built before
//! aggregations arrived keep running unchanged.

use crate::model;
use crate::plugin::bindings::ChangeOutcome;
use crate::plugin::runtime::HostState;

wasmtime::component::bindgen!({
    world: "transform",
    path: "../wit/v0.1",
});

use self::sluice::transform::types as wit;
pub use exports::sluice::transform::plugin::{Batch, BatchResult};

model_conversions!();

/// 0.1 has no "unknown": a commit time the event does not give is 0.
fn change_record(
    ev: &model::ChangeEvent,
    id: &model::RecordId,
    table: u32,
    before: Option<Vec<wit::Value>>,
    after: Option<Vec<wit::Value>>,
) -> wit::Change {
    wit::Change {
        table,
        op: op(ev.op),
        key: ev.key.iter().map(value).collect(),
        before,
        after,
        position: wit::Position {
            partition: id.partition,
            offset: id.offset,
            source: ev.source_position.clone(),
        },
        event_time_ms: ev.commit_time_ms.unwrap_or(0),
    }
}

pub(super) fn info(i: wit::PluginInfo) -> super::PluginInfo {
    super::PluginInfo {
        name: i.name,
        version: i.version,
        interface: "0.1.0",
        tables: i.tables,
        outputs: i.outputs,
        state_version: i.state_version,
        keyed_state: false,
        joins: Vec::new(),
        lookups: Vec::new(),
        aggregations: Vec::new(),
    }
}

impl sluice::transform::types::Host for HostState {}

impl sluice::transform::host::Host for HostState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        self.log_line(log_level(level), &message);
    }
}
