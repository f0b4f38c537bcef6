//! `mirror`: replicate every source table into a sink table of the same name
//! (the last topic segment), same columns, the Debezium key as primary key.

use sluice_guest::{export_plugin, Change, Emitter, Op, Plugin, PluginInfo};

struct Mirror;

impl Plugin for Mirror {
    fn describe() -> PluginInfo {
        sluice_guest::info("mirror", env!("CARGO_PKG_VERSION"), &["*"], &[])
    }

    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
        let table = change.table();
        if change.op() == Op::Truncate {
            // Truncate carries no rows; mirroring it would need a sink-level
            // truncate, which WIT v0.1 does not offer. Refuse loudly instead
            // of leaving stale rows silently.
            return Err(format!(
                "TRUNCATE of {} cannot be mirrored by WIT v0.1 outputs",
                table.topic()
            ));
        }
        if table.key_indices().is_empty() {
            return Err(format!(
                "{} has no primary key: mirror cannot upsert it",
                table.topic()
            ));
        }
        let sink = out.sink_table_like(table.name(), table);
        match change.op() {
            Op::Create | Op::Update | Op::Read => {
                let row = change
                    .after()
                    .ok_or_else(|| format!("{:?} event without an `after` row", change.op()))?;
                out.upsert(sink, row.values().to_vec())
            }
            Op::Delete => out.delete(sink, change.key().to_vec()),
            Op::Truncate => Ok(()), // refused above
        }
    }
}

export_plugin!(Mirror);
