//! `orders_events_5m`: the seed's Spark job B, as written, for users who
//! migrate and want the same numbers: every change event of `orders` with
//! an `after` row counts once, in the 5-minute window of its commit time
//! (`source.ts_ms`), per `after.customer_id`; deletes subtract nothing;
//! a 10-minute watermark; windows upserted as they change (Spark's
//! `outputMode("update")` with an upserting `foreachBatch`). Spark drops
//! rows behind its watermark without a word: here they are dead-lettered
//! with reason `late` and counted. A re-delivered event still counts once.

use sluice_guest::{export_plugin, minutes, Aggregation, Plugin, PluginInfo};

struct OrdersEvents5m;

impl Plugin for OrdersEvents5m {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "orders_events_5m",
            env!("CARGO_PKG_VERSION"),
            &["orders"],
            &["orders_events_5m"],
        )
        .aggregate(
            Aggregation::new("orders", "orders_events_5m")
                .append()
                .group_by(&["customer_id"])
                .tumbling(minutes(5))
                .out_of_orderness(minutes(10))
                .dead_letter_late()
                .count_rows("events")
                .sum("amount", "amount"),
        )
    }
}

export_plugin!(OrdersEvents5m);
