//! Conversions of the stateful part of the interface (0.2 on): change
//! records with their commit time, aggregation declarations, `project`,
//! custom aggregate states and keyed state. Expanded by each version module
//! from 0.2 on, after `model_conversions!`, like it.

macro_rules! stateful_conversions {
    () => {
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
                commit_time_ms: ev.commit_time_ms,
            }
        }

        fn aggregation(a: wit::Aggregation) -> AggregationSpec {
            AggregationSpec {
                source: a.source,
                output: a.output,
                group_by: a.group_by,
                window: match a.window {
                    wit::Window::Global => WindowSpec::Global,
                    wit::Window::Tumbling(t) => WindowSpec::Tumbling {
                        size: t.size_us,
                        offset: t.offset_us,
                    },
                    wit::Window::Hopping(h) => WindowSpec::Hopping {
                        size: h.size_us,
                        slide: h.slide_us,
                        offset: h.offset_us,
                    },
                    wit::Window::Session(s) => WindowSpec::Session { gap: s.gap_us },
                },
                window_columns: a.window_columns,
                event_time: match a.event_time {
                    wit::EventTime::Column(c) => EventTimeSpec::Column(c),
                    wit::EventTime::CommitTime => EventTimeSpec::CommitTime,
                },
                measures: a
                    .measures
                    .into_iter()
                    .map(|m| MeasureSpec {
                        name: m.name,
                        function: match m.function {
                            wit::AggregateFn::CountRows => AggregateFn::CountRows,
                            wit::AggregateFn::Count => AggregateFn::Count,
                            wit::AggregateFn::Sum => AggregateFn::Sum,
                            wit::AggregateFn::Avg => AggregateFn::Avg,
                            wit::AggregateFn::Min => AggregateFn::Min,
                            wit::AggregateFn::Max => AggregateFn::Max,
                            wit::AggregateFn::Custom => AggregateFn::Custom,
                        },
                        column: m.column,
                        output_type: m.output_type.map(model_column_type),
                    })
                    .collect(),
                out_of_orderness: a.out_of_orderness_us,
                allowed_lateness: a.allowed_lateness_us,
                emit: match a.emit {
                    wit::EmitMode::Update => EmitMode::Update,
                    wit::EmitMode::Final => EmitMode::Final,
                },
                late: match a.late {
                    wit::LatePolicy::Apply => LatePolicy::Apply,
                    wit::LatePolicy::DeadLetter => LatePolicy::DeadLetter,
                },
                semantics: match a.semantics {
                    wit::Semantics::Changelog => Semantics::Changelog,
                    wit::Semantics::Append => Semantics::Append,
                },
            }
        }

        /// Arguments of a `project` call.
        pub(super) fn project_args(
            source: &model::TableDesc,
            rows: &[&[model::Value]],
        ) -> (wit::Table, Vec<Vec<wit::Value>>) {
            (
                table(source),
                rows.iter().map(|r| r.iter().map(value).collect()).collect(),
            )
        }

        /// A `project` answer; the outer error is a broken answer (wrong length).
        pub(super) fn projections(
            answer: Vec<Result<Option<wit::Projection>, String>>,
            expected: usize,
        ) -> Result<Vec<Result<Option<Projection>, String>>, String> {
            if answer.len() != expected {
                return Err(format!(
                    "plugin projected {} rows for {expected}",
                    answer.len()
                ));
            }
            Ok(answer
                .into_iter()
                .map(|r| {
                    r.map(|p| {
                        p.map(|p| Projection {
                            group: p.group.into_iter().map(model_value).collect(),
                            event_time: p.event_time.map(model_value),
                            args: p.args.into_iter().map(model_value).collect(),
                        })
                    })
                })
                .collect())
        }

        /// Arguments of an `aggregate-apply` call: (state, rows with weights) per group.
        pub(super) fn state_updates(
            updates: &[crate::operators::StateUpdate],
        ) -> Vec<wit::StateUpdate> {
            updates
                .iter()
                .map(|u| wit::StateUpdate {
                    state: u.state.clone(),
                    rows: u.rows.iter().map(|(v, w)| (value(v), *w)).collect(),
                })
                .collect()
        }

        /// The `states` argument of `process-keyed`.
        pub(super) fn row_states(states: &[(u32, Vec<u8>)]) -> Vec<wit::RowState> {
            states
                .iter()
                .map(|(change, state)| wit::RowState {
                    change: *change,
                    state: state.clone(),
                })
                .collect()
        }

        /// A `process-keyed` answer; the outer error is a broken answer.
        pub(super) fn from_keyed(
            r: wit::KeyedResult,
            expected: usize,
        ) -> Result<super::KeyedAnswer, String> {
            let outcomes = from_result(r.outputs, expected)?;
            let states = r
                .states
                .into_iter()
                .map(|w| {
                    if (w.change as usize) < expected {
                        Ok((w.change, w.state))
                    } else {
                        Err(format!(
                            "plugin wrote the state of change #{} of {expected}",
                            w.change
                        ))
                    }
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok((outcomes, states))
        }

        pub(super) fn finished(values: Vec<wit::Value>) -> Vec<model::Value> {
            values.into_iter().map(model_value).collect()
        }
    };
}
