//! What a plugin declares about an aggregation, in host terms and checked:
//! the WIT record (`aggregation` in `wit/transform.wit`) converted once at
//! load, so operators never see generated types or unchecked numbers.

use crate::model::ColumnType;

/// How rows are grouped in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// One running result per group.
    Global,
    /// `[offset + k*size, offset + (k+1)*size)`, in µs.
    Tumbling { size: i64, offset: i64 },
    /// Windows of `size` starting every `slide` (µs).
    Hopping { size: i64, slide: i64, offset: i64 },
    /// Rows less than `gap` µs apart share a session.
    Session { gap: i64 },
}

/// Where a row's event time comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventTimeSpec {
    /// A column of the row; the projection returns its value.
    Column(String),
    /// The source commit time.
    CommitTime,
}

/// A built-in or custom aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateFn {
    CountRows,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Custom,
}

/// One output column computed over a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasureSpec {
    pub name: String,
    pub function: AggregateFn,
    /// Source column of the argument, when it is one.
    pub column: Option<String>,
    /// Output type of a custom aggregate.
    pub output_type: Option<ColumnType>,
}

/// When group rows reach the sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitMode {
    Update,
    Final,
}

/// What happens to an event for a window that already closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatePolicy {
    Apply,
    DeadLetter,
}

/// What a change event contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Semantics {
    /// The current rows of the source table (retract, then add).
    Changelog,
    /// Every event with an `after` row, once, at its commit time.
    Append,
}

/// An aggregation a plugin declared, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregationSpec {
    /// Source table name or full topic.
    pub source: String,
    pub output: String,
    pub group_by: Vec<String>,
    pub window: WindowSpec,
    pub window_columns: (String, String),
    pub event_time: EventTimeSpec,
    pub measures: Vec<MeasureSpec>,
    /// µs.
    pub out_of_orderness: i64,
    /// µs.
    pub allowed_lateness: i64,
    pub emit: EmitMode,
    pub late: LatePolicy,
    pub semantics: Semantics,
}

impl AggregationSpec {
    /// Whether this aggregation reads the given source table.
    pub fn reads(&self, topic: &str, table: &str) -> bool {
        self.source == table || self.source == topic
    }

    /// Refuse declarations the operators cannot run, naming what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let output = &self.output;
        if self.source.trim().is_empty() {
            return Err(format!("aggregation into `{output}` names no source table"));
        }
        if output.trim().is_empty() {
            return Err(format!(
                "an aggregation of `{}` names no output table",
                self.source
            ));
        }
        if output.starts_with("sluice_") {
            return Err(format!(
                "output table name `{output}` is reserved for Sluice's bookkeeping"
            ));
        }
        let positive = |what: &str, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err(format!(
                    "aggregation `{output}`: {what} must be positive, not {v} µs"
                ))
            }
        };
        match self.window {
            WindowSpec::Global => {
                if self.emit == EmitMode::Final {
                    return Err(format!(
                        "aggregation `{output}`: `final` emission needs a window that ends"
                    ));
                }
            }
            WindowSpec::Tumbling { size, .. } => positive("the window size", size)?,
            WindowSpec::Hopping { size, slide, .. } => {
                positive("the window size", size)?;
                positive("the slide", slide)?;
                if slide > size {
                    return Err(format!(
                        "aggregation `{output}`: a slide ({slide} µs) longer than the window ({size} µs) leaves rows in no window"
                    ));
                }
                if size / slide > 1000 {
                    return Err(format!(
                        "aggregation `{output}`: {} windows per row is too many (size / slide must be at most 1000)",
                        size / slide
                    ));
                }
            }
            WindowSpec::Session { gap } => {
                positive("the session gap", gap)?;
                if self.emit == EmitMode::Final {
                    return Err(format!(
                        "aggregation `{output}`: session windows are emitted in `update` mode (a session can still merge with a later one)"
                    ));
                }
            }
        }
        if self.out_of_orderness < 0 || self.allowed_lateness < 0 {
            return Err(format!(
                "aggregation `{output}`: out-of-orderness and allowed lateness cannot be negative"
            ));
        }
        if self.semantics == Semantics::Append && self.event_time != EventTimeSpec::CommitTime {
            return Err(format!(
                "aggregation `{output}`: append semantics count each event at its commit time; declare `commit-time` as the event time"
            ));
        }
        let mut names: Vec<&str> = self.group_by.iter().map(String::as_str).collect();
        if self.window != WindowSpec::Global {
            names.push(&self.window_columns.0);
            names.push(&self.window_columns.1);
        }
        names.extend(self.measures.iter().map(|m| m.name.as_str()));
        for (i, n) in names.iter().enumerate() {
            if n.trim().is_empty() {
                return Err(format!(
                    "aggregation `{output}`: a column has an empty name"
                ));
            }
            if names[..i].contains(n) {
                return Err(format!(
                    "aggregation `{output}`: column `{n}` is declared twice"
                ));
            }
        }
        if self.group_by.is_empty() && self.window == WindowSpec::Global {
            return Err(format!(
                "aggregation `{output}`: without a window it needs at least one group column (the output table needs a key)"
            ));
        }
        if self.measures.is_empty() {
            return Err(format!("aggregation `{output}` declares no measures"));
        }
        for m in &self.measures {
            if m.function == AggregateFn::Custom
                && matches!(self.window, WindowSpec::Session { .. })
            {
                return Err(format!(
                    "aggregation `{output}`: custom measure `{}`: session windows take built-in measures only, for now",
                    m.name
                ));
            }
            let needs_arg = m.function != AggregateFn::CountRows;
            if m.function == AggregateFn::Custom && m.output_type.is_none() {
                return Err(format!(
                    "aggregation `{output}`: custom measure `{}` needs an output type",
                    m.name
                ));
            }
            if !needs_arg && m.column.is_some() {
                return Err(format!(
                    "aggregation `{output}`: `{}` counts rows and takes no column",
                    m.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn daily_orders() -> AggregationSpec {
        AggregationSpec {
            source: "orders".into(),
            output: "orders_daily".into(),
            group_by: vec!["customer_id".into()],
            window: WindowSpec::Tumbling {
                size: 86_400_000_000,
                offset: 0,
            },
            window_columns: ("window_start".into(), "window_end".into()),
            event_time: EventTimeSpec::Column("placed_at".into()),
            measures: vec![
                MeasureSpec {
                    name: "orders".into(),
                    function: AggregateFn::CountRows,
                    column: None,
                    output_type: None,
                },
                MeasureSpec {
                    name: "amount_sum".into(),
                    function: AggregateFn::Sum,
                    column: Some("amount".into()),
                    output_type: None,
                },
            ],
            out_of_orderness: 0,
            allowed_lateness: 0,
            emit: EmitMode::Update,
            late: LatePolicy::Apply,
            semantics: Semantics::Changelog,
        }
    }

    #[test]
    fn a_sound_declaration_passes() {
        assert_eq!(daily_orders().check(), Ok(()));
    }

    #[test]
    fn declarations_that_cannot_run_are_refused_with_the_reason() {
        let refused = |f: &dyn Fn(&mut AggregationSpec), why: &str| {
            let mut s = daily_orders();
            f(&mut s);
            let e = s.check().expect_err(why);
            assert!(e.contains(why), "{e}");
        };
        refused(
            &|s| s.window = WindowSpec::Tumbling { size: 0, offset: 0 },
            "must be positive",
        );
        refused(
            &|s| {
                s.window = WindowSpec::Hopping {
                    size: 10,
                    slide: 20,
                    offset: 0,
                }
            },
            "leaves rows in no window",
        );
        refused(
            &|s| s.measures[1].name = "customer_id".into(),
            "declared twice",
        );
        refused(&|s| s.output = "sluice_x".into(), "reserved");
        refused(&|s| s.semantics = Semantics::Append, "commit time");
        refused(
            &|s| {
                s.window = WindowSpec::Global;
                s.emit = EmitMode::Final
            },
            "window that ends",
        );
        refused(&|s| s.measures.clear(), "no measures");
        refused(
            &|s| s.measures[0].function = AggregateFn::Custom,
            "needs an output type",
        );
    }
}
