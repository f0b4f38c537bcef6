//! The live set of plugins: routing events to the plugins that handle their
//! table, calling each once per batch, and isolating poison events after a
//! trap by replaying the batch one event at a time on fresh instances.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::bindings::{ChangeOutcome, PluginInfo};
use super::lazy::isolating;
use super::runtime::{Compiled, Instance};
use crate::model::{ChangeEvent, Op, RecordId, SinkTable, SinkWrite, TableDesc, Value};
use crate::operators::aggregate::{self, AggregationOp, InputChange, OperatorInput};
use crate::operators::codec::row_identity;
use crate::operators::join::{JoinOp, JoinOpInput};
use crate::operators::keyed::{KeyedInput, KeyedPlugin};
use crate::operators::lookup::{LookupInput, LookupPlugin};
use crate::operators::spec::Semantics;
use crate::operators::table::TableChange;
use crate::operators::watermark;
use crate::operators::Projection;

/// A plugin ready to swap in: compiled, instantiated and described.
pub struct LoadedPlugin {
    /// Identity in the plugin folder (file stem).
    pub id: String,
    pub info: PluginInfo,
    /// Content hash of the `.wasm`, to skip reloads of identical files.
    pub hash: String,
    instance: Instance,
    /// The plugin's aggregations, in declaration order.
    ops: Vec<Arc<AggregationOp>>,
    /// The plugin's joins, in declaration order.
    joins: Vec<Arc<JoinOp>>,
    /// Output tables per (aggregation, source table layout), typed from the
    /// first projection of that layout.
    outputs: HashMap<(usize, usize), (Arc<TableDesc>, Arc<SinkTable>)>,
    /// Plugins with keyed state run in the sink's commit, not here.
    keyed: Option<Arc<KeyedPlugin>>,
    /// So do plugins that read tables with `host.lookup`.
    lookup: Option<Arc<LookupPlugin>>,
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
        let ops = info
            .aggregations
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Arc::new(AggregationOp {
                    id: format!("{}/{}", info.name, spec.output),
                    plugin: info.name.clone(),
                    index: i as u32,
                    spec: spec.clone(),
                    code: Some(compiled.clone()),
                })
            })
            .collect::<Vec<_>>();
        let joins = check_joins(&info, &ops, Some(compiled.clone()))?;
        let keyed = info.keyed_state.then(|| {
            Arc::new(KeyedPlugin::new(
                &info.name,
                info.state_version,
                Some(compiled.clone()),
            ))
        });
        let lookup = (!info.lookups.is_empty()).then(|| {
            Arc::new(LookupPlugin {
                name: info.name.clone(),
                tables: info.lookups.clone(),
                code: Some(compiled.clone()),
            })
        });
        Ok(LoadedPlugin {
            id: id.to_string(),
            info,
            hash,
            instance,
            ops,
            joins,
            outputs: HashMap::new(),
            keyed,
            lookup,
        })
    }

    fn handles(&self, topic: &str, table: &str) -> bool {
        handles(&self.info, topic, table)
    }

    fn rebuild(&mut self) -> anyhow::Result<()> {
        let compiled = self.instance.compiled().clone();
        self.instance = compiled.instantiate(&self.id)?;
        Ok(())
    }
}

fn handles(info: &PluginInfo, topic: &str, table: &str) -> bool {
    info.tables
        .iter()
        .any(|t| t == "*" || t == table || t == topic)
}

/// The plugin's joins as operators, each with the aggregations that read
/// it; refuses joins of tables the plugin does not handle (their events
/// would never reach it) and names that clash.
fn check_joins(
    info: &PluginInfo,
    ops: &[Arc<AggregationOp>],
    compiled: Option<Arc<Compiled>>,
) -> anyhow::Result<Vec<Arc<JoinOp>>> {
    let mut names = std::collections::HashSet::new();
    for j in &info.joins {
        if !names.insert(j.name.as_str()) {
            anyhow::bail!("describe() declares join `{}` twice", j.name);
        }
        if info.tables.contains(&j.name) {
            anyhow::bail!(
                "join `{}` has the name of a table the plugin reads: aggregations could not tell which one they read",
                j.name
            );
        }
        if info.aggregations.iter().any(|a| a.output == j.name) {
            anyhow::bail!(
                "join `{}` has the name of an aggregation's output table: their state would share one name",
                j.name
            );
        }
        for table in [&j.left.table, &j.right.table] {
            if !handles(info, table, table) {
                anyhow::bail!(
                    "join `{}` reads `{table}`, which is not among the plugin's tables ({})",
                    j.name,
                    info.tables.join(", ")
                );
            }
        }
        if info.keyed_state {
            anyhow::bail!(
                "join `{}`: a plugin with keyed state cannot declare joins yet",
                j.name
            );
        }
    }
    Ok(info
        .joins
        .iter()
        .map(|j| Arc::new(JoinOp::new(&info.name, j.clone(), ops, compiled.clone())))
        .collect())
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
    /// What the event means to each aggregation that reads its table.
    pub ops: Vec<OperatorInput>,
    /// The event for each keyed plugin that handles it (run in the commit).
    pub keyed: Vec<KeyedInput>,
    /// What the event means to each join that reads its table.
    pub joins: Vec<JoinOpInput>,
    /// The event for each plugin with lookups that handles it (run in the
    /// commit).
    pub lookups: Vec<LookupInput>,
    /// The event as a change of its stored table (joins and lookups read it).
    pub tables: Vec<TableChange>,
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
        // Stored tables (those plugins look up and regular joins read): kept
        // from their events whoever handles them, one change per event.
        let stored: BTreeSet<&str> = self
            .plugins
            .values()
            .flat_map(|p| {
                let joined = p.joins.iter().filter(|j| j.spec.interval.is_none());
                let sides =
                    joined.flat_map(|j| [j.spec.left.table.as_str(), j.spec.right.table.as_str()]);
                p.info.lookups.iter().map(String::as_str).chain(sides)
            })
            .collect();
        for (i, (ev, _)) in events.iter().enumerate() {
            if !stored.iter().any(|t| TableChange::names(t, ev)) {
                continue;
            }
            routed[i] = true;
            match TableChange::of(ev) {
                Ok(change) => outcomes[i].tables.push(change),
                Err(reason) => outcomes[i]
                    .rejections
                    .push((format!("table:{}", ev.table.topic), reason)),
            }
        }
        for plugin in self.plugins.values_mut() {
            let mine: Vec<usize> = (0..events.len())
                .filter(|&i| plugin.handles(&events[i].0.table.topic, &events[i].0.table.name))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let sub: Vec<(&ChangeEvent, &RecordId)> = mine.iter().map(|&i| events[i]).collect();
            if !plugin.ops.is_empty() {
                project_all(plugin, &sub, &mine, &mut outcomes);
            }
            if !plugin.joins.is_empty() {
                join_inputs(plugin, &sub, &mine, &mut outcomes);
            }
            if let Some(keyed) = &plugin.keyed {
                for &i in &mine {
                    routed[i] = true;
                    outcomes[i].keyed.push(KeyedInput {
                        plugin: keyed.clone(),
                        event: events[i].0.clone(),
                        row_key: row_key(events[i].0),
                    });
                }
                continue;
            }
            if let Some(lookup) = &plugin.lookup {
                for &i in &mine {
                    routed[i] = true;
                    outcomes[i].lookups.push(LookupInput {
                        plugin: lookup.clone(),
                        event: events[i].0.clone(),
                    });
                }
                continue;
            }
            let results = run_isolated(plugin, &sub);
            for (&i, result) in mine.iter().zip(results) {
                routed[i] = true;
                match result {
                    Ok(writes) => {
                        if !writes.is_empty() {
                            outcomes[i].producers.push(plugin.info.name.clone());
                        }
                        let out = &mut outcomes[i].writes;
                        if out.is_empty() {
                            *out = writes;
                        } else {
                            out.extend(writes);
                        }
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

/// What each event means to each of the plugin's joins (a self-join
/// reads a change on both sides); a change a join cannot read is rejected.
fn join_inputs(
    plugin: &LoadedPlugin,
    events: &[(&ChangeEvent, &RecordId)],
    slots: &[usize],
    outcomes: &mut [EventOutcome],
) {
    for op in &plugin.joins {
        for (i, (ev, id)) in events.iter().enumerate() {
            for side in op.spec.sides_of(&ev.table.topic, &ev.table.name) {
                match op.spec.input(side, ev) {
                    Ok(input) => outcomes[slots[i]].joins.push(JoinOpInput {
                        op: op.clone(),
                        input,
                        commit_time_ms: ev.commit_time_ms,
                        partition: watermark::partition_key(&ev.table.topic, id.partition),
                    }),
                    Err(reason) => outcomes[slots[i]]
                        .rejections
                        .push((plugin.info.name.clone(), reason)),
                }
            }
        }
    }
}

/// Encode a source row's identity: its topic and primary key.
fn row_key(ev: &ChangeEvent) -> Vec<u8> {
    row_identity(&ev.table.topic, &ev.key)
}

/// Project the events for each of the plugin's aggregations (one `project`
/// call per aggregation and source layout) and add the operator inputs to
/// the outcomes; a row the plugin refuses, or that traps, is rejected.
fn project_all(
    plugin: &mut LoadedPlugin,
    events: &[(&ChangeEvent, &RecordId)],
    slots: &[usize],
    outcomes: &mut [EventOutcome],
) {
    for (a, op) in plugin.ops.clone().iter().enumerate() {
        // Aggregations of a join's rows are fed by the join, in the commit.
        if plugin.joins.iter().any(|j| j.spec.name == op.spec.source) {
            continue;
        }
        // Rows to project, grouped by source layout, in batch order.
        let mut layouts: Vec<(Arc<TableDesc>, Vec<usize>)> = Vec::new();
        let mut inputs: Vec<Option<OperatorInput>> = vec![None; events.len()];
        for (i, (ev, _)) in events.iter().enumerate() {
            if !op.spec.reads(&ev.table.topic, &ev.table.name) {
                continue;
            }
            let change = match (ev.op, &ev.after, op.spec.semantics) {
                (Op::Truncate, _, _) => {
                    outcomes[slots[i]].rejections.push((
                        plugin.info.name.clone(),
                        format!(
                            "TRUNCATE of {} cannot be applied to aggregation `{}` yet; the aggregate keeps the table's rows",
                            ev.table.topic, op.spec.output
                        ),
                    ));
                    continue;
                }
                (Op::Delete, _, Semantics::Append) => continue,
                (Op::Delete, _, Semantics::Changelog) => InputChange::Delete,
                (_, Some(_), _) => {
                    match layouts.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &ev.table)) {
                        Some((_, rows)) => rows.push(i),
                        None => layouts.push((ev.table.clone(), vec![i])),
                    }
                    InputChange::Row(None)
                }
                (_, None, _) => {
                    outcomes[slots[i]].rejections.push((
                        plugin.info.name.clone(),
                        format!("{:?} event without an `after` row", ev.op),
                    ));
                    continue;
                }
            };
            inputs[i] = Some(OperatorInput {
                op: op.clone(),
                output: Arc::new(SinkTable {
                    name: op.spec.output.clone(),
                    columns: Vec::new(),
                    key: Vec::new(),
                    rewritten: true,
                }),
                row_key: row_key(ev),
                order: ev.source_order,
                change,
                commit_time_ms: ev.commit_time_ms,
                partition: watermark::partition_key(&ev.table.topic, events[i].1.partition),
            });
        }
        for (table, rows) in &layouts {
            let images: Vec<&[Value]> = rows
                .iter()
                .map(|&i| events[i].0.after.as_deref().unwrap_or(&[]))
                .collect();
            let projected = project_isolated(plugin, a as u32, table, &images);
            for (&i, result) in rows.iter().zip(projected) {
                match result {
                    Ok(p) => {
                        if let Some(p) = &p {
                            let key = (a, Arc::as_ptr(table) as usize);
                            plugin.outputs.entry(key).or_insert_with(|| {
                                let t = aggregate::output_table(&op.spec, table, Some(p));
                                (table.clone(), Arc::new(t))
                            });
                        }
                        if let Some(input) = &mut inputs[i] {
                            input.change = InputChange::Row(p);
                        }
                    }
                    Err(reason) => {
                        inputs[i] = None;
                        outcomes[slots[i]]
                            .rejections
                            .push((plugin.info.name.clone(), reason));
                    }
                }
            }
        }
        for (i, input) in inputs.into_iter().enumerate() {
            let Some(mut input) = input else { continue };
            let table = &events[i].0.table;
            let key = (a, Arc::as_ptr(table) as usize);
            let (_, output) = plugin.outputs.entry(key).or_insert_with(|| {
                let t = aggregate::output_table(&op.spec, table, None);
                (table.clone(), Arc::new(t))
            });
            input.output = output.clone();
            // Most records feed one aggregation: a Vec's first push would
            // make room for four (~0.5 KB each record of a catching-up batch).
            let ops = &mut outcomes[slots[i]].ops;
            if ops.capacity() == 0 {
                ops.reserve_exact(1);
            }
            ops.push(input);
        }
    }
}

/// `project` over rows; after a trap, row by row on fresh instances so only
/// the poison row is rejected.
fn project_isolated(
    plugin: &mut LoadedPlugin,
    aggregation: u32,
    table: &TableDesc,
    rows: &[&[Value]],
) -> Vec<Result<Option<Projection>, String>> {
    let mut broken = false;
    let name = plugin.info.name.clone();
    isolating(&name, rows, |rows| {
        if broken {
            plugin
                .rebuild()
                .map_err(|e| format!("the instance could not be rebuilt after a trap: {e:#}"))?;
        }
        let out = plugin.instance.project(aggregation, table, rows);
        broken = out.is_err();
        out
    })
}

/// One `process` call. `Err` is a trap (or a broken answer): the whole call failed.
fn call(
    plugin: &mut LoadedPlugin,
    events: &[(&ChangeEvent, &RecordId)],
) -> Result<Vec<ChangeOutcome>, String> {
    plugin.instance.process(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ColumnType;
    use crate::operators::join::spec::{JoinColumn, JoinSideSpec, JoinSpec};
    use crate::operators::join::{JoinKind, Side};

    fn info(tables: &[&str], joins: Vec<JoinSpec>) -> PluginInfo {
        PluginInfo {
            name: "p".into(),
            version: "1".into(),
            interface: "0.3.0",
            tables: tables.iter().map(|t| t.to_string()).collect(),
            outputs: Vec::new(),
            state_version: 0,
            aggregations: Vec::new(),
            keyed_state: false,
            lookups: Vec::new(),
            joins,
        }
    }

    fn join(name: &str, left: &str, right: &str) -> JoinSpec {
        JoinSpec {
            name: name.into(),
            kind: JoinKind::Inner,
            left: JoinSideSpec {
                table: left.into(),
                on: vec!["customer_id".into()],
            },
            right: JoinSideSpec {
                table: right.into(),
                on: vec!["id".into()],
            },
            columns: vec![JoinColumn {
                name: "order_id".into(),
                side: Side::Left,
                column: "order_id".into(),
                ty: ColumnType::Int,
                nullable: false,
                decimal: None,
            }],
            key: vec!["order_id".into()],
            output: None,
            interval: None,
        }
    }

    fn refusal(info: &PluginInfo) -> String {
        match check_joins(info, &[], None) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn joins_a_plugin_could_not_run_are_refused_at_load() {
        let ok = info(
            &["orders", "customers"],
            vec![join("j", "orders", "customers")],
        );
        assert_eq!(check_joins(&ok, &[], None).unwrap().len(), 1);
        let everything = info(&["*"], vec![join("j", "orders", "customers")]);
        assert!(check_joins(&everything, &[], None).is_ok());
        // a table the plugin never receives
        let unrouted = info(&["orders"], vec![join("j", "orders", "customers")]);
        assert!(
            refusal(&unrouted).contains("reads `customers`"),
            "{}",
            refusal(&unrouted)
        );
        // the same name twice
        let twice = info(
            &["orders", "customers"],
            vec![
                join("j", "orders", "customers"),
                join("j", "customers", "orders"),
            ],
        );
        assert!(refusal(&twice).contains("twice"));
        // a join named like a table: aggregations could not tell them apart
        let clash = info(
            &["orders", "customers"],
            vec![join("orders", "orders", "customers")],
        );
        assert!(refusal(&clash).contains("name of a table"));
        let mut keyed = info(
            &["orders", "customers"],
            vec![join("j", "orders", "customers")],
        );
        keyed.keyed_state = true;
        assert!(refusal(&keyed).contains("keyed state"));
    }
}
