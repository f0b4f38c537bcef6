//! `order_totals`: per order that exists, over its lines (inner join of
//! `orders` with `order_lines` on `order_id`): how many lines, how many
//! items (sum of `qty`) and the exact total (sum of `qty * unit_price`).
//! An order without lines, and lines without their order, have no row.

use sluice_guest::{
    export_plugin, multiply_decimal, Aggregation, Column, ColumnType, Join, Plugin, PluginInfo,
    Projection, Row, Value,
};

struct OrderTotals;

const JOINED: &str = "lines_of_orders";
const OUTPUT: &str = "order_totals";

impl Plugin for OrderTotals {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "order_totals",
            env!("CARGO_PKG_VERSION"),
            &["orders", "order_lines"],
            &[OUTPUT],
        )
        .join(
            Join::inner_join(JOINED, "orders", "order_lines")
                .on("order_id", "order_id")
                .left_columns(&[Column::new("order_id", ColumnType::Int, false)])
                .right_columns(&[
                    Column::new("line_no", ColumnType::Int, false),
                    Column::new("qty", ColumnType::Int, true),
                    Column::new("unit_price", ColumnType::Decimal, true),
                ])
                .key(&["order_id", "line_no"]),
        )
        .aggregate(
            Aggregation::new(JOINED, OUTPUT)
                .group_by(&["order_id"])
                .count_rows("lines")
                .sum("items", "qty")
                .sum_computed("total"),
        )
    }

    fn project(
        _index: u32,
        _aggregation: &Aggregation,
        row: &Row<'_>,
    ) -> Result<Option<Projection>, String> {
        let qty = row.require("qty")?.clone();
        let total = match (&qty, row.require("unit_price")?) {
            (Value::Int(q), Value::Decimal(price)) => Value::Decimal(multiply_decimal(price, *q)?),
            // a line without a quantity or price adds nothing to the total
            _ => Value::Null,
        };
        Ok(Some(Projection {
            group: vec![row.require("order_id")?.clone()],
            event_time: None,
            args: vec![Value::Null, qty, total],
        }))
    }
}

export_plugin!(OrderTotals);
