//! Plugins with keyed state, run inside the batch's transaction: the
//! stored states of the rows the batch changes are read (after the offsets
//! are claimed, so this host owns the partitions that carry those rows),
//! the plugin runs, and its outputs and the new states are written in the
//! same transaction as the offsets. What the operator does lives in
//! `operators::keyed`; this is the database and instance side.

use super::derived::DerivedOutputs;
use super::state::{per_operator, read_state, write_state};
use super::*;
use crate::model::{ChangeEvent, RecordId};
use crate::operators::aggregate::StateWrite;
use crate::operators::keyed::{self, KeyedCalls, KeyedInput, KeyedOutcome, RowState};
use crate::plugin::bindings::KeyedAnswer;
use crate::plugin::lazy::LazyInstance;
use crate::plugin::runtime::off_runtime;

/// Instances of the keyed plugins this sink has run, by plugin name.
#[derive(Default)]
pub(super) struct KeyedPlugins {
    instances: HashMap<String, LazyInstance>,
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
    ) -> anyhow::Result<DerivedOutputs> {
        let mut report = DerivedOutputs::default();
        // Inputs per (plugin, state version), in batch order.
        let per_op = per_operator(events, |ev| &ev.keyed, |i| &i.plugin.operator);
        for (op, inputs) in per_op {
            let Some((_, first)) = inputs.first() else {
                continue;
            };
            let plugin = first.plugin.clone();
            let Some(code) = plugin.code.clone() else {
                anyhow::bail!("keyed plugin {} has no code", plugin.name);
            };
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
            let calls = LazyInstance::of(&mut self.instances, &plugin.name, &code, &plugin.name);
            let run = off_runtime(|| keyed::run(&refs, &stored, calls));
            for ((e, _), outcome) in inputs.iter().zip(run.outcomes) {
                let ev = &events[*e];
                match outcome {
                    KeyedOutcome::Duplicate => report.duplicates += 1,
                    KeyedOutcome::Applied(writes) => {
                        report.written(&ev.record, &plugin.name, writes)
                    }
                    KeyedOutcome::Rejected(reason) => {
                        report.refused(&ev.record, &plugin.name, reason)
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
                    fresh: false,
                })
                .collect();
            write_state(conn, d, pipeline, &op, &writes).await?;
        }
        Ok(report)
    }
}

impl KeyedCalls for LazyInstance {
    fn process(
        &mut self,
        events: &[(&ChangeEvent, &RecordId)],
        states: &[(u32, Vec<u8>)],
    ) -> Result<KeyedAnswer, String> {
        self.call(|i| i.process_keyed(events, states))
    }
}
