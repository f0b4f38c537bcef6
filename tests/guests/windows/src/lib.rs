//! Test guest: daily windows of `orders.placed_at` written once the
//! watermark closes them, late orders dead-lettered (`orders_final_strict`)
//! or applied as corrections (`orders_final_corrected`).

use sluice_guest::{days, export_plugin, Aggregation, Plugin, PluginInfo};

struct Windows;

fn daily(output: &str) -> Aggregation {
    Aggregation::new("orders", output)
        .group_by(&["customer_id"])
        .tumbling(days(1))
        .event_time("placed_at")
        .emit_final()
        .count_rows("orders")
        .sum("amount_sum", "amount")
}

impl Plugin for Windows {
    fn describe() -> PluginInfo {
        sluice_guest::info("windows", "1.0.0", &["orders"], &[])
            .aggregate(daily("orders_final_strict").dead_letter_late())
            .aggregate(daily("orders_final_corrected"))
    }
}

export_plugin!(Windows);
