//! `orders_by_customer`: what each customer ordered, by the time the order
//! was placed (`placed_at`), in three tables the host keeps equal to a
//! `GROUP BY` of the source `orders` table as orders are created, changed
//! (amount, customer, time) and deleted; late orders are applied.
//!
//! - `orders_by_customer_daily`: UTC days;
//! - `orders_by_customer_7d`: 7 days sliding by 1 day;
//! - `orders_sessions`: sessions per customer, an order 2 days or more after
//!   the previous one starting a new session (`session_end` = last order +
//!   2 days).

use sluice_guest::{days, export_plugin, Aggregation, Plugin, PluginInfo};

struct OrdersByCustomer;

const DAILY: &str = "orders_by_customer_daily";
const WEEKLY: &str = "orders_by_customer_7d";
const SESSIONS: &str = "orders_sessions";

impl Plugin for OrdersByCustomer {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "orders_by_customer",
            env!("CARGO_PKG_VERSION"),
            &["orders"],
            &[DAILY, WEEKLY, SESSIONS],
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
        .aggregate(
            Aggregation::new("orders", WEEKLY)
                .group_by(&["customer_id"])
                .hopping(days(7), days(1))
                .event_time("placed_at")
                .count_rows("orders")
                .sum("amount_sum", "amount"),
        )
        .aggregate(
            Aggregation::new("orders", SESSIONS)
                .group_by(&["customer_id"])
                .session(days(2))
                .event_time("placed_at")
                .count_rows("orders")
                .sum("amount_sum", "amount"),
        )
    }
}

export_plugin!(OrdersByCustomer);
