// A custom aggregate: distinct customers per day of `orders.placed_at`.
// The host keeps each group's state bytes (one per source partition),
// calls `apply` with +1 when a row joins the group and -1 when it leaves
// (an update retracts the old row first), and `merge`s the partitions'
// states before `finish`. This file is the SDK docs' example and a test
// guest (`tests/aggregate.rs` runs it).

use std::collections::BTreeMap;

use sluice_guest::{
    days, export_plugin, Aggregate, Aggregation, ColumnType, CustomAggregate, Plugin, PluginInfo,
    Value,
};

/// Distinct non-null values: a multiset of their encodings, so a value
/// leaves only when its last row does.
struct DistinctCount;

impl Aggregate for DistinctCount {
    type State = BTreeMap<String, i64>;

    fn create() -> Self::State {
        BTreeMap::new()
    }

    fn apply(state: &mut Self::State, value: &Value, weight: i64) -> Result<(), String> {
        if *value == Value::Null {
            return Ok(());
        }
        let key = format!("{value:?}");
        let n = state.entry(key.clone()).or_insert(0);
        *n += weight;
        if *n < 0 {
            return Err(format!("{key} retracted more often than added"));
        }
        if *n == 0 {
            state.remove(&key);
        }
        Ok(())
    }

    fn merge(mut a: Self::State, b: Self::State) -> Self::State {
        for (k, n) in b {
            *a.entry(k).or_insert(0) += n;
        }
        a.retain(|_, n| *n != 0);
        a
    }

    fn finish(state: &Self::State) -> Value {
        Value::Int(state.len() as i64)
    }

    fn encode(state: &Self::State) -> Vec<u8> {
        sluice_guest::encode_counts(state)
    }

    fn decode(bytes: &[u8]) -> Result<Self::State, String> {
        sluice_guest::decode_counts(bytes)
    }
}

struct Distinct;

impl Plugin for Distinct {
    fn describe() -> PluginInfo {
        sluice_guest::info("distinct", "1.0.0", &["orders"], &["orders_distinct_daily"]).aggregate(
            Aggregation::new("orders", "orders_distinct_daily")
                .tumbling(days(1))
                .event_time("placed_at")
                .count_rows("orders")
                .custom("customers", "customer_id", ColumnType::Int),
        )
    }

    fn custom_aggregate(measure: &str) -> Option<CustomAggregate> {
        (measure == "customers").then(CustomAggregate::of::<DistinctCount>)
    }
}

export_plugin!(Distinct);
