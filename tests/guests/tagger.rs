// Shared source of the `tagger_v*` test guests: one audit row per event,
// keyed by (topic, partition, offset), tagged with the plugin's version, so a
// test can see which version handled each event and that none was lost.

use sluice_guest::{export_plugin, Change, Column, ColumnType, Emitter, Plugin, PluginInfo, Value};

struct Tagger;

impl Plugin for Tagger {
    fn describe() -> PluginInfo {
        sluice_guest::info("tagger", TAG, &["*"], &["tagged"])
    }

    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
        let sink = out.sink_table(
            "tagged",
            &[
                Column::new("topic", ColumnType::Text, false),
                Column::new("part", ColumnType::Int, false),
                Column::new("off", ColumnType::Int, false),
                Column::new("version", ColumnType::Text, false),
            ],
            &["topic", "part", "off"],
        )?;
        let pos = change.position();
        out.upsert(
            sink,
            vec![
                Value::Text(change.table().topic().to_string()),
                Value::Int(pos.partition as i64),
                Value::Int(pos.offset),
                Value::Text(TAG.to_string()),
            ],
        )
    }
}

export_plugin!(Tagger);
