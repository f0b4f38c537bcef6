//! The live set of plugins: routing events to the plugins that handle their
//! table, calling each once per batch, and isolating poison events after a
//! trap by replaying the batch one event at a time on fresh instances.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::{ChangeOutcome, PluginInfo};
use super::runtime::{Compiled, Instance};
use crate::model::{ChangeEvent, RecordId, SinkWrite};

/// A plugin ready to swap in: compiled, instantiated and described.
pub struct LoadedPlugin {
    /// Identity in the plugin folder (file stem).
    pub id: String,
    pub info: PluginInfo,
    /// Content hash of the `.wasm`, to skip reloads of identical files.
    pub hash: String,
    instance: Instance,
}

impl LoadedPlugin {
    /// Instantiate and describe a compiled plugin.
    pub fn new(id: &str, hash: String, compiled: &Arc<Compiled>) -> anyhow::Result<LoadedPlugin> {
        let mut instance = compiled.instantiate(id)?;
        let info = instance
            .describe()
            .map_err(|e| anyhow::anyhow!("describe() failed: {e}"))?;
        if info.name.trim().is_empty() {
            anyhow::bail!("describe() returned an empty plugin name");
        }
        if info.tables.is_empty() {
            anyhow::bail!("describe() lists no tables: the plugin would never be called");
        }
        Ok(LoadedPlugin {
            id: id.to_string(),
            info,
            hash,
            instance,
        })
    }

    fn handles(&self, topic: &str, table: &str) -> bool {
        self.info
            .tables
            .iter()
            .any(|t| t == "*" || t == table || t == topic)
    }

    fn rebuild(&mut self) -> anyhow::Result<()> {
        let compiled = self.instance.compiled().clone();
        self.instance = compiled.instantiate(&self.id)?;
        Ok(())
    }
}

/// What one event became after every plugin that handles it ran.
#[derive(Debug, Default)]
pub struct EventOutcome {
    pub writes: Vec<SinkWrite>,
    /// Plugins whose writes these are.
    pub producers: Vec<String>,
    /// (plugin, reason) for each plugin that rejected the event.
    pub rejections: Vec<(String, String)>,
    /// No plugin handles this event's table.
    pub unrouted: bool,
}

/// Plugins by id; processing order is the id order, so results are stable.
#[derive(Default)]
pub struct PluginSet {
    plugins: BTreeMap<String, LoadedPlugin>,
}

impl PluginSet {
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn len(&self) -> usize {
        self.plugins.len()
    }

    pub fn hash_of(&self, id: &str) -> Option<&str> {
        self.plugins.get(id).map(|p| p.hash.as_str())
    }

    /// Add or replace a plugin (at a batch boundary: the caller guarantees it).
    pub fn install(&mut self, plugin: LoadedPlugin) -> Option<PluginInfo> {
        if let Some(twin) = self
            .plugins
            .values()
            .find(|p| p.id != plugin.id && p.info.name == plugin.info.name)
        {
            tracing::warn!(
                plugin = %plugin.info.name,
                files = %format!("{}.wasm, {}.wasm", twin.id, plugin.id),
                "two plugin files describe the same plugin: both run and both write; remove one"
            );
        }
        self.plugins
            .insert(plugin.id.clone(), plugin)
            .map(|old| old.info)
    }

    pub fn remove(&mut self, id: &str) -> Option<PluginInfo> {
        self.plugins.remove(id).map(|p| p.info)
    }

    /// Describe the loaded plugins for logs.
    pub fn summary(&self) -> Vec<String> {
        self.plugins
            .values()
            .map(|p| {
                format!(
                    "{} {} ({}: {}; WIT {})",
                    p.info.name,
                    p.info.version,
                    p.id,
                    p.info.tables.join(","),
                    p.info.interface
                )
            })
            .collect()
    }

    /// Run every plugin over the events it handles; one outcome per event.
    pub fn process(&mut self, events: &[(&ChangeEvent, &RecordId)]) -> Vec<EventOutcome> {
        let mut outcomes: Vec<EventOutcome> =
            events.iter().map(|_| EventOutcome::default()).collect();
        let mut routed = vec![false; events.len()];
        for plugin in self.plugins.values_mut() {
            let mine: Vec<usize> = (0..events.len())
                .filter(|&i| plugin.handles(&events[i].0.table.topic, &events[i].0.table.name))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let sub: Vec<(&ChangeEvent, &RecordId)> = mine.iter().map(|&i| events[i]).collect();
            let results = run_isolated(plugin, &sub);
            for (&i, result) in mine.iter().zip(results) {
                routed[i] = true;
                match result {
                    Ok(writes) => {
                        if !writes.is_empty() {
                            outcomes[i].producers.push(plugin.info.name.clone());
                        }
                        outcomes[i].writes.extend(writes)
                    }
                    Err(reason) => outcomes[i]
                        .rejections
                        .push((plugin.info.name.clone(), reason)),
                }
            }
        }
        for (o, r) in outcomes.iter_mut().zip(routed) {
            o.unrouted = !r;
        }
        outcomes
    }
}

/// Call a plugin on a batch; after a trap, replay one event at a time on fresh
/// instances so only the poison event is rejected.
fn run_isolated(
    plugin: &mut LoadedPlugin,
    events: &[(&ChangeEvent, &RecordId)],
) -> Vec<ChangeOutcome> {
    match call(plugin, events) {
        Ok(results) => results,
        Err(trap) => {
            tracing::warn!(plugin = %plugin.info.name, events = events.len(), "{trap}; replaying the batch event by event to isolate the poison event");
            if let Err(e) = plugin.rebuild() {
                let reason = format!("{trap}; and the instance could not be rebuilt: {e:#}");
                return events.iter().map(|_| Err(reason.clone())).collect();
            }
            if events.len() == 1 {
                return vec![Err(trap)];
            }
            events
                .iter()
                .map(|ev| match call(plugin, std::slice::from_ref(ev)) {
                    Ok(mut one) => one
                        .pop()
                        .unwrap_or_else(|| Err("plugin returned no result".into())),
                    Err(trap) => {
                        if let Err(e) = plugin.rebuild() {
                            return Err(format!(
                                "{trap}; and the instance could not be rebuilt: {e:#}"
                            ));
                        }
                        Err(trap)
                    }
                })
                .collect()
        }
    }
}

/// One `process` call. `Err` is a trap (or a broken answer): the whole call failed.
fn call(
    plugin: &mut LoadedPlugin,
    events: &[(&ChangeEvent, &RecordId)],
) -> Result<Vec<ChangeOutcome>, String> {
    plugin.instance.process(events)
}
