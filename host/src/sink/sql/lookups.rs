//! Plugins with lookups in the commit (the caller holds the pipeline's
//! state turn): the looked-up tables are read whole from `sluice_state`
//! (kind `t`, operator `lookup/<table>`) when first needed and cached while
//! this host holds the turn; the batch's events are walked in order, each
//! table change applied after the plugin calls that precede it, so a lookup
//! sees every change before the one being processed and none after it. The
//! rows that changed are written in the batch's transaction. What a lookup
//! table is lives in `operators::lookup`.

use std::collections::{BTreeMap, BTreeSet};

use super::derived::DerivedOutputs;
use super::state::{read_kind, read_state, sizes_by_id, write_state};
use super::*;
use crate::model::{ChangeEvent, RecordId, SourceOrder};
use crate::operators::aggregate::StateWrite;
use crate::operators::codec::{self, row_identity};
use crate::operators::lookup::{LookupAccess, LookupPlugin, StoredRow, TableRows, Tables};
use crate::plugin::lazy::{isolating, LazyInstance};
use crate::plugin::runtime::off_runtime;

/// State kind of a looked-up table's rows.
const KIND: &str = "t";

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

/// The `sluice_state.operator` of a looked-up table.
fn operator(table: &str) -> String {
    format!("lookup/{table}")
}

/// The looked-up tables (shared by every plugin that declares them) and
/// the instances of the plugins that read them.
#[derive(Default)]
pub(super) struct LookupTables {
    tables: Tables,
    /// Tables read from the sink since the cache was last dropped.
    loaded: HashSet<String>,
    instances: HashMap<String, LazyInstance>,
}

impl LookupTables {
    /// After a failed attempt or another host's commit: what is cached may
    /// not be what the database holds.
    pub(super) fn invalidate(&mut self) {
        self.loaded.clear();
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tables.clear();
        self.tables.clear_poison();
    }

    /// (table, rows, bytes) cached, for the summary.
    pub(super) fn sizes(&self) -> Vec<(String, usize, usize)> {
        match self.tables.read() {
            Ok(tables) => sizes_by_id(&tables, TableRows::size)
                .into_iter()
                .map(|(t, rows, bytes)| (operator(&t), rows, bytes))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Run the plugins with lookups over their events and apply the looked-up
    /// tables' changes, in batch order; write the changed rows.
    pub(super) async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        events: &[EventWrites],
    ) -> anyhow::Result<DerivedOutputs> {
        let mut needed: BTreeSet<&str> = BTreeSet::new();
        for ev in events {
            needed.extend(ev.tables.iter().map(|c| c.table.as_str()));
            for l in &ev.lookups {
                needed.extend(l.plugin.tables.iter().map(String::as_str));
            }
        }
        for table in needed {
            if !self.loaded.contains(table) {
                let rows = load(conn, d, pipeline, table).await?;
                self.write_tables()?.insert(table.to_string(), rows);
                self.loaded.insert(table.to_string());
            }
        }
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
        let mut dirty: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
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
                    if !waiting.is_empty() && plugin.tables.contains(&change.table) {
                        let waiting = std::mem::take(waiting);
                        self.run(plugin, &waiting, events, &mut report)?;
                    }
                }
                let mut tables = self.write_tables()?;
                let rows = tables.entry(change.table.clone()).or_default();
                if let Some(topic) = rows.topic.as_ref().filter(|t| **t != change.topic) {
                    let reason = format!(
                        "looked-up table `{}` is fed by two topics ({topic} and {}): declare the full topic",
                        change.table, change.topic
                    );
                    drop(tables);
                    report.refused(&ev.record, &format!("lookup:{}", change.table), reason);
                    continue;
                }
                let applied = rows.apply(change);
                drop(tables);
                if applied {
                    dirty
                        .entry(change.table.clone())
                        .or_default()
                        .insert(change.row_key.clone());
                } else {
                    report.duplicates += 1;
                }
            }
        }
        for (plugin, waiting) in &pending {
            if !waiting.is_empty() {
                self.run(plugin, waiting, events, &mut report)?;
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
                    }
                })
                .collect();
            write_state(conn, d, pipeline, &positions_operator(&plugin), &writes).await?;
        }
        for (table, keys) in dirty {
            let writes: Vec<StateWrite> = {
                let tables = self.read_tables()?;
                let rows = tables.get(&table);
                keys.into_iter()
                    .map(|key| StateWrite {
                        kind: KIND,
                        value: rows.and_then(|r| r.rows.get(&key)).map(StoredRow::encode),
                        key,
                        expires: None,
                    })
                    .collect()
            };
            write_state(conn, d, pipeline, &operator(&table), &writes).await?;
        }
        Ok(report)
    }

    /// One `process` call over a plugin's waiting events (a trap: event by
    /// event, so only the poison event is dead-lettered).
    fn run(
        &mut self,
        plugin: &LookupPlugin,
        waiting: &[usize],
        events: &[EventWrites],
        report: &mut DerivedOutputs,
    ) -> anyhow::Result<()> {
        let Some(code) = &plugin.code else {
            anyhow::bail!("plugin {} reads lookups but has no code", plugin.name);
        };
        let access = LookupAccess {
            declared: plugin.tables.clone(),
            tables: self.tables.clone(),
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

    fn write_tables(
        &self,
    ) -> anyhow::Result<std::sync::RwLockWriteGuard<'_, HashMap<String, TableRows>>> {
        self.tables
            .write()
            .map_err(|_| anyhow::anyhow!("the lookup tables are poisoned"))
    }

    fn read_tables(
        &self,
    ) -> anyhow::Result<std::sync::RwLockReadGuard<'_, HashMap<String, TableRows>>> {
        self.tables
            .read()
            .map_err(|_| anyhow::anyhow!("the lookup tables are poisoned"))
    }
}

/// Every stored row of a looked-up table.
async fn load(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    table: &str,
) -> anyhow::Result<TableRows> {
    let mut rows = TableRows::default();
    let mut columns = HashMap::new();
    for (k, v) in read_kind(conn, d, pipeline, &operator(table), KIND).await? {
        let row = StoredRow::decode(&v, &mut columns)
            .with_context(|| format!("reading the lookup table {table}"))?;
        if rows.key_len.is_none() {
            rows.key_len = crate::operators::codec::Reader::new(&k)
                .u32()
                .ok()
                .map(|n| n as usize);
        }
        rows.rows.insert(k, row);
    }
    Ok(rows)
}
