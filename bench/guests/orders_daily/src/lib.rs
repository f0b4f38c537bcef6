//! Benchmark guest: `orders_by_customer_daily` of `plugins/orders_by_customer`
//! alone (one tumbling window per order, state-correct under updates and
//! deletes), so `bench/aggregate.sh` shows what one windowed aggregation
//! costs next to mirroring and next to the three of `orders_by_customer`.

use sluice_guest::{days, export_plugin, Aggregation, Plugin, PluginInfo};

struct OrdersDaily;

const DAILY: &str = "orders_by_customer_daily";

impl Plugin for OrdersDaily {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "orders_daily",
            env!("CARGO_PKG_VERSION"),
            &["orders"],
            &[DAILY],
        )
        .aggregate(
            Aggregation::new("orders", DAILY)
                .group_by(&["customer_id"])
                .tumbling(days(1))
                .event_time("placed_at")
                .count_rows("orders")
                .sum("amount_sum", "amount")
                .min("amount_min", "amount")
                .max("amount_max", "amount"),
        )
    }
}

export_plugin!(OrdersDaily);
