//! Plugins with keyed state, run inside the batch's transaction: the
//! stored states of the rows the batch changes are read (after the offsets
//! are claimed, so this host owns the partitions that carry those rows),
//! the plugin runs, and its outputs and the new states are written in the
//! same transaction as the offsets. What the operator does lives in
//! `operators::keyed`; this is the database and instance side.

use super::state::{push_per_operator, read_state, write_state};
use super::*;
use crate::model::{ChangeEvent, DeadLetter, RecordId, Stage};
use crate::operators::aggregate::StateWrite;
use crate::operators::keyed::{self, KeyedCalls, KeyedInput, KeyedOutcome, RowState};
use crate::plugin::bindings::KeyedAnswer;
use crate::plugin::runtime::{off_runtime, Compiled, Instance};

/// Instances of the keyed plugins this sink has run, by plugin name.
#[derive(Default)]
pub(super) struct KeyedPlugins {
    instances: HashMap<String, KeyedInstance>,
}

/// What the keyed plugins did in one attempt.
#[derive(Default)]
pub(super) struct KeyedReport {
    /// The plugins' writes, per source record (written after the events'
    /// own writes, before aggregations).
    pub(super) outputs: Vec<EventWrites>,
    /// Changes the plugins refused or trapped on.
    pub(super) dead: Vec<DeadLetter>,
    /// Re-deliveries skipped.
    pub(super) duplicates: u64,
}

impl KeyedPlugins {
    /// Run every keyed plugin over its inputs in `events`, reading and
    /// writing its state through `conn` (the batch's transaction).
    pub(super) async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        events: &[EventWrites],
    ) -> anyhow::Result<KeyedReport> {
        let mut report = KeyedReport::default();
        // Inputs per (plugin, state version), in batch order.
        let mut per_op: Vec<(String, Vec<(usize, &KeyedInput)>)> = Vec::new();
        for (e, ev) in events.iter().enumerate() {
            for input in &ev.keyed {
                push_per_operator(&mut per_op, &input.plugin.operator, e, input);
            }
        }
        for (op, inputs) in per_op {
            let Some((_, first)) = inputs.first() else {
                continue;
            };
            let plugin = first.plugin.clone();
            let Some(code) = plugin.code.clone() else {
                anyhow::bail!("keyed plugin {} has no code", plugin.name);
            };
            let stale = self
                .instances
                .get(&plugin.name)
                .is_none_or(|i| !Arc::ptr_eq(&i.code, &code));
            if stale {
                self.instances.insert(
                    plugin.name.clone(),
                    KeyedInstance {
                        code,
                        name: plugin.name.clone(),
                        instance: None,
                    },
                );
            }
            let mut keys: Vec<Vec<u8>> = inputs.iter().map(|(_, i)| i.row_key.clone()).collect();
            keys.sort();
            keys.dedup();
            let mut stored: HashMap<Vec<u8>, RowState> = HashMap::new();
            for (k, v) in read_state(conn, d, pipeline, &op, keyed::KIND, &keys).await? {
                if let Some(v) = v {
                    let row = RowState::decode(&v)
                        .with_context(|| format!("reading the keyed state of {op}"))?;
                    stored.insert(k, row);
                }
            }
            let refs: Vec<(&KeyedInput, &RecordId)> = inputs
                .iter()
                .map(|(e, i)| (*i, &events[*e].record.id))
                .collect();
            let Some(calls) = self.instances.get_mut(&plugin.name) else {
                continue;
            };
            let run = off_runtime(|| keyed::run(&refs, &stored, calls));
            for ((e, _), outcome) in inputs.iter().zip(run.outcomes) {
                let ev = &events[*e];
                match outcome {
                    KeyedOutcome::Duplicate => report.duplicates += 1,
                    KeyedOutcome::Applied(writes) if writes.is_empty() => {}
                    KeyedOutcome::Applied(writes) => report.outputs.push(EventWrites {
                        record: ev.record.clone(),
                        plugins: Some(plugin.name.clone()),
                        writes,
                        ops: Vec::new(),
                        keyed: Vec::new(),
                    }),
                    KeyedOutcome::Rejected(reason) => {
                        tracing::warn!(
                            topic = %ev.record.id.topic, partition = ev.record.id.partition,
                            offset = ev.record.id.offset, plugin = %plugin.name,
                            "dead-lettered: {reason}"
                        );
                        report.dead.push(DeadLetter {
                            record: ev.record.clone(),
                            stage: Stage::Plugin,
                            plugin: Some(plugin.name.clone()),
                            reason,
                        });
                    }
                }
            }
            let writes: Vec<StateWrite> = run
                .writes
                .into_iter()
                .map(|(key, row)| StateWrite {
                    kind: keyed::KIND,
                    key,
                    value: row.map(|r| r.encode()),
                    expires: None,
                })
                .collect();
            write_state(conn, d, pipeline, &op, &writes).await?;
        }
        Ok(report)
    }
}

/// One keyed plugin version's instance, made on first use and dropped
/// after a trap (the next call gets a fresh one).
struct KeyedInstance {
    code: Arc<Compiled>,
    name: String,
    instance: Option<Instance>,
}

impl KeyedCalls for KeyedInstance {
    fn process(
        &mut self,
        events: &[(&ChangeEvent, &RecordId)],
        states: &[(u32, Vec<u8>)],
    ) -> Result<KeyedAnswer, String> {
        let instance = match &mut self.instance {
            Some(i) => i,
            None => self.instance.insert(
                self.code
                    .instantiate(&self.name)
                    .map_err(|e| format!("instantiating the plugin: {e:#}"))?,
            ),
        };
        let out = instance.process_keyed(events, states);
        if out.is_err() {
            self.instance = None;
        }
        out
    }
}

/// What the keyed plugins' part of a commit wrote and refused.
#[derive(Default)]
pub(super) struct KeyedCommitted {
    /// Changes the plugins refused or trapped on, and outputs the sink
    /// could not take.
    pub(super) dead: Vec<DeadLetter>,
    /// How many of `dead` the sink refused (counted once committed).
    pub(super) sink_rejects: u64,
    pub(super) writes: u64,
    pub(super) duplicates: u64,
}

impl KeyedCommitted {
    /// How many of `dead` the plugins refused (the rest the sink did).
    pub(super) fn plugin_refusals(&self) -> u64 {
        self.dead.len() as u64 - self.sink_rejects
    }
}

/// Savepoint, rollback and release of the keyed plugins' grouped writes
/// (a row error there falls back to writing them event by event).
const KEYED_SAVEPOINT: [&str; 3] = [
    "SAVEPOINT sluice_keyed",
    "ROLLBACK TO SAVEPOINT sluice_keyed",
    "RELEASE SAVEPOINT sluice_keyed",
];

/// Tables the keyed plugins' outputs write that the sink has neither
/// prepared nor refused (the attempt must be rolled back to make them).
pub(super) fn unprepared(
    run: &KeyedReport,
    refused: &HashMap<SinkTable, String>,
    tables: &HashMap<String, ddl::TableState>,
) -> Vec<SinkTable> {
    let mut missing: Vec<SinkTable> = Vec::new();
    for w in run.outputs.iter().flat_map(|o| &o.writes) {
        let t = &**w.table();
        if !refused.contains_key(t) && !table_ready(tables, t) && !missing.contains(t) {
            missing.push(t.clone());
        }
    }
    missing
}

/// Write the keyed plugins' outputs in the batch's transaction: grouped,
/// or event by event after a row error (an output the sink cannot take is
/// dead-lettered alone).
pub(super) async fn write_outputs(
    tx: &mut AnyConnection,
    d: Dialect,
    sql: &mut HashMap<Arc<SinkTable>, TableSql>,
    refused: &HashMap<SinkTable, String>,
    run: KeyedReport,
) -> anyhow::Result<KeyedCommitted> {
    let mut done = KeyedCommitted {
        dead: run.dead,
        duplicates: run.duplicates,
        ..KeyedCommitted::default()
    };
    let no_broken = HashMap::new();
    let mut outputs = Vec::with_capacity(run.outputs.len());
    for out in run.outputs {
        let why = out
            .writes
            .iter()
            .find_map(|w| refused.get(&**w.table()).cloned())
            .or_else(|| precheck(d, &out, &no_broken));
        match why {
            None => outputs.push(out),
            Some(reason) => {
                done.sink_rejects += 1;
                done.dead.push(sink_dead_letter(out, reason));
            }
        }
    }
    sqlx::query(KEYED_SAVEPOINT[0]).execute(&mut *tx).await?;
    match write_grouped(tx, d, sql, outputs.iter().flat_map(|o| &o.writes)).await {
        Ok(n) => {
            done.writes += n;
            sqlx::query(KEYED_SAVEPOINT[2]).execute(&mut *tx).await?;
        }
        Err(e) if d.retry_event_by_event(&e) => {
            sqlx::query(KEYED_SAVEPOINT[1]).execute(&mut *tx).await?;
            sqlx::query(KEYED_SAVEPOINT[2]).execute(&mut *tx).await?;
            for out in outputs {
                match write_event(tx, d, sql, &out).await {
                    Ok(n) => done.writes += n,
                    Err(SinkError::Rejected(reason)) => {
                        done.sink_rejects += 1;
                        done.dead.push(sink_dead_letter(out, reason));
                    }
                    Err(SinkError::Database(e)) => {
                        return Err(anyhow::Error::new(e).context("writing the keyed plugins' rows"))
                    }
                }
            }
        }
        Err(e) => return Err(anyhow::Error::new(e).context("writing the keyed plugins' rows")),
    }
    Ok(done)
}

/// Whether a table the keyed plugins write exists as declared (their
/// tables are only known inside the transaction, and DDL cannot run there).
pub(super) fn table_ready(tables: &HashMap<String, ddl::TableState>, t: &SinkTable) -> bool {
    tables.get(&t.name).is_some_and(|s| {
        let key: Vec<&str> = t
            .key
            .iter()
            .filter_map(|&k| t.columns.get(k as usize).map(|c| c.name.as_str()))
            .collect();
        s.key.iter().map(String::as_str).eq(key)
            && t.columns.iter().all(|c| s.columns.contains(&c.name))
    })
}
