//! Stateful operators: what aggregations compute and how their state
//! changes, apart from where that state is stored (the sink commits it with
//! the batch's rows and offsets) and from the plugins that declare them.

pub mod accumulate;
pub mod aggregate;
pub mod codec;
pub mod session;
pub mod spec;
pub mod watermark;
pub mod window;

use crate::model::Value;

/// Where one row image counts, as the plugin's `project` said.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    pub group: Vec<Value>,
    /// `None` for commit-time aggregations.
    pub event_time: Option<Value>,
    /// One per measure, in declaration order.
    pub args: Vec<Value>,
}

/// Rows to fold into one custom aggregate state, with their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct StateUpdate {
    /// `None`: a fresh state.
    pub state: Option<Vec<u8>>,
    pub rows: Vec<(Value, i64)>,
}
