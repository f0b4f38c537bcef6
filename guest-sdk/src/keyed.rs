//! Keyed state: bytes the host keeps for your plugin per source row (its
//! table and primary key), for logic that needs a row's history — the
//! first status an order had, how often it changed, the previous value of
//! a column when the source sends no `before` image.
//!
//! Declare it with [`PluginInfo::keyed_state`] and implement
//! [`Plugin::on_keyed_change`](crate::Plugin::on_keyed_change): each change
//! comes with its row's [`KeyedState`]; read it, [`put`](KeyedState::put)
//! new bytes or [`delete`](KeyedState::delete) them. The host runs such
//! plugins inside the sink's transaction and commits the states with the
//! rows you write and the source offsets, so a crash, a restart or a
//! rebalance never applies a change twice; a change Debezium delivers
//! again (not newer than the row's state) is not sent to you at all.
//! When `on_keyed_change` returns an error, the change goes to the
//! dead-letter queue and its row keeps the state it had.
//!
//! The bytes are yours to lay out; bump `state_version` in the
//! [`PluginInfo`] when the layout changes (a new version starts from no
//! state).
//!
//! A complete plugin (`tests/guests/order_history`, run by the tests):
//!
#![doc = concat!("```no_run\n", include_str!("../../tests/guests/order_history/src/lib.rs"), "```")]

use std::collections::HashMap;

use crate::emitter::Emitter;
use crate::view::{Change, Table};
use crate::wit;
use crate::PluginInfo;

impl PluginInfo {
    /// Keep state per source row: the host calls
    /// [`Plugin::on_keyed_change`](crate::Plugin::on_keyed_change) with it.
    pub fn keyed_state(mut self) -> Self {
        self.keyed_state = true;
        self
    }
}

/// The state of the source row a change belongs to.
#[derive(Debug, Default)]
pub struct KeyedState {
    state: Option<Vec<u8>>,
    changed: bool,
}

impl KeyedState {
    /// The bytes last put for this row, if any.
    pub fn get(&self) -> Option<&[u8]> {
        self.state.as_deref()
    }

    /// Replace the row's state (committed with this batch).
    pub fn put(&mut self, bytes: Vec<u8>) {
        self.state = Some(bytes);
        self.changed = true;
    }

    /// Forget the row's state (committed with this batch).
    pub fn delete(&mut self) {
        self.state = None;
        self.changed = true;
    }
}

/// A source row's identity within a batch: its table's topic and its key.
fn row_id(tables: &[wit::Table], change: &wit::Change) -> String {
    let topic = tables
        .get(change.table as usize)
        .map_or("", |t| t.topic.as_str());
    format!("{topic}\u{0}{:?}", change.key)
}

/// Runs `P` over a batch with its rows' states; used by
/// [`export_plugin!`](crate::export_plugin), not called directly.
#[doc(hidden)]
pub fn run_keyed<P: crate::Plugin>(
    input: wit::Batch,
    states: Vec<wit::RowState>,
) -> wit::KeyedResult {
    let tables: Vec<Table<'_>> = input.tables.iter().map(Table::new).collect();
    // Each row's current state, and the last change that changed it.
    let mut rows: HashMap<String, (Option<Vec<u8>>, Option<u32>)> = HashMap::new();
    for s in states {
        if let Some(change) = input.changes.get(s.change as usize) {
            rows.insert(row_id(&input.tables, change), (Some(s.state), None));
        }
    }
    let mut out = Emitter::default();
    let mut results = Vec::with_capacity(input.changes.len());
    for (i, raw) in input.changes.iter().enumerate() {
        let id = row_id(&input.tables, raw);
        let row = rows.entry(id).or_insert((None, None));
        let mut state = KeyedState {
            state: row.0.clone(),
            changed: false,
        };
        let result = match tables.get(raw.table as usize) {
            Some(table) => {
                let change = Change::new(table, raw);
                P::on_keyed_change(&change, &mut state, &mut out)
            }
            None => Err(format!(
                "host sent a change for table #{} but only {} descriptors",
                raw.table,
                tables.len()
            )),
        };
        if result.is_ok() && state.changed {
            *row = (state.state, Some(i as u32));
        }
        results.push(out.finish_change(result));
    }
    let mut written: Vec<wit::RowStateWrite> = rows
        .into_values()
        .filter_map(|(state, change)| {
            Some(wit::RowStateWrite {
                change: change?,
                state,
            })
        })
        .collect();
    written.sort_by_key(|w| w.change);
    wit::KeyedResult {
        outputs: wit::BatchResult {
            tables: out.into_tables(),
            results,
        },
        states: written,
    }
}
