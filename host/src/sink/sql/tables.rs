//! The stored tables in the commit (the caller holds the pipeline's state
//! turn): rows in `sluice_state` (operator `table/<topic>`, kind `t`, keyed
//! by row identity), each topic's table name beside them (operator
//! `tables`, kind `n`, keyed by topic), read when a batch needs them and
//! cached while this host holds the turn, changed rows written in the
//! batch's transaction. Joins read rows by identity; lookups read whole
//! tables by declared name. What a stored table is lives in
//! `operators::table`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLockWriteGuard;

use super::state::{read_kind, read_state, write_state};
use super::*;
use crate::operators::aggregate::StateWrite;
use crate::operators::lookup::Tables;
use crate::operators::table::{operator, topic_of, StoredRow, TableStore};

/// State kind of a stored row.
const ROW: &str = "t";
/// State kind of a topic's table name (under `NAMES`).
const NAME: &str = "n";
/// The `sluice_state.operator` of the topics' names.
const NAMES: &str = "tables";

/// The pipeline's stored tables as this sink has read and changed them.
#[derive(Default)]
pub(super) struct StoredTables {
    store: Tables,
}

impl StoredTables {
    /// What plugin instances read (`host.lookup`).
    pub(super) fn shared(&self) -> Tables {
        self.store.clone()
    }

    /// After a failed attempt or another host's commit: what is cached may
    /// not be what the database holds.
    pub(super) fn invalidate(&mut self) {
        let mut store = self
            .store
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        store.clear();
        drop(store);
        self.store.clear_poison();
    }

    pub(super) fn write_store(&self) -> anyhow::Result<RwLockWriteGuard<'_, TableStore>> {
        self.store
            .write()
            .map_err(|_| anyhow::anyhow!("the stored tables are poisoned"))
    }

    /// (operator, rows, bytes) cached per topic, for the summary.
    pub(super) fn sizes(&self) -> Vec<(String, usize, usize)> {
        let Ok(store) = self.store.read() else {
            return Vec::new();
        };
        let mut out: Vec<(String, usize, usize)> = store
            .tables
            .iter()
            .map(|(topic, rows)| {
                let (n, bytes) = rows.size();
                (operator(topic), n, bytes)
            })
            .collect();
        out.sort();
        out
    }

    /// Make sure the rows with these identities are loaded (present or
    /// known absent).
    pub(super) async fn load_rows(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        row_keys: impl Iterator<Item = &Vec<u8>>,
    ) -> anyhow::Result<()> {
        let mut per_topic: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
        {
            let store = self.write_store()?;
            for k in row_keys {
                if !store.has(k) {
                    let topic = topic_of(k).context("a stored row's identity")?;
                    per_topic.entry(topic).or_default().insert(k.clone());
                }
            }
        }
        for (topic, keys) in per_topic {
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let read = read_state(conn, d, pipeline, &operator(&topic), ROW, &keys).await?;
            let mut columns = HashMap::new();
            let mut rows = Vec::with_capacity(read.len());
            for (k, v) in read {
                let row = match v {
                    Some(v) => StoredRow::decode(&v, &mut columns)
                        .with_context(|| format!("reading the stored table {topic}"))?,
                    None => StoredRow::absent(),
                };
                rows.push((k, row));
            }
            self.write_store()?.load(&topic, rows, false);
        }
        Ok(())
    }

    /// Learn every stored topic's table name (once per cache).
    async fn load_names(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
    ) -> anyhow::Result<()> {
        if self.write_store()?.names_loaded {
            return Ok(());
        }
        let read = read_kind(conn, d, pipeline, NAMES, NAME).await?;
        let mut store = self.write_store()?;
        for (topic, name) in read {
            let topic = String::from_utf8(topic).context("a stored topic's name")?;
            let name = String::from_utf8(name).context("a stored table's name")?;
            store.names.entry(topic).or_insert(name);
        }
        store.names_loaded = true;
        Ok(())
    }

    /// Load whole every stored topic a declared table (a name or a full
    /// topic) means; returns those topics.
    pub(super) async fn load_whole(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        declared: &str,
    ) -> anyhow::Result<Vec<String>> {
        self.load_names(conn, d, pipeline).await?;
        let topics = self.write_store()?.topics_named(declared);
        for topic in &topics {
            let whole = self
                .write_store()?
                .tables
                .get(topic)
                .is_some_and(|t| t.whole);
            if whole {
                continue;
            }
            let mut columns = HashMap::new();
            let mut rows = Vec::new();
            for (k, v) in read_kind(conn, d, pipeline, &operator(topic), ROW).await? {
                let row = StoredRow::decode(&v, &mut columns)
                    .with_context(|| format!("reading the stored table {topic}"))?;
                rows.push((k, row));
            }
            self.write_store()?.load(topic, rows, true);
        }
        Ok(topics)
    }

    /// Write the rows changed since the last write, and the names of
    /// topics stored for the first time.
    pub(super) async fn write(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
    ) -> anyhow::Result<()> {
        let (per_topic, names) = {
            let mut store = self.write_store()?;
            let dirty = std::mem::take(&mut store.dirty);
            let new_names = std::mem::take(&mut store.new_names);
            let per_topic: Vec<(String, Vec<StateWrite>)> = dirty
                .into_iter()
                .map(|(topic, keys)| {
                    let rows = store.tables.get(&topic);
                    let writes = keys
                        .into_iter()
                        .map(|key| StateWrite {
                            kind: ROW,
                            value: rows.and_then(|r| r.rows.get(&key)).map(StoredRow::encode),
                            key,
                            expires: None,
                            fresh: false,
                        })
                        .collect();
                    (topic, writes)
                })
                .collect();
            let names: Vec<StateWrite> = new_names
                .into_iter()
                .filter_map(|topic| {
                    let name = store.names.get(&topic)?;
                    Some(StateWrite {
                        kind: NAME,
                        key: topic.into_bytes(),
                        value: Some(name.clone().into_bytes()),
                        expires: None,
                        fresh: false,
                    })
                })
                .collect();
            (per_topic, names)
        };
        for (topic, writes) in per_topic {
            write_state(conn, d, pipeline, &operator(&topic), &writes).await?;
        }
        write_state(conn, d, pipeline, NAMES, &names).await
    }
}
