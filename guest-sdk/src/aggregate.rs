//! Aggregations: declare them in `describe`, and the host keeps them right.
//!
//! The host keeps each source row's last contribution, retracts it when the
//! row changes or goes away, windows rows by event time, keeps the group
//! state and commits it with the sink rows and the offsets. A plugin only
//! says what to compute; by default the SDK projects rows by the column
//! names of the declaration, so an aggregating plugin is a `describe`.
//!
//! ```no_run
//! use sluice_guest::{export_plugin, days, Aggregation, Plugin, PluginInfo};
//!
//! struct OrdersDaily;
//!
//! impl Plugin for OrdersDaily {
//!     fn describe() -> PluginInfo {
//!         sluice_guest::info("orders_daily", "1.0.0", &["orders"], &["orders_daily"]).aggregate(
//!             Aggregation::new("orders", "orders_daily")
//!                 .group_by(&["customer_id"])
//!                 .tumbling(days(1))
//!                 .event_time("placed_at")
//!                 .count_rows("orders")
//!                 .sum("amount_sum", "amount"),
//!         )
//!     }
//! }
//!
//! export_plugin!(OrdersDaily);
//! ```
//!
//! # Custom aggregates
//!
//! A measure declared with [`Aggregation::custom`] is computed by your code:
//! implement [`Aggregate`] and return it from
//! [`Plugin::custom_aggregate`](crate::Plugin::custom_aggregate). The host
//! keeps the state bytes, calls `apply` with weight +1 for a row that joins
//! the group and -1 for one that leaves (so the state must be able to
//! forget), keeps one state per source partition and `merge`s them for the
//! output. A complete plugin (`tests/guests/distinct`, run by the tests):
//!
#![doc = concat!("```no_run\n", include_str!("../../tests/guests/distinct/src/lib.rs"), "```")]

use std::collections::BTreeMap;

use crate::view::{Row, Table};
use crate::wit;
use crate::{ColumnType, PluginInfo, Value};

pub use wit::{
    AggregateFn, Aggregation, EmitMode, EventTime, Hopping, LatePolicy, Measure, Projection,
    Semantics, Session, Tumbling, Window,
};

/// Microseconds in `n` seconds (durations in declarations are µs).
pub const fn seconds(n: i64) -> i64 {
    n * 1_000_000
}

/// Microseconds in `n` minutes.
pub const fn minutes(n: i64) -> i64 {
    seconds(n * 60)
}

/// Microseconds in `n` hours.
pub const fn hours(n: i64) -> i64 {
    minutes(n * 60)
}

/// Microseconds in `n` days.
pub const fn days(n: i64) -> i64 {
    hours(n * 24)
}

impl PluginInfo {
    /// Add an aggregation for the host to maintain.
    pub fn aggregate(mut self, aggregation: Aggregation) -> Self {
        self.aggregations.push(aggregation);
        self
    }
}

impl Aggregation {
    /// Aggregate the rows of `source` (a table name or full topic) into the
    /// sink table `output`. Defaults: no window, current-rows (changelog)
    /// semantics, update emission, late rows applied.
    pub fn new(source: &str, output: &str) -> Self {
        Aggregation {
            source: source.into(),
            output: output.into(),
            group_by: Vec::new(),
            window: Window::Global,
            window_columns: ("window_start".into(), "window_end".into()),
            event_time: EventTime::CommitTime,
            measures: Vec::new(),
            out_of_orderness_us: 0,
            allowed_lateness_us: 0,
            emit: EmitMode::Update,
            late: LatePolicy::Apply,
            semantics: Semantics::Changelog,
        }
    }

    /// Group by these columns (output columns of the same names).
    pub fn group_by(mut self, columns: &[&str]) -> Self {
        self.group_by = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Fixed windows of `size_us`, aligned to the epoch (UTC midnight for days).
    pub fn tumbling(mut self, size_us: i64) -> Self {
        self.window = Window::Tumbling(Tumbling {
            size_us,
            offset_us: 0,
        });
        self
    }

    /// Windows of `size_us` starting every `slide_us`, aligned to the epoch.
    pub fn hopping(mut self, size_us: i64, slide_us: i64) -> Self {
        self.window = Window::Hopping(Hopping {
            size_us,
            slide_us,
            offset_us: 0,
        });
        self
    }

    /// Session windows closed by a gap of `gap_us`; bound columns
    /// `session_start`, `session_end` (last row + gap).
    pub fn session(mut self, gap_us: i64) -> Self {
        self.window = Window::Session(Session { gap_us });
        self.window_columns = ("session_start".into(), "session_end".into());
        self
    }

    /// Name the window bound columns.
    pub fn window_columns(mut self, start: &str, end: &str) -> Self {
        self.window_columns = (start.into(), end.into());
        self
    }

    /// Event time from this column of the row.
    pub fn event_time(mut self, column: &str) -> Self {
        self.event_time = EventTime::Column(column.into());
        self
    }

    /// Event time = the source commit time (the default).
    pub fn commit_time(mut self) -> Self {
        self.event_time = EventTime::CommitTime;
        self
    }

    fn measure(mut self, name: &str, function: AggregateFn, column: Option<&str>) -> Self {
        self.measures.push(Measure {
            name: name.into(),
            function,
            column: column.map(str::to_string),
            output_type: None,
        });
        self
    }

    /// Rows in the group.
    pub fn count_rows(self, name: &str) -> Self {
        self.measure(name, AggregateFn::CountRows, None)
    }

    /// Non-null values of `column`.
    pub fn count(self, name: &str, column: &str) -> Self {
        self.measure(name, AggregateFn::Count, Some(column))
    }

    /// Sum of `column` (exact for integers and decimals).
    pub fn sum(self, name: &str, column: &str) -> Self {
        self.measure(name, AggregateFn::Sum, Some(column))
    }

    /// Sum of an argument your [`Plugin::project`](crate::Plugin::project)
    /// computes (say `qty * unit_price`); typed like the values it returns.
    pub fn sum_computed(self, name: &str) -> Self {
        self.measure(name, AggregateFn::Sum, None)
    }

    /// Average of the non-null values of `column`.
    pub fn avg(self, name: &str, column: &str) -> Self {
        self.measure(name, AggregateFn::Avg, Some(column))
    }

    /// Smallest non-null value of `column`.
    pub fn min(self, name: &str, column: &str) -> Self {
        self.measure(name, AggregateFn::Min, Some(column))
    }

    /// Largest non-null value of `column`.
    pub fn max(self, name: &str, column: &str) -> Self {
        self.measure(name, AggregateFn::Max, Some(column))
    }

    /// Your own aggregate over `column` (see [`Aggregate`]), output as `ty`.
    pub fn custom(mut self, name: &str, column: &str, ty: ColumnType) -> Self {
        self.measures.push(Measure {
            name: name.into(),
            function: AggregateFn::Custom,
            column: Some(column.into()),
            output_type: Some(ty),
        });
        self
    }

    /// How far out of event-time order rows may arrive (watermark delay).
    pub fn out_of_orderness(mut self, us: i64) -> Self {
        self.out_of_orderness_us = us;
        self
    }

    /// How long after the watermark passes a window's end it still takes rows.
    pub fn allowed_lateness(mut self, us: i64) -> Self {
        self.allowed_lateness_us = us;
        self
    }

    /// Write each window once, when the watermark closes it.
    pub fn emit_final(mut self) -> Self {
        self.emit = EmitMode::Final;
        self
    }

    /// Send rows for closed windows to the dead-letter queue (reason `late`)
    /// instead of correcting the window.
    pub fn dead_letter_late(mut self) -> Self {
        self.late = LatePolicy::DeadLetter;
        self
    }

    /// Count every change event once at its commit time, as Spark's
    /// append-mode aggregation of CDC events does (deletes subtract nothing).
    pub fn append(mut self) -> Self {
        self.semantics = Semantics::Append;
        self.event_time = EventTime::CommitTime;
        self
    }
}

/// Where a row counts, read by the declaration's column names: the group
/// columns, the event-time column, each measure's column (`null` for
/// `count_rows`). What [`Plugin::project`](crate::Plugin::project) does
/// unless you override it.
pub fn project_by_columns(a: &Aggregation, row: &Row<'_>) -> Result<Option<Projection>, String> {
    let group = a
        .group_by
        .iter()
        .map(|c| row.require(c).cloned())
        .collect::<Result<Vec<_>, _>>()?;
    let event_time = match &a.event_time {
        EventTime::Column(c) => Some(row.require(c)?.clone()),
        EventTime::CommitTime => None,
    };
    let args = a
        .measures
        .iter()
        .map(|m| match &m.column {
            Some(c) => row.require(c).cloned(),
            None => Ok(Value::Null),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Projection {
        group,
        event_time,
        args,
    }))
}

/// A custom aggregate over one argument, with a state the host keeps as
/// bytes. `apply` must accept negative weights (a row leaving the group).
pub trait Aggregate {
    type State;
    fn create() -> Self::State;
    /// Fold `value` into `state` `weight` times; negative weights retract.
    fn apply(state: &mut Self::State, value: &Value, weight: i64) -> Result<(), String>;
    fn merge(a: Self::State, b: Self::State) -> Self::State;
    fn finish(state: &Self::State) -> Value;
    fn encode(state: &Self::State) -> Vec<u8>;
    fn decode(bytes: &[u8]) -> Result<Self::State, String>;
}

/// An [`Aggregate`] with its type erased, as
/// [`Plugin::custom_aggregate`](crate::Plugin::custom_aggregate) returns it.
#[derive(Clone, Copy)]
pub struct CustomAggregate {
    apply: ApplyFn,
    merge: MergeFn,
    finish: fn(&[u8]) -> Result<Value, String>,
}

type ApplyFn = fn(Option<&[u8]>, &[(Value, i64)]) -> Result<Vec<u8>, String>;
type MergeFn = fn(&[Vec<u8>]) -> Result<Vec<u8>, String>;

impl CustomAggregate {
    /// Erase `A`'s type.
    pub fn of<A: Aggregate>() -> Self {
        CustomAggregate {
            apply: |state, rows| {
                let mut s = match state {
                    Some(b) => A::decode(b)?,
                    None => A::create(),
                };
                for (v, w) in rows {
                    A::apply(&mut s, v, *w)?;
                }
                Ok(A::encode(&s))
            },
            merge: |parts| {
                let mut acc = A::create();
                for p in parts {
                    acc = A::merge(acc, A::decode(p)?);
                }
                Ok(A::encode(&acc))
            },
            finish: |state| Ok(A::finish(&A::decode(state)?)),
        }
    }
}

/// Encode a map of counts (a multiset), for custom aggregate states.
pub fn encode_counts(counts: &BTreeMap<String, i64>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, n) in counts {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

/// Decode what [`encode_counts`] wrote.
pub fn decode_counts(mut bytes: &[u8]) -> Result<BTreeMap<String, i64>, String> {
    let mut out = BTreeMap::new();
    let bad = || "corrupt multiset state".to_string();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(
            bytes
                .get(..4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let key = bytes.get(4..4 + len).ok_or_else(bad)?;
        let n = bytes.get(4 + len..12 + len).ok_or_else(bad)?;
        out.insert(
            String::from_utf8(key.to_vec()).map_err(|_| bad())?,
            i64::from_le_bytes(n.try_into().map_err(|_| bad())?),
        );
        bytes = &bytes[12 + len..];
    }
    Ok(out)
}

/// The plugin's declaration, read once per instance.
fn declared<P: crate::Plugin>() -> &'static PluginInfo {
    static INFO: std::sync::OnceLock<PluginInfo> = std::sync::OnceLock::new();
    INFO.get_or_init(P::describe)
}

fn aggregation_of<P: crate::Plugin>(index: u32) -> Result<&'static Aggregation, String> {
    declared::<P>()
        .aggregations
        .get(index as usize)
        .ok_or_else(|| {
            format!("the host asked for aggregation #{index}, which this plugin does not declare")
        })
}

/// Runs `P::project` over rows; used by [`export_plugin!`](crate::export_plugin).
#[doc(hidden)]
pub fn run_project<P: crate::Plugin>(
    index: u32,
    table: wit::Table,
    rows: Vec<Vec<Value>>,
) -> Vec<Result<Option<Projection>, String>> {
    let aggregation = match aggregation_of::<P>(index) {
        Ok(a) => a,
        Err(e) => return rows.iter().map(|_| Err(e.clone())).collect(),
    };
    let table = Table::new(&table);
    rows.iter()
        .map(|values| P::project(index, aggregation, &Row::new(&table, values)))
        .collect()
}

fn custom_of<P: crate::Plugin>(index: u32, measure: u32) -> Result<CustomAggregate, String> {
    let a = aggregation_of::<P>(index)?;
    let m = a
        .measures
        .get(measure as usize)
        .ok_or_else(|| format!("aggregation `{}` has no measure #{measure}", a.output))?;
    P::custom_aggregate(&m.name).ok_or_else(|| {
        format!(
            "custom measure `{}` has no implementation (Plugin::custom_aggregate)",
            m.name
        )
    })
}

/// Used by [`export_plugin!`](crate::export_plugin).
#[doc(hidden)]
pub fn run_apply<P: crate::Plugin>(
    index: u32,
    measure: u32,
    updates: Vec<wit::StateUpdate>,
) -> Vec<Result<Vec<u8>, String>> {
    match custom_of::<P>(index, measure) {
        Ok(f) => updates
            .iter()
            .map(|u| (f.apply)(u.state.as_deref(), &u.rows))
            .collect(),
        Err(e) => updates.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Used by [`export_plugin!`](crate::export_plugin). A state that cannot be
/// merged or finished is a broken state: the call traps.
#[doc(hidden)]
pub fn run_merge<P: crate::Plugin>(
    index: u32,
    measure: u32,
    groups: Vec<Vec<Vec<u8>>>,
) -> Vec<Vec<u8>> {
    let f = custom_of::<P>(index, measure).unwrap_or_else(|e| panic!("{e}"));
    groups
        .iter()
        .map(|g| (f.merge)(g).unwrap_or_else(|e| panic!("merging states: {e}")))
        .collect()
}

/// Used by [`export_plugin!`](crate::export_plugin).
#[doc(hidden)]
pub fn run_finish<P: crate::Plugin>(index: u32, measure: u32, states: Vec<Vec<u8>>) -> Vec<Value> {
    let f = custom_of::<P>(index, measure).unwrap_or_else(|e| panic!("{e}"));
    states
        .iter()
        .map(|s| (f.finish)(s).unwrap_or_else(|e| panic!("finishing a state: {e}")))
        .collect()
}
