//! `sluice:transform@0.3.0` (`wit/transform.wit`): 0.2 plus joins and
//! lookups.

use crate::model;
use crate::operators::join::spec::{IntervalSpec, JoinColumn, JoinSideSpec, JoinSpec};
use crate::operators::join::{JoinKind, Side};
use crate::operators::spec::{
    AggregateFn, AggregationSpec, EmitMode, EventTimeSpec, LatePolicy, MeasureSpec, Semantics,
    WindowSpec,
};
use crate::operators::Projection;
use crate::plugin::bindings::ChangeOutcome;
use crate::plugin::runtime::HostState;

wasmtime::component::bindgen!({
    world: "transform",
    path: "../wit",
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
    let joins = i
        .joins
        .into_iter()
        .map(|j| {
            let spec = join(j)?;
            spec.check().map(|()| spec)
        })
        .collect::<Result<Vec<_>, String>>()?;
    if !i.lookups.is_empty() && i.keyed_state {
        return Err(format!(
            "declares lookups ({}) and keyed state: a plugin may have one or the other for now",
            i.lookups.join(", ")
        ));
    }
    Ok(super::PluginInfo {
        name: i.name,
        version: i.version,
        interface: "0.3.0",
        tables: i.tables,
        outputs: i.outputs,
        state_version: i.state_version,
        aggregations,
        keyed_state: i.keyed_state,
        joins,
        lookups: i.lookups,
    })
}

fn join(j: wit::Join) -> Result<JoinSpec, String> {
    let side_spec = |s: wit::JoinSide| JoinSideSpec {
        table: s.table,
        on: s.on,
    };
    Ok(JoinSpec {
        name: j.name,
        kind: match j.kind {
            wit::JoinKind::Inner => JoinKind::Inner,
            wit::JoinKind::Left => JoinKind::Left,
        },
        left: side_spec(j.left),
        right: side_spec(j.right),
        columns: j
            .columns
            .into_iter()
            .map(|c| JoinColumn {
                name: c.name,
                side: match c.side {
                    wit::Side::Left => Side::Left,
                    wit::Side::Right => Side::Right,
                },
                column: c.column,
                ty: model_column_type(c.ty),
                nullable: c.nullable,
                decimal: c.decimal.map(|d| model::DecimalParams {
                    precision: d.precision,
                    scale: d.scale,
                }),
            })
            .collect(),
        key: j.key,
        output: j.output,
        interval: j.interval.map(|i| IntervalSpec {
            left_time: i.left_time,
            right_time: i.right_time,
            before: i.before_us,
            after: i.after_us,
            out_of_orderness: i.out_of_orderness_us,
            late: match i.late {
                wit::LatePolicy::Apply => LatePolicy::Apply,
                wit::LatePolicy::DeadLetter => LatePolicy::DeadLetter,
            },
        }),
    })
}

impl sluice::transform::types::Host for HostState {}

impl sluice::transform::host::Host for HostState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        self.log_line(log_level(level), &message);
    }

    fn lookup(
        &mut self,
        table: String,
        key: Vec<wit::Value>,
    ) -> Result<Option<sluice::transform::host::FoundRow>, String> {
        let Some(access) = &self.lookups else {
            return Err(format!(
                "`{table}` is not among this plugin's lookups (it declares none)"
            ));
        };
        let key: Vec<model::Value> = key.into_iter().map(model_value).collect();
        Ok(access
            .find(&table, &key)?
            .map(|image| sluice::transform::host::FoundRow {
                columns: image.columns.iter().map(column).collect(),
                values: image.values.iter().map(value).collect(),
            }))
    }
}
