//! Test guest: mirrors like `mirror`, but panics (a Wasm trap) on the `orders`
//! row with `order_id` 1003, on any row whose `note` is "loop" spins
//! forever, and on "hog" fills 64 MiB of memory, so tests can check trap
//! isolation, the call deadline and the memory cap.

use sluice_guest::{export_plugin, Change, Emitter, Op, Plugin, PluginInfo, Value};

struct TrapOn;

impl Plugin for TrapOn {
    fn describe() -> PluginInfo {
        sluice_guest::info("trap_on", "1.0.0", &["*"], &[])
    }

    fn on_change(change: &Change<'_>, out: &mut Emitter) -> Result<(), String> {
        let table = change.table();
        if let Some(row) = change.after() {
            if table.name() == "orders" && row.get("order_id") == Some(&Value::Int(1003)) {
                panic!("poison order 1003");
            }
            if row.get("note") == Some(&Value::Text("hog".into())) {
                let hog = vec![1u8; 64 << 20];
                std::hint::black_box(&hog);
            }
            if row.get("note") == Some(&Value::Text("loop".into())) {
                #[allow(clippy::empty_loop)]
                loop {}
            }
        }
        let sink = out.sink_table_like(table.name(), table);
        match change.op() {
            Op::Delete => out.delete(sink, change.key().to_vec()),
            Op::Truncate => Ok(()),
            _ => out.upsert(sink, change.after().ok_or("no after")?.values().to_vec()),
        }
    }
}

export_plugin!(TrapOn);
