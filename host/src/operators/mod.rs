//! Stateful operators: what aggregations compute and how their state
//! changes, apart from where that state is stored (the sink commits it with
//! the batch's rows and offsets) and from the plugins that declare them.

pub mod accumulate;
pub mod aggregate;
pub mod codec;
pub mod join;
pub mod keyed;
pub mod lookup;
pub mod session;
pub mod spec;
pub mod table;
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

/// The plugin's side of custom aggregates (`aggregate-apply/merge/finish`
/// for one aggregation), as the operator calls it inside the commit. `Err`
/// carries the plugin's refusal or a trap.
pub trait CustomCalls: Send {
    /// Fold `rows` (value, weight) into `state` (`None`: a fresh state).
    fn apply(
        &mut self,
        measure: u32,
        state: Option<&[u8]>,
        rows: &[(Value, i64)],
    ) -> Result<Vec<u8>, String>;
    /// One state from several partitions' states.
    fn merge(&mut self, measure: u32, parts: &[Vec<u8>]) -> Result<Vec<u8>, String>;
    /// The output value of a state.
    fn finish(&mut self, measure: u32, state: &[u8]) -> Result<Value, String>;
}

/// For aggregations without custom measures.
pub struct NoCustom;

impl CustomCalls for NoCustom {
    fn apply(&mut self, _: u32, _: Option<&[u8]>, _: &[(Value, i64)]) -> Result<Vec<u8>, String> {
        Err("this aggregation has no custom aggregate".into())
    }

    fn merge(&mut self, _: u32, _: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        Err("this aggregation has no custom aggregate".into())
    }

    fn finish(&mut self, _: u32, _: &[u8]) -> Result<Value, String> {
        Err("this aggregation has no custom aggregate".into())
    }
}
