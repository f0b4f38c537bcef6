//! Keyed state: per order, the history the `orders` table itself forgets —
//! its first status, how many times its status changed and how many
//! versions it went through — kept by the host per source row and
//! committed with the rows written here.
//!
//! `order_history`: `order_id`, `first_status`, `status`, `status_changes`,
//! `versions`; a deleted order loses its row and its state.

use sluice_guest::{
    export_plugin, Change, Column, ColumnType, Emitter, KeyedState, Op, Plugin, PluginInfo, Value,
};

struct OrderHistory;

/// What is kept per order.
struct History {
    versions: i64,
    status_changes: i64,
    first_status: Option<String>,
    status: Option<String>,
}

/// The state's bytes: four fields separated by U+001F; a null status is
/// U+0000.
impl History {
    fn decode(bytes: &[u8]) -> Result<History, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("state is not UTF-8: {e}"))?;
        let f: Vec<&str> = text.split('\u{1f}').collect();
        let [versions, changes, first, status] = f[..] else {
            return Err(format!("state has {} fields, not 4", f.len()));
        };
        let status_of = |s: &str| (s != "\u{0}").then(|| s.to_string());
        Ok(History {
            versions: versions.parse().map_err(|e| format!("versions: {e}"))?,
            status_changes: changes
                .parse()
                .map_err(|e| format!("status_changes: {e}"))?,
            first_status: status_of(first),
            status: status_of(status),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let s = |v: &Option<String>| v.clone().unwrap_or_else(|| "\u{0}".into());
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.versions,
            self.status_changes,
            s(&self.first_status),
            s(&self.status)
        )
        .into_bytes()
    }
}

fn text(v: &Option<String>) -> Value {
    v.clone().map_or(Value::Null, Value::Text)
}

impl Plugin for OrderHistory {
    fn describe() -> PluginInfo {
        sluice_guest::info("order_history", "1.0.0", &["orders"], &["order_history"]).keyed_state()
    }

    fn on_keyed_change(
        change: &Change<'_>,
        state: &mut KeyedState,
        out: &mut Emitter,
    ) -> Result<(), String> {
        let table = out.sink_table(
            "order_history",
            &[
                Column::new("order_id", ColumnType::Int, false),
                Column::new("first_status", ColumnType::Text, true),
                Column::new("status", ColumnType::Text, true),
                Column::new("status_changes", ColumnType::Int, false),
                Column::new("versions", ColumnType::Int, false),
            ],
            &["order_id"],
        )?;
        match change.op() {
            Op::Truncate => Err("TRUNCATE: the history of every order would be lost".into()),
            Op::Delete => {
                state.delete();
                out.delete(table, change.key().to_vec())
            }
            Op::Create | Op::Read | Op::Update => {
                let row = change.after().ok_or("change without an after image")?;
                let status = match row.get("status") {
                    Some(Value::Text(s)) if s == "TRAP" => {
                        unreachable!("the test asked for a trap")
                    }
                    Some(Value::Text(s)) => Some(s.clone()),
                    _ => None,
                };
                let history = match state.get() {
                    Some(bytes) => {
                        let mut h = History::decode(bytes)?;
                        h.versions += 1;
                        if h.status != status {
                            h.status_changes += 1;
                        }
                        h.status = status;
                        h
                    }
                    None => History {
                        versions: 1,
                        status_changes: 0,
                        first_status: status.clone(),
                        status,
                    },
                };
                state.put(history.encode());
                // Refused after the put: the change goes to the dead-letter
                // queue and the SDK discards the state it put.
                if history.status.as_deref() == Some("REFUSE") {
                    return Err("status REFUSE is refused".into());
                }
                out.upsert(
                    table,
                    vec![
                        row.require("order_id")?.clone(),
                        text(&history.first_status),
                        text(&history.status),
                        Value::Int(history.status_changes),
                        Value::Int(history.versions),
                    ],
                )
            }
        }
    }
}

export_plugin!(OrderHistory);
