//! The sink table an aggregation writes and its rows: window bounds typed
//! like the event time, group columns, measures.

use super::*;

/// The sink write for a group: its row, or a delete when it is empty.
/// `Err`: a custom aggregate failed to merge or finish.
pub(super) fn output_row(
    spec: &AggregationSpec,
    table: &Arc<SinkTable>,
    g: &GroupState,
    calls: &mut dyn CustomCalls,
) -> Result<SinkWrite, String> {
    if matches!(spec.window, WindowSpec::Session { .. }) {
        // Sessions: group columns, then the bounds; key (group, start).
        let (start, end) = g.bounds.clone().unwrap_or((Value::Null, Value::Null));
        let mut key = g.group.clone();
        key.push(start.clone());
        if g.acc.rows <= 0 {
            return Ok(SinkWrite::Delete {
                table: table.clone(),
                key,
            });
        }
        let mut values = g.group.clone();
        values.push(start);
        values.push(end);
        values.extend(g.acc.finish(&spec.measures, calls)?);
        return Ok(SinkWrite::Upsert {
            table: table.clone(),
            values,
        });
    }
    let windowed = spec.window != WindowSpec::Global;
    let mut key = Vec::new();
    if windowed {
        if let Some((s, _)) = &g.bounds {
            key.push(s.clone());
        }
    }
    key.extend(g.group.iter().cloned());
    if g.acc.rows <= 0 {
        return Ok(SinkWrite::Delete {
            table: table.clone(),
            key,
        });
    }
    let mut values = Vec::with_capacity(table.columns.len());
    if windowed {
        if let Some((s, e)) = &g.bounds {
            values.push(s.clone());
            values.push(e.clone());
        }
    }
    values.extend(g.group.iter().cloned());
    values.extend(g.acc.finish(&spec.measures, calls)?);
    Ok(SinkWrite::Upsert {
        table: table.clone(),
        values,
    })
}

/// The sink table of an aggregation: window bounds (typed like the event
/// time), group columns, measures; key (window start, group columns).
/// Types come from the source table's columns where the declaration names
/// them, else from the projected values.
pub fn output_table(
    spec: &AggregationSpec,
    source: &crate::model::TableDesc,
    p: Option<&Projection>,
) -> SinkTable {
    use crate::model::{Column, ColumnType, DecimalParams};
    use crate::operators::spec::AggregateFn;
    const DAY: i64 = 86_400_000_000;
    let source_column = |name: &str| source.columns.iter().find(|c| c.name == name);
    let typed = |name: Option<&str>, v: Option<&Value>| -> (ColumnType, Option<DecimalParams>) {
        match name.and_then(source_column) {
            Some(c) => (c.ty, c.decimal),
            None => (v.map_or(ColumnType::Unknown, Value::natural_type), None),
        }
    };
    let col = |name: &str, ty: ColumnType, decimal: Option<DecimalParams>, nullable: bool| Column {
        name: name.to_string(),
        ty,
        nullable,
        decimal,
    };
    let mut columns = Vec::new();
    let mut key = Vec::new();
    let session = matches!(spec.window, WindowSpec::Session { .. });
    if session {
        for (i, g) in spec.group_by.iter().enumerate() {
            let (ty, decimal) = typed(Some(g), p.and_then(|p| p.group.get(i)));
            key.push(columns.len() as u32);
            columns.push(col(g, ty, decimal, false));
        }
    }
    if spec.window != WindowSpec::Global {
        let ty = match &spec.event_time {
            EventTimeSpec::CommitTime => ColumnType::Timestamp,
            EventTimeSpec::Column(c) => {
                let (ty, _) = typed(Some(c), p.and_then(|p| p.event_time.as_ref()));
                let whole_days = match spec.window {
                    WindowSpec::Tumbling { size, offset } => size % DAY == 0 && offset % DAY == 0,
                    WindowSpec::Hopping {
                        size,
                        slide,
                        offset,
                    } => size % DAY == 0 && slide % DAY == 0 && offset % DAY == 0,
                    _ => false,
                };
                match ty {
                    ColumnType::Date if whole_days => ColumnType::Date,
                    ColumnType::Date => ColumnType::LocalTimestamp,
                    other => other,
                }
            }
        };
        key.push(columns.len() as u32);
        columns.push(col(&spec.window_columns.0, ty, None, false));
        columns.push(col(&spec.window_columns.1, ty, None, false));
    }
    for (i, g) in spec.group_by.iter().enumerate().filter(|_| !session) {
        let (ty, decimal) = typed(Some(g), p.and_then(|p| p.group.get(i)));
        key.push(columns.len() as u32);
        columns.push(col(g, ty, decimal, false));
    }
    for (i, m) in spec.measures.iter().enumerate() {
        let (arg_ty, arg_dec) = typed(m.column.as_deref(), p.and_then(|p| p.args.get(i)));
        let unbounded = |d: Option<DecimalParams>, extra: u32| {
            Some(DecimalParams {
                precision: None,
                scale: d.and_then(|d| d.scale).map(|s| s + extra),
            })
        };
        let (ty, decimal, nullable) = match m.function {
            AggregateFn::CountRows | AggregateFn::Count => (ColumnType::Int, None, false),
            AggregateFn::Sum => match arg_ty {
                ColumnType::Decimal => (ColumnType::Decimal, unbounded(arg_dec, 0), true),
                other => (other, None, true),
            },
            AggregateFn::Avg => match arg_ty {
                ColumnType::Decimal => (ColumnType::Decimal, unbounded(arg_dec, 6), true),
                _ => (ColumnType::Float, None, true),
            },
            AggregateFn::Min | AggregateFn::Max => (arg_ty, arg_dec, true),
            AggregateFn::Custom => (m.output_type.unwrap_or(ColumnType::Unknown), None, true),
        };
        columns.push(col(&m.name, ty, decimal, nullable));
    }
    SinkTable {
        name: spec.output.clone(),
        columns,
        key,
        // a group's row changes with each change of its rows
        rewritten: true,
    }
}
