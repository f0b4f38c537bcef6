//! `revenue_by_segment`: orders joined with their customers (inner join on
//! `orders.customer_id = customers.id`), per customer `segment` and UTC day
//! of `placed_at`: how many orders and their amount. When a customer moves
//! to another segment, their orders' revenue moves with them; an order
//! whose customer does not exist counts nowhere.

use sluice_guest::{
    days, export_plugin, Aggregation, Column, ColumnType, Join, Plugin, PluginInfo,
};

struct RevenueBySegment;

const JOINED: &str = "orders_of_customers";
const OUTPUT: &str = "revenue_by_segment_daily";

impl Plugin for RevenueBySegment {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "revenue_by_segment",
            env!("CARGO_PKG_VERSION"),
            &["orders", "customers"],
            &[OUTPUT],
        )
        .join(
            Join::inner_join(JOINED, "orders", "customers")
                .on("customer_id", "id")
                .left_columns(&[
                    Column::new("order_id", ColumnType::Int, false),
                    Column::new("amount", ColumnType::Decimal, true),
                    Column::new("placed_at", ColumnType::LocalTimestamp, true),
                ])
                .right_columns(&[Column::new("segment", ColumnType::Text, true)])
                .key(&["order_id"]),
        )
        .aggregate(
            Aggregation::new(JOINED, OUTPUT)
                .group_by(&["segment"])
                .tumbling(days(1))
                .event_time("placed_at")
                .count_rows("orders")
                .sum("amount_sum", "amount"),
        )
    }
}

export_plugin!(RevenueBySegment);
