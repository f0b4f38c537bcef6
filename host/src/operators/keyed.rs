//! Keyed state: bytes a plugin keeps per source row (its table and primary
//! key) for logic that depends on a row's history — a status's first value,
//! how often it changed. The plugin runs inside the sink's transaction
//! (`process-keyed`) with the stored states of the rows a batch changes;
//! the new states commit with the outputs and the offsets, so a crash or a
//! rebalance never applies a change to a state twice (a row's key lives in
//! one source partition, and the offset fence lets one host commit it).
//!
//! Each stored state remembers the source position of the last change
//! applied to it; a change not newer than that (a Debezium re-delivery, a
//! replayed snapshot row) is skipped before the plugin sees it. A row
//! whose state the plugin deleted keeps that position (a few bytes) so the
//! re-delivery of its older changes is recognised too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::codec::{self, CorruptState, Reader, Writer};
use crate::model::{ChangeEvent, RecordId, SinkWrite, SourceOrder};
use crate::plugin::bindings::KeyedAnswer;
use crate::plugin::runtime::Compiled;

/// `sluice_state.kind` of keyed rows.
pub const KIND: &str = "k";

/// A plugin version with keyed state.
#[derive(Debug)]
pub struct KeyedPlugin {
    pub name: String,
    /// The `sluice_state.operator` its rows are stored under: the name and
    /// the `state-version` (a new layout starts from empty state).
    pub operator: String,
    /// `None` only in tests that call no plugin.
    pub code: Option<Arc<Compiled>>,
}

impl KeyedPlugin {
    pub fn new(name: &str, state_version: u32, code: Option<Arc<Compiled>>) -> KeyedPlugin {
        KeyedPlugin {
            name: name.to_string(),
            operator: format!("{name}#keyed.v{state_version}"),
            code,
        }
    }
}

/// One change for a keyed plugin, carried to the sink's commit.
#[derive(Debug)]
pub struct KeyedInput {
    pub plugin: Arc<KeyedPlugin>,
    pub event: ChangeEvent,
    /// The source row's identity: topic and primary key, encoded.
    pub row_key: Vec<u8>,
}

/// What the sink holds for one source row.
#[derive(Clone, Debug, PartialEq)]
pub struct RowState {
    /// Position of the last change applied.
    pub order: Option<SourceOrder>,
    /// The plugin's bytes; `None` once it deleted them.
    pub state: Option<Vec<u8>>,
}

impl RowState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(codec::VERSION);
        w.order(self.order);
        match &self.state {
            Some(s) => {
                w.u8(1);
                w.bytes(s);
            }
            None => w.u8(0),
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<RowState, CorruptState> {
        let mut r = Reader::new(bytes);
        if r.u8()? != codec::VERSION {
            return Err(CorruptState("keyed state version"));
        }
        let order = r.order()?;
        let state = match r.u8()? {
            0 => None,
            _ => Some(r.bytes()?.to_vec()),
        };
        Ok(RowState { order, state })
    }
}

/// The plugin side: `process-keyed` on an instance of the plugin version.
/// `Err` is a trap or a broken answer (the instance is then replaced).
pub trait KeyedCalls {
    fn process(
        &mut self,
        events: &[(&ChangeEvent, &RecordId)],
        states: &[(u32, Vec<u8>)],
    ) -> Result<KeyedAnswer, String>;
}

/// What became of one input.
#[derive(Debug)]
pub enum KeyedOutcome {
    /// Not newer than the row's state: already applied.
    Duplicate,
    /// Applied; these are the plugin's writes for it.
    Applied(Vec<SinkWrite>),
    /// The plugin refused it (or trapped on it); its row's state is as before.
    Rejected(String),
}

/// One batch of a keyed plugin, applied.
#[derive(Debug, Default)]
pub struct KeyedRun {
    /// One per input, in order.
    pub outcomes: Vec<KeyedOutcome>,
    /// Rows whose stored state changes: the new state, or `None` to delete.
    pub writes: Vec<(Vec<u8>, Option<RowState>)>,
}

/// Apply `inputs` (one plugin's, in batch order) to `stored` (the state of
/// every row they touch, as committed): drop re-deliveries, call the plugin
/// once for the batch, and, if that traps, once per change on a fresh
/// instance so only the poison change is rejected.
pub fn run(
    inputs: &[(&KeyedInput, &RecordId)],
    stored: &HashMap<Vec<u8>, RowState>,
    calls: &mut dyn KeyedCalls,
) -> KeyedRun {
    let mut outcomes: Vec<Option<KeyedOutcome>> = inputs.iter().map(|_| None).collect();
    // Re-deliveries: not newer than the row's last position (stored, or of
    // an earlier change in this batch).
    let mut last: HashMap<&[u8], SourceOrder> = HashMap::new();
    let mut accepted: Vec<usize> = Vec::new();
    for (i, (input, _)) in inputs.iter().enumerate() {
        let key = input.row_key.as_slice();
        let before = last
            .get(key)
            .copied()
            .or_else(|| stored.get(key).and_then(|s| s.order));
        match (input.event.source_order, before) {
            (Some(new), Some(old)) if new <= old => outcomes[i] = Some(KeyedOutcome::Duplicate),
            (new, _) => {
                if let Some(new) = new {
                    last.insert(key, new);
                }
                accepted.push(i);
            }
        }
    }
    let mut current: HashMap<&[u8], RowState> = HashMap::new();
    for &i in &accepted {
        let key = inputs[i].0.row_key.as_slice();
        current.entry(key).or_insert_with(|| {
            stored.get(key).cloned().unwrap_or(RowState {
                order: None,
                state: None,
            })
        });
    }
    if !accepted.is_empty() {
        let events: Vec<(&ChangeEvent, &RecordId)> = accepted
            .iter()
            .map(|&i| (&inputs[i].0.event, inputs[i].1))
            .collect();
        let mut first_seen: HashSet<&[u8]> = HashSet::new();
        let states: Vec<(u32, Vec<u8>)> = accepted
            .iter()
            .enumerate()
            .filter_map(|(j, &i)| {
                let key = inputs[i].0.row_key.as_slice();
                first_seen.insert(key).then_some(())?;
                let state = current.get(key)?.state.clone()?;
                Some((j as u32, state))
            })
            .collect();
        match calls.process(&events, &states) {
            Ok((results, writes)) => {
                for (j, result) in results.into_iter().enumerate() {
                    let i = accepted[j];
                    outcomes[i] = Some(applied(inputs[i].0, result, &mut current));
                }
                for (j, state) in writes {
                    let key = inputs[accepted[j as usize]].0.row_key.as_slice();
                    if let Some(row) = current.get_mut(key) {
                        row.state = state;
                    }
                }
            }
            Err(trap) => {
                tracing::warn!(plugin = %inputs[accepted[0]].0.plugin.name, changes = accepted.len(), "{trap}; running the batch change by change to isolate the poison change");
                for &i in &accepted {
                    let input = inputs[i].0;
                    let key = input.row_key.as_slice();
                    let state = current.get(key).and_then(|r| r.state.clone());
                    let states: Vec<(u32, Vec<u8>)> = state.map(|s| (0, s)).into_iter().collect();
                    let one = [(&input.event, inputs[i].1)];
                    outcomes[i] = Some(match calls.process(&one, &states) {
                        Ok((mut results, writes)) => {
                            let result = results
                                .pop()
                                .unwrap_or_else(|| Err("the plugin returned no result".into()));
                            let outcome = applied(input, result, &mut current);
                            if matches!(outcome, KeyedOutcome::Applied(_)) {
                                if let (Some(row), Some((_, state))) =
                                    (current.get_mut(key), writes.into_iter().last())
                                {
                                    row.state = state;
                                }
                            }
                            outcome
                        }
                        Err(trap) => KeyedOutcome::Rejected(trap),
                    });
                }
            }
        }
    }
    let mut writes: Vec<(Vec<u8>, Option<RowState>)> = Vec::new();
    let mut keys: Vec<&[u8]> = current.keys().copied().collect();
    keys.sort();
    for key in keys {
        let row = &current[key];
        let unchanged = match stored.get(key) {
            Some(before) => before == row,
            None => row.order.is_none() && row.state.is_none(),
        };
        if unchanged {
            continue;
        }
        let keep = row.state.is_some() || row.order.is_some();
        writes.push((key.to_vec(), keep.then(|| row.clone())));
    }
    KeyedRun {
        outcomes: outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| KeyedOutcome::Rejected("not processed".into())))
            .collect(),
        writes,
    }
}

/// An input's outcome from the plugin's result; an applied change moves
/// its row's position on.
fn applied(
    input: &KeyedInput,
    result: Result<Vec<SinkWrite>, String>,
    current: &mut HashMap<&[u8], RowState>,
) -> KeyedOutcome {
    match result {
        Ok(writes) => {
            if let (Some(order), Some(row)) = (
                input.event.source_order,
                current.get_mut(input.row_key.as_slice()),
            ) {
                row.order = Some(row.order.map_or(order, |o| o.max(order)));
            }
            KeyedOutcome::Applied(writes)
        }
        Err(reason) => KeyedOutcome::Rejected(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Op, TableDesc, Value};

    fn table() -> Arc<TableDesc> {
        Arc::new(TableDesc {
            topic: "s.public.orders".into(),
            name: "orders".into(),
            namespace: "public".into(),
            columns: Vec::new(),
            key: Vec::new(),
        })
    }

    /// A plugin that counts the changes of each row in its state and traps
    /// on key 13.
    struct Counter {
        calls: usize,
    }

    impl KeyedCalls for Counter {
        fn process(
            &mut self,
            events: &[(&ChangeEvent, &RecordId)],
            states: &[(u32, Vec<u8>)],
        ) -> Result<KeyedAnswer, String> {
            self.calls += 1;
            if events.iter().any(|(e, _)| e.key == vec![Value::Int(13)]) {
                return Err("wasm trap: unreachable".into());
            }
            let id = |e: &ChangeEvent| match e.key[..] {
                [Value::Int(k)] => k,
                _ => -1,
            };
            let mut counts: HashMap<i64, (u32, u8)> = HashMap::new();
            for (j, s) in states {
                counts.insert(id(events[*j as usize].0), (*j, s[0]));
            }
            let mut results = Vec::new();
            for (j, (e, _)) in events.iter().enumerate() {
                let c = counts.entry(id(e)).or_insert((j as u32, 0));
                c.0 = j as u32;
                if e.op == Op::Delete {
                    c.1 = 0;
                } else {
                    c.1 += 1;
                }
                results.push(Ok(Vec::new()));
            }
            let writes = counts
                .into_values()
                .map(|(j, n)| (j, (n > 0).then(|| vec![n])))
                .collect();
            Ok((results, writes))
        }
    }

    fn input(plugin: &Arc<KeyedPlugin>, op: Op, key: i64, lsn: u64) -> KeyedInput {
        KeyedInput {
            plugin: plugin.clone(),
            event: ChangeEvent {
                table: table(),
                op,
                key: vec![Value::Int(key)],
                before: None,
                after: None,
                source_position: None,
                source_order: Some(SourceOrder([lsn, 0, 0])),
                commit_time_ms: None,
            },
            row_key: key.to_le_bytes().to_vec(),
        }
    }

    #[test]
    fn re_deliveries_are_skipped_and_a_trap_rejects_only_its_change() {
        let p = Arc::new(KeyedPlugin::new("counter", 0, None));
        let id = RecordId {
            topic: "s.public.orders".into(),
            partition: 0,
            offset: 0,
        };
        let stored: HashMap<Vec<u8>, RowState> = [(
            1i64.to_le_bytes().to_vec(),
            RowState {
                order: Some(SourceOrder([10, 0, 0])),
                state: Some(vec![4]),
            },
        )]
        .into();
        let inputs = [
            input(&p, Op::Update, 1, 9),   // re-delivered: older than the state
            input(&p, Op::Update, 1, 11),  // applied: 4 -> 5
            input(&p, Op::Create, 2, 12),  // new row: 1
            input(&p, Op::Update, 2, 12),  // same position again: skipped
            input(&p, Op::Create, 13, 13), // traps
            input(&p, Op::Delete, 2, 14),  // deleted: tombstone keeps 14
        ];
        let refs: Vec<(&KeyedInput, &RecordId)> = inputs.iter().map(|i| (i, &id)).collect();
        let mut calls = Counter { calls: 0 };
        let run = run(&refs, &stored, &mut calls);
        let o = &run.outcomes;
        assert!(matches!(o[0], KeyedOutcome::Duplicate), "{o:?}");
        assert!(matches!(o[1], KeyedOutcome::Applied(_)), "{o:?}");
        assert!(matches!(o[2], KeyedOutcome::Applied(_)), "{o:?}");
        assert!(matches!(o[3], KeyedOutcome::Duplicate), "{o:?}");
        assert!(
            matches!(&o[4], KeyedOutcome::Rejected(r) if r.contains("trap")),
            "{o:?}"
        );
        assert!(matches!(o[5], KeyedOutcome::Applied(_)), "{o:?}");
        // One batch call that trapped, then one per accepted change.
        assert_eq!(calls.calls, 1 + 4);
        let writes: HashMap<_, _> = run.writes.into_iter().collect();
        assert_eq!(
            writes[&1i64.to_le_bytes().to_vec()],
            Some(RowState {
                order: Some(SourceOrder([11, 0, 0])),
                state: Some(vec![5])
            })
        );
        assert_eq!(
            writes[&2i64.to_le_bytes().to_vec()],
            Some(RowState {
                order: Some(SourceOrder([14, 0, 0])),
                state: None
            })
        );
        assert!(
            !writes.contains_key(13i64.to_le_bytes().as_slice()),
            "a rejected change leaves its row as it was"
        );
    }
}
