//! Joins: declare them in `describe`, and the host keeps them right.
//!
//! The host keeps the current rows of both tables as state, indexed by the
//! join columns, and writes the changes of the join result: when a row of
//! either table changes, the joined rows it made are retracted and the new
//! ones written. A customer who moves to another segment moves every one
//! of their orders in the output (and in aggregations that read the join).
//!
//! ```no_run
//! use sluice_guest::{export_plugin, Column, ColumnType, Join, Plugin, PluginInfo};
//!
//! struct OrdersWithCustomer;
//!
//! impl Plugin for OrdersWithCustomer {
//!     fn describe() -> PluginInfo {
//!         sluice_guest::info("orders_with_customer", "1.0.0", &["orders", "customers"], &["orders_with_customer"])
//!             .join(
//!                 Join::left_join("orders_with_customer", "orders", "customers")
//!                     .on("customer_id", "id")
//!                     .left_columns(&[
//!                         Column::new("order_id", ColumnType::Int, false),
//!                         Column::new("customer_id", ColumnType::Int, true),
//!                     ])
//!                     .right_column("name", Column::new("customer_name", ColumnType::Text, true))
//!                     .key(&["order_id"])
//!                     .output("orders_with_customer"),
//!             )
//!     }
//! }
//!
//! export_plugin!(OrdersWithCustomer);
//! ```
//!
//! Declare the output columns' types: a left join may write an order before
//! the customers table (or its schema) was ever seen. An aggregation whose
//! source is the join's name aggregates the joined rows.

use crate::wit;
use crate::{Column, PluginInfo};

pub use wit::{Join, JoinColumn, JoinKind, JoinSide, Side};

impl PluginInfo {
    /// Add a join for the host to maintain.
    pub fn join(mut self, join: Join) -> Self {
        self.joins.push(join);
        self
    }
}

impl Join {
    fn new(name: &str, kind: JoinKind, left: &str, right: &str) -> Self {
        let side = |table: &str| JoinSide {
            table: table.into(),
            on: Vec::new(),
        };
        Join {
            name: name.into(),
            kind,
            left: side(left),
            right: side(right),
            columns: Vec::new(),
            key: Vec::new(),
            output: None,
            interval: None,
        }
    }

    /// Every row of `left` (a table name or full topic), with the matching
    /// rows of `right`, or nulls for the right side's columns when none
    /// matches.
    pub fn left_join(name: &str, left: &str, right: &str) -> Self {
        Join::new(name, JoinKind::Left, left, right)
    }

    /// The pairs of rows of `left` and `right` that match.
    pub fn inner_join(name: &str, left: &str, right: &str) -> Self {
        Join::new(name, JoinKind::Inner, left, right)
    }

    /// Match `left_column` of the left table with `right_column` of the
    /// right one (call again for a composite join key).
    pub fn on(mut self, left_column: &str, right_column: &str) -> Self {
        self.left.on.push(left_column.into());
        self.right.on.push(right_column.into());
        self
    }

    /// Output `column` of `side`'s table as `output` (its name and type).
    pub fn column(mut self, side: Side, column: &str, output: Column) -> Self {
        self.columns.push(JoinColumn {
            name: output.name,
            side,
            column: column.into(),
            ty: output.ty,
            nullable: output.nullable,
            decimal: output.decimal,
        });
        self
    }

    /// Output these columns of the left table under their own names.
    pub fn left_columns(self, columns: &[Column]) -> Self {
        columns.iter().fold(self, |j, c| {
            let name = c.name.clone();
            j.column(Side::Left, &name, c.clone())
        })
    }

    /// Output these columns of the right table under their own names.
    pub fn right_columns(self, columns: &[Column]) -> Self {
        columns.iter().fold(self, |j, c| {
            let name = c.name.clone();
            j.column(Side::Right, &name, c.clone())
        })
    }

    /// Output `column` of the left table as `output`.
    pub fn left_column(self, column: &str, output: Column) -> Self {
        self.column(Side::Left, column, output)
    }

    /// Output `column` of the right table as `output`.
    pub fn right_column(self, column: &str, output: Column) -> Self {
        self.column(Side::Right, column, output)
    }

    /// The joined row's key (output column names; for a left join, from
    /// the left side only).
    pub fn key(mut self, columns: &[&str]) -> Self {
        self.key = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Write the joined rows to this sink table.
    pub fn output(mut self, table: &str) -> Self {
        self.output = Some(table.into());
        self
    }

    /// Make this an interval join (of event streams; inner joins for now):
    /// a left row at `left_time` and a right row at `right_time` match only
    /// when `left - before <= right <= left + after` (µs; see [`hours`]).
    /// The host drops a row's state once the watermark passes the last time
    /// a partner could still have; a row arriving after that is late
    /// (applied by default, see [`Join::dead_letter_late`]). No
    /// out-of-orderness unless [`Join::out_of_orderness`] says so.
    ///
    /// [`hours`]: crate::hours
    pub fn within(mut self, left_time: &str, right_time: &str, before: i64, after: i64) -> Self {
        self.interval = Some(wit::Interval {
            left_time: left_time.into(),
            right_time: right_time.into(),
            before_us: before,
            after_us: after,
            out_of_orderness_us: 0,
            late: wit::LatePolicy::Apply,
        });
        self
    }

    /// Interval joins (call after [`Join::within`]): how far behind its
    /// partition's newest event time a row may still arrive (the
    /// watermark's delay), µs.
    pub fn out_of_orderness(mut self, us: i64) -> Self {
        if let Some(i) = &mut self.interval {
            i.out_of_orderness_us = us;
        }
        self
    }

    /// Interval joins (call after [`Join::within`]): send late rows to the
    /// dead-letter queue (reason `late`) instead of joining them with the
    /// partners still kept.
    pub fn dead_letter_late(mut self) -> Self {
        if let Some(i) = &mut self.interval {
            i.late = wit::LatePolicy::DeadLetter;
        }
        self
    }
}
