//! Test guest: an interval join, orders placed in their customer's first
//! year (`customers.created_at <= orders.placed_at <= created_at + 365
//! days`), twice: late rows applied (`first_year_orders`) and late rows
//! dead-lettered (`first_year_orders_strict`). Out-of-orderness of two
//! years, so the fixture's snapshot order is not late.

use sluice_guest::{days, export_plugin, Column, ColumnType, Join, Plugin, PluginInfo};

struct FirstYearOrders;

fn join(name: &str) -> Join {
    Join::inner_join(name, "orders", "customers")
        .on("customer_id", "id")
        .left_columns(&[
            Column::new("order_id", ColumnType::Int, false),
            Column::new("customer_id", ColumnType::Int, true),
        ])
        .right_column("name", Column::new("customer_name", ColumnType::Text, true))
        .key(&["order_id"])
        .output(name)
        .within("placed_at", "created_at", days(365), 0)
        .out_of_orderness(days(730))
}

impl Plugin for FirstYearOrders {
    fn describe() -> PluginInfo {
        const OUT: [&str; 2] = ["first_year_orders", "first_year_orders_strict"];
        sluice_guest::info("first_year_orders", "1.0.0", &["orders", "customers"], &OUT)
            .join(join(OUT[0]))
            .join(join(OUT[1]).dead_letter_late())
    }
}

export_plugin!(FirstYearOrders);
