//! The stored tables' changes and the plugins with lookups in the commit
//! (the caller holds the pipeline's state turn, and joins have read the
//! tables as the batch found them): the tables a plugin looks up are read
//! whole (`tables.rs`), the batch's events walked in order, each table
//! change applied after the plugin calls that precede it, so a lookup sees
//! every change before the one being processed and none after it; then the
//! changed rows are written. What a lookup is lives in `operators::lookup`.

use std::collections::{BTreeMap, BTreeSet};

use super::derived::DerivedOutputs;
use super::state::{read_state, write_state};
use super::tables::StoredTables;
use super::*;
use crate::model::{ChangeEvent, RecordId, SourceOrder};
use crate::operators::aggregate::StateWrite;
use crate::operators::codec::{self, row_identity};
use crate::operators::lookup::{LookupAccess, LookupPlugin};
use crate::operators::table::declares;
use crate::plugin::lazy::{isolating, LazyInstance};
use crate::plugin::runtime::off_runtime;

/// State kind of the last position a plugin with lookups was called for,
/// per row of its own tables.
const POSITION: &str = "p";

/// The `sluice_state.operator` of a plugin's positions.
fn positions_operator(plugin: &str) -> String {
    format!("{plugin}#lookup")
}

/// Per plugin with lookups, the rows (topic and key) of its events.
fn plugin_rows(events: &[EventWrites]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for l in events.iter().flat_map(|ev| &ev.lookups) {
        out.entry(l.plugin.name.clone())
            .or_default()
            .insert(row_identity(&l.event.table.topic, &l.event.key));
    }
    out.into_iter()
        .map(|(p, keys)| (p, keys.into_iter().collect()))
        .collect()
}

/// The instances of the plugins that read stored tables.
#[derive(Default)]
pub(super) struct LookupTables {
    instances: HashMap<String, LazyInstance>,
}

impl LookupTables {
    /// Run the plugins with lookups over their events and apply the stored
    /// tables' changes, in batch order; write the changed rows.
    pub(super) async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        events: &[EventWrites],
        tables: &mut StoredTables,
    ) -> anyhow::Result<DerivedOutputs> {
        let mut declared: BTreeSet<&str> = BTreeSet::new();
        for l in events.iter().flat_map(|ev| &ev.lookups) {
            declared.extend(l.plugin.tables.iter().map(String::as_str));
        }
        for table in declared {
            tables.load_whole(conn, d, pipeline, table).await?;
        }
        let changed = events.iter().flat_map(|ev| &ev.tables).map(|c| &c.row_key);
        tables.load_rows(conn, d, pipeline, changed).await?;
        let mut report = DerivedOutputs::default();
        // Per plugin: the last position of each row it was called for, so a
        // re-delivered change is not processed again against a table that
        // has moved on since.
        let mut seen: BTreeMap<String, HashMap<Vec<u8>, Option<SourceOrder>>> = BTreeMap::new();
        let mut changed: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (plugin, keys) in plugin_rows(events) {
            let op = positions_operator(&plugin);
            let mut stored = HashMap::new();
            for (k, v) in read_state(conn, d, pipeline, &op, POSITION, &keys).await? {
                let order = match v {
                    Some(v) => codec::Reader::new(&v)
                        .order()
                        .with_context(|| format!("reading the positions of {op}"))?,
                    None => None,
                };
                stored.insert(k, order);
            }
            seen.insert(plugin, stored);
        }
        // Per plugin, the events waiting for a call (in batch order).
        let mut pending: Vec<(Arc<LookupPlugin>, Vec<usize>)> = Vec::new();
        for (e, ev) in events.iter().enumerate() {
            for l in &ev.lookups {
                let key = row_identity(&l.event.table.topic, &l.event.key);
                let last = seen
                    .entry(l.plugin.name.clone())
                    .or_default()
                    .entry(key.clone())
                    .or_default();
                if let (Some(new), Some(old)) = (l.event.source_order, *last) {
                    if new <= old {
                        report.duplicates += 1;
                        continue;
                    }
                }
                if l.event.source_order.is_some() {
                    *last = l.event.source_order;
                    changed
                        .entry(l.plugin.name.clone())
                        .or_default()
                        .insert(key);
                }
                match pending.iter_mut().find(|(p, _)| p.name == l.plugin.name) {
                    Some((_, waiting)) => waiting.push(e),
                    None => pending.push((l.plugin.clone(), vec![e])),
                }
            }
            for change in &ev.tables {
                // Calls that read this table see it before the change.
                for (plugin, waiting) in &mut pending {
                    let reads = plugin
                        .tables
                        .iter()
                        .any(|t| declares(t, &change.topic, &change.name));
                    if !waiting.is_empty() && reads {
                        let waiting = std::mem::take(waiting);
                        self.run(plugin, &waiting, events, tables, &mut report)?;
                    }
                }
                // Joins of the table count their re-deliveries themselves.
                if !tables.write_store()?.apply(change) && ev.joins.is_empty() {
                    report.duplicates += 1;
                }
            }
        }
        for (plugin, waiting) in &pending {
            if !waiting.is_empty() {
                self.run(plugin, waiting, events, tables, &mut report)?;
            }
        }
        for (plugin, keys) in changed {
            let rows = &seen[&plugin];
            let writes: Vec<StateWrite> = keys
                .into_iter()
                .map(|key| {
                    let mut w = codec::Writer::default();
                    w.order(rows.get(&key).copied().flatten());
                    StateWrite {
                        kind: POSITION,
                        key,
                        value: Some(w.buf),
                        expires: None,
                        fresh: false,
                    }
                })
                .collect();
            write_state(conn, d, pipeline, &positions_operator(&plugin), &writes).await?;
        }
        tables.write(conn, d, pipeline).await?;
        Ok(report)
    }

    /// One `process` call over a plugin's waiting events (a trap: event by
    /// event, so only the poison event is dead-lettered).
    fn run(
        &mut self,
        plugin: &LookupPlugin,
        waiting: &[usize],
        events: &[EventWrites],
        tables: &StoredTables,
        report: &mut DerivedOutputs,
    ) -> anyhow::Result<()> {
        let Some(code) = &plugin.code else {
            anyhow::bail!("plugin {} reads lookups but has no code", plugin.name);
        };
        let access = LookupAccess {
            declared: plugin.tables.clone(),
            tables: tables.shared(),
        };
        let batch: Vec<(&ChangeEvent, &RecordId)> = waiting
            .iter()
            .filter_map(|&e| {
                let input = events[e]
                    .lookups
                    .iter()
                    .find(|l| l.plugin.name == plugin.name)?;
                Some((&input.event, &events[e].record.id))
            })
            .collect();
        let instance = LazyInstance::of(&mut self.instances, &plugin.name, code, &plugin.name);
        let results = off_runtime(|| {
            isolating(&plugin.name, &batch, |evs| {
                instance.call(|i| {
                    i.set_lookups(access.clone());
                    i.process(evs)
                })
            })
        });
        for (&e, result) in waiting.iter().zip(results) {
            let record = &events[e].record;
            match result {
                Ok(writes) => report.written(record, &plugin.name, writes),
                Err(reason) => report.refused(record, &plugin.name, reason),
            }
        }
        Ok(())
    }
}
