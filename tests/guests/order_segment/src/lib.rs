//! Test guest (and the SDK docs' lookup example): each order with its
//! customer's segment as it was when the order last changed. A lookup, not
//! a join: a later change of the customer does not rewrite the order (a
//! join, `plugins/orders_with_customer`, would).

use sluice_guest::{
    export_plugin, lookup, Change, Column, ColumnType, Emitter, Op, Plugin, PluginInfo, Value,
};

struct OrderSegment;

const OUTPUT: &str = "order_segment";

impl Plugin for OrderSegment {
    fn describe() -> PluginInfo {
        sluice_guest::info("order_segment", "1.0.0", &["orders"], &[OUTPUT]).lookup("customers")
    }

    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
        let table = out.sink_table(
            OUTPUT,
            &[
                Column::new("order_id", ColumnType::Int, false),
                Column::new("customer_id", ColumnType::Int, true),
                Column::new("segment", ColumnType::Text, true),
            ],
            &["order_id"],
        )?;
        match change.op() {
            Op::Delete => out.delete(table, change.key().to_vec()),
            Op::Truncate => Ok(()),
            _ => {
                let row = change.after().ok_or("change without an after image")?;
                let customer = row.require("customer_id")?.clone();
                let segment = match &customer {
                    Value::Null => Value::Null,
                    id => lookup("customers", std::slice::from_ref(id))?
                        .and_then(|c| c.get("segment").cloned())
                        .unwrap_or(Value::Null),
                };
                out.upsert(
                    table,
                    vec![row.require("order_id")?.clone(), customer, segment],
                )
            }
        }
    }
}

export_plugin!(OrderSegment);
