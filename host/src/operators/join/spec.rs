//! What a plugin declares about a join, in host terms and checked, and the
//! two conversions around the operator: a change event of either table into
//! a `JoinInput` (the join columns and the columns the output keeps), and
//! the operator's deltas into sink writes of the declared output table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{join_key, JoinChange, JoinDelta, JoinInput, JoinKind, LiveRow, Side, SideRow};
use crate::model::{
    ChangeEvent, Column, ColumnType, DecimalParams, Op, SinkTable, SinkWrite, Value,
};
use crate::operators::codec::row_identity;
use crate::operators::spec::LatePolicy;
use crate::operators::table::{declares, StoredRow};

/// µs of an event time, or why the value cannot be one.
fn micros(v: &Value) -> Result<i64, String> {
    match v {
        Value::Timestamp(t) | Value::LocalTimestamp(t) => Ok(*t),
        Value::Date(d) => Ok(i64::from(*d) * 86_400_000_000),
        Value::Null => Err("the event time is null".into()),
        other => Err(format!(
            "the event time must be a timestamp, local-timestamp or date, not {}",
            other.natural_type().as_str()
        )),
    }
}

/// One table of a join: which rows (a table name or a full topic) and the
/// columns they are joined on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinSideSpec {
    pub table: String,
    pub on: Vec<String>,
}

/// An output column: a column of one side, under its output name, with
/// its declared type (a left join may write rows before the right table,
/// or its schema, was ever seen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinColumn {
    pub name: String,
    pub side: Side,
    pub column: String,
    pub ty: ColumnType,
    pub nullable: bool,
    pub decimal: Option<DecimalParams>,
}

/// An interval join's time bound: a left row (time `l`) and a right row
/// (time `r`) match only when `l - before <= r <= l + after`, so each row's
/// state can go once the watermark passes the last time a partner could
/// still have (`l + after` for a left row, `r + before` for a right one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntervalSpec {
    pub left_time: String,
    pub right_time: String,
    /// µs.
    pub before: i64,
    pub after: i64,
    /// How far behind its partition's newest event time a row may arrive.
    pub out_of_orderness: i64,
    /// What happens to a row whose partners' state may be gone already.
    pub late: LatePolicy,
}

impl IntervalSpec {
    /// Whether rows at these times match.
    pub fn fits(&self, left: i64, right: i64) -> bool {
        left.saturating_sub(self.before) <= right && right <= left.saturating_add(self.after)
    }

    /// The event time after which a row of `side` at `t` can gain no
    /// partner that is not late (its state expires then).
    pub fn expiry(&self, side: Side, t: i64) -> i64 {
        match side {
            Side::Left => t.saturating_add(self.after),
            Side::Right => t.saturating_add(self.before),
        }
    }

    fn time_column(&self, side: Side) -> &str {
        match side {
            Side::Left => &self.left_time,
            Side::Right => &self.right_time,
        }
    }
}

/// A join a plugin declared, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinSpec {
    /// Names the join's state and its result (aggregations read the result
    /// under this name).
    pub name: String,
    pub kind: JoinKind,
    pub left: JoinSideSpec,
    pub right: JoinSideSpec,
    /// The joined row, column by column.
    pub columns: Vec<JoinColumn>,
    /// Key columns of the joined row (names among `columns`).
    pub key: Vec<String>,
    /// The sink table the joined rows go to; `None` when only aggregations
    /// read them.
    pub output: Option<String>,
    /// `None`: a regular join of both tables' current rows.
    pub interval: Option<IntervalSpec>,
}

impl JoinSpec {
    /// Which sides a change of this table feeds (a self-join feeds both).
    pub fn sides_of(&self, topic: &str, table: &str) -> Vec<Side> {
        let reads = |s: &JoinSideSpec| declares(&s.table, topic, table);
        [(Side::Left, &self.left), (Side::Right, &self.right)]
            .into_iter()
            .filter(|(_, s)| reads(s))
            .map(|(side, _)| side)
            .collect()
    }

    /// Refuse declarations the operator cannot run, naming what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if name.trim().is_empty() {
            return Err("a join has no name".into());
        }
        for (what, side) in [("left", &self.left), ("right", &self.right)] {
            if side.table.trim().is_empty() {
                return Err(format!("join `{name}`: the {what} side names no table"));
            }
        }
        if self.left.on.is_empty() || self.left.on.len() != self.right.on.len() {
            return Err(format!(
                "join `{name}`: {} left and {} right join columns (one or more, as many on each side)",
                self.left.on.len(),
                self.right.on.len()
            ));
        }
        if self.columns.is_empty() {
            return Err(format!("join `{name}` declares no output columns"));
        }
        let mut seen = HashSet::new();
        for c in &self.columns {
            if !seen.insert(c.name.as_str()) {
                return Err(format!("join `{name}`: output column `{}` twice", c.name));
            }
            if c.ty == ColumnType::Unknown {
                return Err(format!(
                    "join `{name}`: output column `{}` has no type",
                    c.name
                ));
            }
        }
        if self.key.is_empty() {
            return Err(format!("join `{name}` declares no key columns"));
        }
        for k in &self.key {
            let Some(c) = self.columns.iter().find(|c| c.name == *k) else {
                return Err(format!(
                    "join `{name}`: key column `{k}` is not an output column"
                ));
            };
            if self.kind == JoinKind::Left && c.side == Side::Right {
                return Err(format!(
                    "join `{name}`: key column `{k}` comes from the right side, which a left join may leave null"
                ));
            }
        }
        if let Some(i) = &self.interval {
            if self.kind != JoinKind::Inner {
                return Err(format!(
                    "join `{name}`: interval joins are inner joins for now (a left interval join is not supported yet)"
                ));
            }
            if i.before < 0 || i.after < 0 || i.out_of_orderness < 0 {
                return Err(format!(
                    "join `{name}`: the interval's before, after and out-of-orderness must not be negative"
                ));
            }
            if i.left_time.trim().is_empty() || i.right_time.trim().is_empty() {
                return Err(format!(
                    "join `{name}`: an interval join names an event-time column on each side"
                ));
            }
        }
        Ok(())
    }

    /// The joined rows as a table: the output table (or, without one, the
    /// rows aggregations read under the join's name). Call after `check`.
    pub fn joined_table(&self) -> SinkTable {
        let columns: Vec<Column> = self
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                ty: c.ty,
                // a left join's right side is null where nothing matches
                nullable: c.nullable || (self.kind == JoinKind::Left && c.side == Side::Right),
                decimal: c.decimal,
            })
            .collect();
        let key = self
            .key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| c.name == *k))
            .map(|i| i as u32)
            .collect();
        SinkTable {
            name: self.output.clone().unwrap_or_else(|| self.name.clone()),
            columns,
            key,
            rewritten: false,
        }
    }

    /// Output column positions per side, in output order.
    fn kept(&self, side: Side) -> impl Iterator<Item = &JoinColumn> {
        self.columns.iter().filter(move |c| c.side == side)
    }

    /// The join columns' values, the kept columns' values and (interval
    /// joins) the event time of a row image of `side`. A column the image
    /// lacks is an error when `strict`, a null otherwise.
    fn row_of(
        &self,
        side: Side,
        columns: &[Column],
        values: &[Value],
        strict: bool,
    ) -> Result<JoinChange, String> {
        let column = |name: &str| -> Result<Value, String> {
            match columns.iter().position(|c| c.name == name) {
                Some(i) => Ok(values.get(i).cloned().unwrap_or(Value::Null)),
                None if strict => Err(format!("join `{}`: no column `{name}`", self.name)),
                None => Ok(Value::Null),
            }
        };
        let spec = match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        };
        let time = match &self.interval {
            None => None,
            Some(i) => {
                let name = i.time_column(side);
                let t = micros(&column(name)?)
                    .map_err(|e| format!("interval join `{}`: column `{name}`: {e}", self.name))?;
                Some(t)
            }
        };
        Ok(JoinChange::Row {
            on: spec
                .on
                .iter()
                .map(|c| column(c))
                .collect::<Result<_, _>>()?,
            values: self
                .kept(side)
                .map(|c| column(&c.column))
                .collect::<Result<_, _>>()?,
            time,
        })
    }

    /// What a change of `side` means to the join: its join-column values
    /// and the columns the output keeps, or a delete. `Err` says why it
    /// cannot be applied (it goes to the dead-letter queue). A regular
    /// join's rows are the stored table's (`operators::table`), so it
    /// refuses what a stored table refuses: keyless rows, over-long keys.
    pub fn input(&self, side: Side, ev: &ChangeEvent) -> Result<JoinInput, String> {
        let change = match (ev.op, &ev.after) {
            (Op::Truncate, _) => {
                return Err(format!(
                    "TRUNCATE of {} cannot be applied to join `{}` yet; the join keeps the table's rows",
                    ev.table.topic, self.name
                ))
            }
            (Op::Delete, _) => JoinChange::Delete,
            (_, Some(after)) => self
                .row_of(side, &ev.table.columns, after, true)
                .map_err(|e| format!("{e} in table {}", ev.table.topic))?,
            (op, None) => return Err(format!("{op:?} event without an `after` row")),
        };
        if ev.key.is_empty() {
            return Err(format!(
                "join `{}`: the event of {} has no primary key",
                self.name, ev.table.topic
            ));
        }
        let row_key = row_identity(&ev.table.topic, &ev.key);
        if row_key.len() > crate::operators::codec::MAX_KEY {
            return Err(format!(
                "join `{}`: the primary key of {} takes {} bytes encoded, more than the {} its state keeps",
                self.name,
                ev.table.topic,
                row_key.len(),
                crate::operators::codec::MAX_KEY
            ));
        }
        Ok(JoinInput {
            side,
            row_key,
            order: ev.source_order,
            change,
        })
    }

    /// A stored table's row as `side` of this (regular) join sees it: its
    /// position, and its join key and kept values unless deleted. Columns
    /// the image lacks read as nulls (the change that stored it was refused
    /// by the join, not by the table).
    pub fn side_row(&self, side: Side, row: &StoredRow) -> SideRow {
        let live = match self.stored_input(side, &[], row).map(|i| i.change) {
            Some(JoinChange::Row { on, values, time }) => Some(LiveRow {
                on: join_key(&on),
                values,
                time,
            }),
            _ => None,
        };
        SideRow {
            order: row.order,
            live,
        }
    }

    /// A live stored row as an input of `side` that adds it (a join that
    /// starts over tables already stored adds their rows).
    pub fn stored_input(&self, side: Side, row_key: &[u8], row: &StoredRow) -> Option<JoinInput> {
        let image = row.image.as_ref()?;
        let change = self
            .row_of(side, &image.columns, &image.values, false)
            .ok()?;
        Some(JoinInput {
            side,
            row_key: row_key.to_vec(),
            order: row.order,
            change,
        })
    }

    /// The joined row of a delta, in output column order (nulls for a
    /// missing right side).
    pub fn joined_row(&self, left: &[Value], right: Option<&[Value]>) -> Vec<Value> {
        let (mut l, mut r) = (left.iter(), right.map(|r| r.iter()));
        self.columns
            .iter()
            .map(|c| match c.side {
                Side::Left => l.next().cloned().unwrap_or(Value::Null),
                Side::Right => r
                    .as_mut()
                    .and_then(|r| r.next().cloned())
                    .unwrap_or(Value::Null),
            })
            .collect()
    }

    /// The sink writes of a batch's deltas: the last change of each output
    /// key wins (an upsert for an addition, a delete for a retraction),
    /// in the order keys were first touched, each with the `cause` of the
    /// delta it comes from.
    pub fn sink_writes(
        &self,
        table: &Arc<SinkTable>,
        deltas: &[JoinDelta],
    ) -> Vec<(usize, SinkWrite)> {
        let key_at: Vec<usize> = table.key.iter().map(|&k| k as usize).collect();
        let mut last: HashMap<Vec<u8>, (usize, usize, SinkWrite)> = HashMap::new();
        for d in deltas {
            let row = self.joined_row(&d.left, d.right.as_deref());
            let key: Vec<Value> = key_at.iter().map(|&i| row[i].clone()).collect();
            let write = if d.weight > 0 {
                SinkWrite::Upsert {
                    table: table.clone(),
                    values: row,
                }
            } else {
                SinkWrite::Delete {
                    table: table.clone(),
                    key: key.clone(),
                }
            };
            let id = crate::operators::codec::key(&key);
            match last.get_mut(&id) {
                Some(slot) => (slot.1, slot.2) = (d.cause, write),
                None => {
                    let first_touched = last.len();
                    last.insert(id, (first_touched, d.cause, write));
                }
            }
        }
        let mut out: Vec<(usize, usize, SinkWrite)> = last.into_values().collect();
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, cause, w)| (cause, w)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Column, ColumnType, SourceOrder, TableDesc};

    fn col(name: &str) -> Column {
        Column {
            name: name.into(),
            ty: ColumnType::Int,
            nullable: true,
            decimal: None,
        }
    }

    fn spec(kind: JoinKind) -> JoinSpec {
        let c = |name: &str, side, column: &str| JoinColumn {
            name: name.into(),
            side,
            column: column.into(),
            ty: ColumnType::Int,
            nullable: false,
            decimal: None,
        };
        JoinSpec {
            name: "orders_with_customer".into(),
            kind,
            left: JoinSideSpec {
                table: "orders".into(),
                on: vec!["customer_id".into()],
            },
            right: JoinSideSpec {
                table: "pg.public.customers".into(),
                on: vec!["id".into()],
            },
            columns: vec![
                c("order_id", Side::Left, "order_id"),
                c("customer_name", Side::Right, "name"),
                c("amount", Side::Left, "amount"),
            ],
            key: vec!["order_id".into()],
            output: Some("orders_with_customer".into()),
            interval: None,
        }
    }

    fn orders_event(op: Op, after: Option<Vec<Value>>) -> ChangeEvent {
        ChangeEvent {
            table: Arc::new(TableDesc {
                topic: "pg.public.orders".into(),
                name: "orders".into(),
                namespace: "public".into(),
                columns: vec![col("order_id"), col("customer_id"), col("amount")],
                key: vec![0],
            }),
            op,
            key: vec![Value::Int(5)],
            before: None,
            after,
            source_position: None,
            source_order: Some(SourceOrder([9, 0, 0])),
            commit_time_ms: None,
        }
    }

    #[test]
    fn a_change_becomes_the_join_columns_and_the_columns_the_output_keeps() {
        let s = spec(JoinKind::Left);
        assert_eq!(s.sides_of("pg.public.orders", "orders"), vec![Side::Left]);
        assert_eq!(
            s.sides_of("pg.public.customers", "customers"),
            vec![Side::Right]
        );
        assert!(s.sides_of("other.public.customers", "customers").is_empty());
        let ev = orders_event(
            Op::Update,
            Some(vec![Value::Int(5), Value::Int(7), Value::Int(300)]),
        );
        let input = s.input(Side::Left, &ev).unwrap();
        assert_eq!(
            input.change,
            JoinChange::Row {
                on: vec![Value::Int(7)],
                values: vec![Value::Int(5), Value::Int(300)],
                time: None,
            }
        );
        assert_eq!(
            input.row_key,
            row_identity("pg.public.orders", &[Value::Int(5)])
        );
        assert_eq!(
            s.input(Side::Left, &orders_event(Op::Delete, None))
                .unwrap()
                .change,
            JoinChange::Delete
        );
        assert!(s
            .input(Side::Left, &orders_event(Op::Truncate, None))
            .unwrap_err()
            .contains("TRUNCATE"));
        // a declared column the table lacks is named
        let mut bad = spec(JoinKind::Left);
        bad.left.on = vec!["customer".into()];
        assert!(bad
            .input(Side::Left, &ev)
            .unwrap_err()
            .contains("no column `customer`"));
    }

    #[test]
    fn deltas_become_the_last_write_per_output_key() {
        let s = spec(JoinKind::Left);
        let table = Arc::new(SinkTable {
            name: "orders_with_customer".into(),
            columns: vec![col("order_id"), col("customer_name"), col("amount")],
            key: vec![0],
            rewritten: false,
        });
        let delta = |weight, order: i64, customer: Option<i64>| JoinDelta {
            cause: order as usize * 10 + customer.unwrap_or(0) as usize,
            weight,
            left_key: vec![order as u8],
            left: vec![Value::Int(order), Value::Int(100)],
            right_key: customer.map(|c| vec![c as u8]),
            right: customer.map(|c| vec![Value::Int(c)]),
        };
        // order 1: nulls retracted, customer joined; order 2: joined, then retracted
        let writes = s.sink_writes(
            &table,
            &[
                delta(-1, 1, None),
                delta(1, 1, Some(7)),
                delta(1, 2, Some(7)),
                delta(-1, 2, Some(7)),
            ],
        );
        assert_eq!(writes.len(), 2);
        // each write is the last delta of its key, and says which input made it
        assert_eq!((writes[0].0, writes[1].0), (17, 27));
        let writes: Vec<SinkWrite> = writes.into_iter().map(|(_, w)| w).collect();
        match &writes[0] {
            SinkWrite::Upsert { values, .. } => {
                assert_eq!(values, &vec![Value::Int(1), Value::Int(7), Value::Int(100)])
            }
            other => panic!("{other:?}"),
        }
        match &writes[1] {
            SinkWrite::Delete { key, .. } => assert_eq!(key, &vec![Value::Int(2)]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.joined_row(&[Value::Int(3), Value::Int(1)], None),
            vec![Value::Int(3), Value::Null, Value::Int(1)]
        );
    }

    #[test]
    fn declarations_the_operator_cannot_run_are_refused_by_name() {
        assert_eq!(spec(JoinKind::Left).check(), Ok(()));
        let mut s = spec(JoinKind::Left);
        s.key = vec!["customer_name".into()];
        assert!(s.check().unwrap_err().contains("may leave null"));
        let mut s = spec(JoinKind::Inner);
        s.right.on.push("x".into());
        assert!(s.check().unwrap_err().contains("as many on each side"));
        let mut s = spec(JoinKind::Inner);
        s.key = vec!["nope".into()];
        assert!(s
            .check()
            .unwrap_err()
            .contains("`nope` is not an output column"));
        let mut s = spec(JoinKind::Inner);
        s.columns.push(s.columns[0].clone());
        assert!(s.check().unwrap_err().contains("twice"));
        let mut s = spec(JoinKind::Inner);
        s.columns[1].ty = ColumnType::Unknown;
        assert!(s
            .check()
            .unwrap_err()
            .contains("`customer_name` has no type"));
    }

    #[test]
    fn the_joined_table_has_the_declared_columns_and_key() {
        let t = spec(JoinKind::Left).joined_table();
        assert_eq!(t.name, "orders_with_customer");
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["order_id", "customer_name", "amount"]);
        assert_eq!(t.key, vec![0]);
        // the right side of a left join may be null, whatever was declared
        let nullable: Vec<bool> = t.columns.iter().map(|c| c.nullable).collect();
        assert_eq!(nullable, [false, true, false]);
        let t = spec(JoinKind::Inner).joined_table();
        assert!(t.columns.iter().all(|c| !c.nullable));
        let mut s = spec(JoinKind::Inner);
        s.output = None;
        assert_eq!(s.joined_table().name, "orders_with_customer");
    }
}
