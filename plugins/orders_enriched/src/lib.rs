//! `orders_enriched`: normalise the `orders` table into `orders_clean`:
//! amounts as exact decimals, `placed_at` as a timestamp, status upper-cased.
//!
//! Business assumptions of this example (a plugin is where they belong):
//! the orders database stores `placed_at` as a zone-less `timestamp` in UTC, so
//! Debezium's `MicroTimestamp` (and a bare integer, which is what a schemaless
//! stream carries for it) is microseconds since the epoch, UTC.

use sluice_guest::{
    export_plugin, normalize_decimal, Change, Column, ColumnType, Emitter, Op, Plugin, PluginInfo,
    Row, Value,
};

struct OrdersEnriched;

const SINK: &str = "orders_clean";

fn columns() -> [Column; 5] {
    [
        Column::new("order_id", ColumnType::Int, false),
        Column::new("customer_id", ColumnType::Int, true),
        Column::decimal("amount", 12, 2, true),
        Column::new("status", ColumnType::Text, true),
        Column::new("placed_at", ColumnType::Timestamp, true),
    ]
}

fn amount(v: &Value) -> Result<Value, String> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Decimal(d) => Ok(Value::Decimal(d.clone())),
        Value::Int(i) => Ok(Value::Decimal(i.to_string())),
        Value::Text(t) => normalize_decimal(t)
            .map(Value::Decimal)
            .map_err(|e| format!("amount: {e}")),
        Value::Float(f) => Err(format!(
            "amount arrived as a float ({f}); its exact value is unknown"
        )),
        other => Err(format!("amount: unexpected value {other:?}")),
    }
}

fn placed_at(v: &Value) -> Result<Value, String> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Timestamp(us) | Value::LocalTimestamp(us) | Value::Int(us) => {
            Ok(Value::Timestamp(*us))
        }
        other => Err(format!("placed_at: unexpected value {other:?}")),
    }
}

fn status(v: &Value) -> Result<Value, String> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Text(s) => Ok(Value::Text(s.trim().to_uppercase())),
        other => Err(format!("status: unexpected value {other:?}")),
    }
}

fn clean_row(row: &Row<'_>) -> Result<Vec<Value>, String> {
    let order_id = match row.require("order_id")? {
        Value::Int(i) => Value::Int(*i),
        other => return Err(format!("order_id: expected an integer, got {other:?}")),
    };
    let customer_id = row.get("customer_id").cloned().unwrap_or(Value::Null);
    Ok(vec![
        order_id,
        customer_id,
        amount(row.require("amount")?)?,
        status(row.require("status")?)?,
        placed_at(row.require("placed_at")?)?,
    ])
}

impl Plugin for OrdersEnriched {
    fn describe() -> PluginInfo {
        sluice_guest::info(
            "orders_enriched",
            env!("CARGO_PKG_VERSION"),
            &["orders"],
            &[SINK],
        )
    }

    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
        let sink = out.sink_table(SINK, &columns(), &["order_id"])?;
        match change.op() {
            Op::Create | Op::Update | Op::Read => {
                let row = change.after().ok_or("change without an `after` row")?;
                out.upsert(sink, clean_row(&row)?)
            }
            Op::Delete => {
                let id = change
                    .before()
                    .and_then(|b| b.get("order_id").cloned())
                    .or_else(|| change.key().first().cloned())
                    .ok_or("delete without an order_id")?;
                out.delete(sink, vec![id])
            }
            Op::Truncate => Err("TRUNCATE of orders cannot be applied to orders_clean".into()),
        }
    }
}

export_plugin!(OrdersEnriched);
