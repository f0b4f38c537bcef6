//! `orders_with_customer`: every order with its customer's name and
//! segment, as a left join of `orders` with `customers` on
//! `orders.customer_id = customers.id` that the host keeps exact as both
//! tables change. A customer who changes segment moves every one of their
//! orders; an order whose customer does not exist (yet, or any more) has
//! nulls for the customer's columns, filled in when the customer arrives.

use sluice_guest::{export_plugin, Column, ColumnType, Join, Plugin, PluginInfo};

struct OrdersWithCustomer;

const OUTPUT: &str = "orders_with_customer";

impl Plugin for OrdersWithCustomer {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "orders_with_customer",
            env!("CARGO_PKG_VERSION"),
            &["orders", "customers"],
            &[OUTPUT],
        )
        .join(
            Join::left_join(OUTPUT, "orders", "customers")
                .on("customer_id", "id")
                .left_columns(&[
                    Column::new("order_id", ColumnType::Int, false),
                    Column::new("customer_id", ColumnType::Int, true),
                    Column::new("amount", ColumnType::Decimal, true),
                    Column::new("status", ColumnType::Text, true),
                    Column::new("placed_at", ColumnType::LocalTimestamp, true),
                ])
                .right_column("name", Column::new("customer_name", ColumnType::Text, true))
                .right_column(
                    "segment",
                    Column::new("customer_segment", ColumnType::Text, true),
                )
                .key(&["order_id"])
                .output(OUTPUT),
        )
    }
}

export_plugin!(OrdersWithCustomer);
