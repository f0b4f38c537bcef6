//! Operator state in the commit: `sluice_state` rows read and written in
//! the batch's transaction, so state, group rows, dead letters and offsets
//! commit together (invariant 1). What was read stays cached between
//! commits while this host is the only writer (`turn.rs` tells).

use sha2::Digest as _;

use super::*;
use crate::model::Value;
use crate::operators::aggregate::{
    kind, AggregateState, AggregationOp, Applied, OperatorInput, StateWrite,
};
use crate::operators::spec::AggregateFn;
use crate::operators::watermark::idle_partitions;
use crate::operators::{CustomCalls, NoCustom, StateUpdate};
use crate::plugin::lazy::LazyInstance;
use crate::plugin::runtime::{off_runtime, overlapped, Instance};
use crate::source::SourceSignal;

use crate::operators::codec::MAX_KEY;

use super::state_ids::{id_of, ids_of_kinds, BY_NAME};

pub(super) fn stored_key(k: &[u8]) -> Vec<u8> {
    if k.len() <= MAX_KEY {
        return k.to_vec();
    }
    let mut out = vec![0xff, b'#'];
    out.extend_from_slice(&sha2::Sha256::digest(k));
    out
}

/// A state row an operator's cache held absent was in the sink (an insert
/// of it hit its key): the cache is wrong, so the commit is tried again
/// with every cache dropped (read afresh, inside the transaction).
#[derive(Debug, thiserror::Error)]
#[error("aggregation {0}: a state row it took for new was already in the sink")]
pub(super) struct CacheDisagrees(pub(super) String);

/// Rows per `IN (…)` read and per multi-row write.
const CHUNK: usize = 200;

/// The state of every aggregation this sink has seen, cached.
#[derive(Default)]
pub(super) struct OperatorStates {
    ops: HashMap<String, AggregateState>,
    /// The output table each aggregation last wrote (windows closed by the
    /// watermark alone are written there).
    tables: HashMap<String, Arc<SinkTable>>,
    /// Custom aggregates: per aggregation, the plugin version that declared
    /// it and an instance of it (made when first needed, dropped after a trap).
    plugins: HashMap<String, PluginCalls>,
}

/// An aggregation's inputs in batch order, with the index of their event.
type Inputs<'a> = [(usize, &'a OperatorInput)];

/// What aggregations read in one commit: the events, and the inputs joins
/// made of them (by event index).
#[derive(Clone, Copy)]
pub(super) struct BatchInputs<'a> {
    pub(super) events: &'a [EventWrites],
    pub(super) fed: &'a [(usize, OperatorInput)],
}

/// What the operators did in one commit.
#[derive(Default)]
pub(super) struct OperatorReport {
    /// Group rows, each with whether the sink is known to lack it.
    pub(super) outputs: Vec<(SinkWrite, bool)>,
    pub(super) duplicates: u64,
    pub(super) late_applied: u64,
    pub(super) late_dead_lettered: u64,
}

impl OperatorStates {
    /// After a failed attempt: what was applied in memory is not in the
    /// database.
    pub(super) fn invalidate(&mut self) {
        for s in self.ops.values_mut() {
            s.clear();
        }
    }

    /// Whether any aggregation ran in this sink (an idle partition may
    /// move its watermark).
    pub(super) fn any(&self) -> bool {
        !self.ops.is_empty()
    }

    /// (state rows, bytes) cached per aggregation, for the summary.
    pub(super) fn sizes(&self) -> Vec<(String, usize, usize)> {
        sizes_by_id(&self.ops, AggregateState::size)
    }

    /// Apply the events' operator inputs and those joins `fed` (by event
    /// index; the caller holds the pipeline's state turn): load what the
    /// inputs touch, apply, write the state. Inputs that
    /// change nothing (bad projection, impossible retraction) come back as
    /// dead letters; the group rows to write come back in the report.
    pub(super) async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        batch: BatchInputs<'_>,
        signals: &[SourceSignal],
        dead: &mut Vec<DeadLetter>,
    ) -> anyhow::Result<OperatorReport> {
        let BatchInputs { events, fed } = batch;
        let mut report = OperatorReport::default();
        let idle: Vec<Vec<u8>> = idle_partitions(signals);
        // Inputs per aggregation, in batch order; with idle partitions,
        // every aggregation this sink knows (its watermark may move).
        let mut per_op: Vec<(String, Vec<(usize, &OperatorInput)>)> = Vec::new();
        if !idle.is_empty() {
            let mut known: Vec<&String> = self.ops.keys().collect();
            known.sort();
            per_op.extend(known.into_iter().map(|id| (id.clone(), Vec::new())));
        }
        for (id, inputs) in per_operator(events, |ev| &ev.ops, |i| &i.op.id) {
            match per_op.iter_mut().find(|(known, _)| *known == id) {
                Some((_, v)) => v.extend(inputs),
                None => per_op.push((id, inputs)),
            }
        }
        // joined rows (an aggregation reads a table or a join, not both)
        for (e, input) in fed {
            push_per_operator(&mut per_op, &input.op.id, *e, input);
        }
        // Read what each aggregation needs first (state rows are per
        // aggregation, so no read depends on another one's writes), then
        // apply them in turn, each one's state written while the next one
        // applies (`overlapped`: the sink's CPU beside the database's).
        let mut ready: Vec<(String, Vec<(usize, &OperatorInput)>)> = Vec::new();
        for (id, inputs) in per_op {
            if self.prepare(conn, d, pipeline, &id, &inputs).await? {
                ready.push((id, inputs));
            }
        }
        let mut done: Vec<(&str, &Inputs, Applied)> = Vec::with_capacity(ready.len());
        let mut unwritten: Option<(&str, Vec<StateWrite>)> = None;
        for (id, inputs) in &ready {
            let Some(state) = self.ops.get_mut(id) else {
                continue;
            };
            let mut none = NoCustom;
            let calls: &mut dyn CustomCalls = match self.plugins.get_mut(id) {
                Some(p) => p,
                None => &mut none,
            };
            let refs: Vec<&OperatorInput> = inputs.iter().map(|(_, i)| *i).collect();
            let apply = || state.apply(&refs, &idle, calls);
            let mut applied = match unwritten.take() {
                None => off_runtime(apply),
                Some((before, writes)) => {
                    let write = write_state(conn, d, pipeline, before, &writes);
                    let (written, applied) = overlapped(apply, write).await;
                    written?;
                    applied
                }
            };
            if !applied.failures.is_empty() {
                anyhow::bail!(
                    "aggregation {id}: {}; the batch is rolled back and the run stops (a custom aggregate that cannot merge or finish its states is a plugin bug)",
                    applied.failures.join("; ")
                );
            }
            unwritten = Some((id, std::mem::take(&mut applied.state)));
            done.push((id, inputs, applied));
        }
        if let Some((id, writes)) = unwritten {
            write_state(conn, d, pipeline, id, &writes).await?;
        }
        for (id, inputs, applied) in done {
            for (i, reason) in applied.rejected {
                let ev = &events[inputs[i].0];
                tracing::warn!(
                    topic = %ev.record.id.topic, partition = ev.record.id.partition,
                    offset = ev.record.id.offset, aggregation = %id,
                    "dead-lettered: {reason}"
                );
                dead.push(DeadLetter {
                    record: ev.record.clone(),
                    stage: Stage::Aggregate,
                    plugin: Some(inputs[i].1.op.plugin.clone()),
                    reason: format!("aggregation `{}`: {reason}", inputs[i].1.op.spec.output),
                });
            }
            report.outputs.extend(applied.outputs);
            report.duplicates += applied.duplicates;
            report.late_applied += applied.late_applied;
            report.late_dead_lettered += applied.late_dead_lettered;
            self.close_windows(conn, d, pipeline, id, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// Set up aggregation `id` for this commit and read the state its
    /// inputs need (watermarks once; rows and groups unless its cache is
    /// complete). False: no state for it (no inputs, none known).
    async fn prepare(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        id: &str,
        inputs: &Inputs<'_>,
    ) -> anyhow::Result<bool> {
        if let Some((_, first)) = inputs.first() {
            let spec = first.op.spec.clone();
            self.ops
                .entry(id.to_string())
                .or_insert_with(|| AggregateState::new(spec));
            self.tables.insert(id.to_string(), first.output.clone());
            if let Some(calls) = PluginCalls::for_op(&first.op) {
                let stale = self
                    .plugins
                    .get(id)
                    .is_none_or(|p| !p.instance.runs_same_code(&calls.instance));
                if stale {
                    self.plugins.insert(id.to_string(), calls);
                }
            }
        }
        let Some(state) = self.ops.get_mut(id) else {
            return Ok(false);
        };
        let context = || format!("reading the state of aggregation {id}");
        if state.needs_watermarks() {
            let fresh = holds_no_state(conn, d, pipeline, id).await?;
            if fresh {
                state.mark_complete();
            }
            // (read for every aggregation: marked state its declaration
            // cannot read as panes must stop the run, whatever the window)
            let marker = if fresh {
                None
            } else {
                let rows = read_kind(conn, d, pipeline, id, kind::PANES).await?;
                rows.into_iter().next().map(|(_, v)| v)
            };
            state
                .set_layout(fresh, marker.as_deref())
                .map_err(|e| anyhow::anyhow!("aggregation {id}: {e}"))?;
            let partitions = read_kind(conn, d, pipeline, id, kind::PARTITION).await?;
            let reached = read_kind(conn, d, pipeline, id, kind::WATERMARK)
                .await?
                .into_iter()
                .next()
                .map(|(_, v)| v);
            state
                .load_watermarks(partitions, reached)
                .with_context(context)?;
        }
        // A complete cache knows every key it lacks is absent (the
        // operator reads a key not cached as absent): nothing to look
        // up. Computing the keys alone cost ~7 % of the sink's CPU for
        // a 7-day hopping window (seven group keys per change).
        if !state.is_complete() {
            let missing = state.missing_rows(inputs.iter().map(|(_, i)| *i));
            let loaded = read_state(conn, d, pipeline, id, kind::ROW, &missing).await?;
            state.load_rows(loaded).with_context(context)?;
            let missing = state.missing_groups(inputs.iter().map(|(_, i)| *i));
            let loaded = read_state(conn, d, pipeline, id, kind::GROUP, &missing).await?;
            state.load_groups(loaded).with_context(context)?;
        }
        Ok(true)
    }

    /// Windows of aggregation `id` the watermark passed (call after its
    /// state is written): written (final mode), dropped (nothing may
    /// change them any more).
    async fn close_windows(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        id: &str,
        report: &mut OperatorReport,
    ) -> anyhow::Result<()> {
        let Some(state) = self.ops.get_mut(id) else {
            return Ok(());
        };
        let Some(before) = state.closing_before() else {
            return Ok(());
        };
        let closing = read_expired(conn, d, pipeline, id, kind::GROUP, before).await?;
        if closing.is_empty() {
            return Ok(());
        }
        let mut none = NoCustom;
        let calls: &mut dyn CustomCalls = match self.plugins.get_mut(id) {
            Some(p) => p,
            None => &mut none,
        };
        let table = self.tables.get(id);
        let closed = off_runtime(|| state.close(closing, table, calls))
            .with_context(|| format!("reading the state of aggregation {id}"))?;
        if !closed.failures.is_empty() {
            anyhow::bail!(
                "aggregation {id}: {}; the batch is rolled back and the run stops",
                closed.failures.join("; ")
            );
        }
        write_state(conn, d, pipeline, id, &closed.state).await?;
        report.outputs.extend(closed.outputs);
        Ok(())
    }
}

/// (operator, state rows, bytes) of cached operator states, sorted.
pub(super) fn sizes_by_id<S>(
    states: &HashMap<String, S>,
    size: impl Fn(&S) -> (usize, usize),
) -> Vec<(String, usize, usize)> {
    let mut out: Vec<_> = states
        .iter()
        .map(|(id, s)| {
            let (rows, bytes) = size(s);
            (id.clone(), rows, bytes)
        })
        .collect();
    out.sort();
    out
}

/// The inputs `of` each event, grouped by the operator `operator` names,
/// operators in the order the batch first names them, inputs in batch order
/// (with the index of their event).
pub(super) fn per_operator<'a, T>(
    events: &'a [EventWrites],
    of: impl Fn(&'a EventWrites) -> &'a [T],
    operator: impl Fn(&T) -> &str,
) -> Vec<(String, Vec<(usize, &'a T)>)> {
    let mut per_op = Vec::new();
    for (e, ev) in events.iter().enumerate() {
        for input in of(ev) {
            push_per_operator(&mut per_op, operator(input), e, input);
        }
    }
    per_op
}

/// Add an operator's input (of event `e`) to its operator's list, keeping
/// operators in the order the batch first names them.
pub(super) fn push_per_operator<'a, T>(
    per_op: &mut Vec<(String, Vec<(usize, &'a T)>)>,
    operator: &str,
    e: usize,
    input: &'a T,
) {
    match per_op.iter_mut().find(|(id, _)| id == operator) {
        Some((_, v)) => v.push((e, input)),
        None => per_op.push((operator.to_string(), vec![(e, input)])),
    }
}

/// The key and value columns as read back: MySQL's VARBINARY reaches
/// sqlx's `Any` driver typed as TEXT, which then refuses bytes (and binary
/// is no UTF-8), so MySQL sends them as hex.
pub(super) fn key_value(d: Dialect) -> &'static str {
    match d {
        Dialect::MySql { .. } => "HEX(k), HEX(v)",
        _ => "k, v",
    }
}

/// A key or value column of a `key_value` select.
pub(super) fn blob(d: Dialect, row: &sqlx::any::AnyRow, i: usize) -> anyhow::Result<Vec<u8>> {
    match d {
        Dialect::MySql { .. } => {
            let hex = text(row, i)?;
            (0..hex.len())
                .step_by(2)
                .map(|j| {
                    hex.get(j..j + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| anyhow::anyhow!("state bytes are not hex: {hex:.40}"))
                })
                .collect()
        }
        _ => Ok(row.try_get(i)?),
    }
}

/// Whether the database holds no state row of `operator` at all.
///
/// On MySQL/MariaDB a locking read: InnoDB's REPEATABLE READ snapshot may
/// predate the state turn (a keyed plugin's read before it), and a host
/// that waited for the turn while another committed this operator's first
/// state must not take that old snapshot for "nothing there" (it would
/// overwrite the other host's groups). A locking read sees the latest
/// commit; no other host writes this pipeline's state while the turn is held.
async fn holds_no_state(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
) -> anyhow::Result<bool> {
    let lock = match d {
        Dialect::MySql { .. } => " LOCK IN SHARE MODE",
        _ => "",
    };
    // Its numbers first, by a locking read too (a subquery in a locking
    // read would read a snapshot on MySQL/MariaDB).
    let context = || format!("looking for the state of {operator}");
    let sql = d
        .sql(&format!(
            "SELECT sid FROM sluice_state_ids WHERE pipeline = ? AND operator = ?{lock}"
        ))
        .into_owned();
    let ids: Vec<i64> = sqlx::query_scalar(&sql)
        .bind(pipeline)
        .bind(operator)
        .fetch_all(&mut *conn)
        .await
        .with_context(context)?;
    if ids.is_empty() {
        return Ok(true);
    }
    let sql = d
        .sql(&format!(
            "SELECT 1 FROM sluice_state_rows WHERE sid IN ({}) LIMIT 1{lock}",
            vec!["?"; ids.len()].join(", ")
        ))
        .into_owned();
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id);
    }
    let found = q.fetch_optional(&mut *conn).await.with_context(context)?;
    Ok(found.is_none())
}

/// Every state row of one kind (the partitions of a watermark).
pub(super) async fn read_kind(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let sql = d
        .sql(&format!(
            "SELECT {} FROM sluice_state_rows WHERE {BY_NAME}",
            key_value(d)
        ))
        .into_owned();
    let rows = sqlx::query(&sql)
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("reading the watermarks of aggregation {operator}"))?;
    rows.iter()
        .map(|r| Ok((blob(d, r, 0)?, blob(d, r, 1)?)))
        .collect()
}

/// State rows of `kind` that expire at or before `before` (windows the
/// watermark closes, interval-join rows no partner can reach any more).
pub(super) async fn read_expired(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
    before: i64,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let sql = d
        .sql(&format!(
            "SELECT {} FROM sluice_state_rows WHERE {BY_NAME} \
             AND expires IS NOT NULL AND expires <= ? ORDER BY expires",
            key_value(d)
        ))
        .into_owned();
    let rows = sqlx::query(&sql)
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .bind(before)
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("reading the expired state of {operator}"))?;
    rows.iter()
        .map(|r| Ok((blob(d, r, 0)?, blob(d, r, 1)?)))
        .collect()
}

/// Read state rows by key; every key comes back, `None` when absent.
pub(super) async fn read_state(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
    keys: &[Vec<u8>],
) -> anyhow::Result<Vec<(Vec<u8>, Option<Vec<u8>>)>> {
    let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let stored: Vec<Vec<u8>> = keys.iter().map(|k| stored_key(k)).collect();
    let context = || format!("reading the state of aggregation {operator}");
    if d == Dialect::Postgres {
        for row in super::bulk::read_state(conn, pipeline, operator, kind, &stored)
            .await
            .with_context(context)?
        {
            found.insert(blob(d, &row, 0)?, blob(d, &row, 1)?);
        }
    } else {
        for chunk in stored.chunks(CHUNK) {
            let sql = d
                .sql(&format!(
                    "SELECT {} FROM sluice_state_rows WHERE {BY_NAME} AND k IN ({})",
                    key_value(d),
                    vec!["?"; chunk.len()].join(", ")
                ))
                .into_owned();
            let mut q = sqlx::query(&sql).bind(pipeline).bind(operator).bind(kind);
            for k in chunk {
                q = q.bind(&k[..]);
            }
            for row in q.fetch_all(&mut *conn).await.with_context(context)? {
                found.insert(blob(d, &row, 0)?, blob(d, &row, 1)?);
            }
        }
    }
    Ok(keys
        .iter()
        .zip(&stored)
        .map(|(k, s)| (k.clone(), found.remove(s)))
        .collect())
}

/// Write (or delete) state rows.
pub(super) async fn write_state(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    writes: &[StateWrite],
) -> anyhow::Result<()> {
    if d == Dialect::Postgres {
        return super::bulk::write_state(conn, pipeline, operator, writes)
            .await
            .with_context(|| format!("writing the state of aggregation {operator}"));
    }
    let ids = ids_of_kinds(conn, d, pipeline, operator, writes).await?;
    let (upserts, deletes): (Vec<&StateWrite>, Vec<&StateWrite>) =
        writes.iter().partition(|w| w.value.is_some());
    let cols: Vec<String> = ["sid", "k", "v", "expires"]
        .iter()
        .map(|c| d.quote(c))
        .collect();
    for chunk in upserts.chunks(CHUNK) {
        let sql = d
            .sql(&format!(
                "INSERT INTO sluice_state_rows ({}) VALUES {}{}",
                cols.join(", "),
                vec!["(?, ?, ?, ?)"; chunk.len()].join(", "),
                d.upsert_clause(&cols[..2], &cols[2..])
            ))
            .into_owned();
        let mut q = sqlx::query(&sql);
        for w in chunk {
            q = q
                .bind(id_of(&ids, w.kind))
                .bind(stored_key(&w.key))
                .bind(w.value.clone().unwrap_or_default())
                .bind(w.expires);
        }
        q.execute(&mut *conn)
            .await
            .with_context(|| format!("writing the state of aggregation {operator}"))?;
    }
    // One kind (number) per statement; a kind never written has no rows.
    for (kind, id) in &ids {
        let Some(id) = id else { continue };
        let keys: Vec<&&StateWrite> = deletes.iter().filter(|w| w.kind == *kind).collect();
        for chunk in keys.chunks(CHUNK) {
            let sql = d
                .sql(&format!(
                    "DELETE FROM sluice_state_rows WHERE sid = ? AND k IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                ))
                .into_owned();
            let mut q = sqlx::query(&sql).bind(id);
            for w in chunk {
                q = q.bind(stored_key(&w.key));
            }
            q.execute(&mut *conn)
                .await
                .with_context(|| format!("deleting state of aggregation {operator}"))?;
        }
    }
    Ok(())
}

/// The plugin side of one aggregation's custom measures, on an instance of
/// the plugin version that declared it.
pub(super) struct PluginCalls {
    aggregation: u32,
    instance: LazyInstance,
}

impl PluginCalls {
    /// For aggregations with custom measures.
    fn for_op(op: &AggregationOp) -> Option<PluginCalls> {
        let custom = op
            .spec
            .measures
            .iter()
            .any(|m| m.function == AggregateFn::Custom);
        Some(PluginCalls {
            aggregation: op.index,
            instance: LazyInstance::new(op.code.clone().filter(|_| custom)?, &op.plugin),
        })
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Instance, u32) -> Result<T, String>,
    ) -> Result<T, String> {
        let aggregation = self.aggregation;
        self.instance.call(|i| f(i, aggregation))
    }
}

impl CustomCalls for PluginCalls {
    fn apply(
        &mut self,
        measure: u32,
        state: Option<&[u8]>,
        rows: &[(Value, i64)],
    ) -> Result<Vec<u8>, String> {
        let update = StateUpdate {
            state: state.map(<[u8]>::to_vec),
            rows: rows.to_vec(),
        };
        let answer =
            self.call(|i, a| i.aggregate_apply(a, measure, std::slice::from_ref(&update)))?;
        answer
            .into_iter()
            .next()
            .unwrap_or_else(|| Err("the plugin returned no state".into()))
    }

    fn merge(&mut self, measure: u32, parts: &[Vec<u8>]) -> Result<Vec<u8>, String> {
        let groups = [parts.to_vec()];
        let answer = self.call(|i, a| i.aggregate_merge(a, measure, &groups))?;
        answer
            .into_iter()
            .next()
            .ok_or_else(|| "the plugin returned no merged state".into())
    }

    fn finish(&mut self, measure: u32, state: &[u8]) -> Result<Value, String> {
        let states = [state.to_vec()];
        let answer = self.call(|i, a| i.aggregate_finish(a, measure, &states))?;
        answer
            .into_iter()
            .next()
            .ok_or_else(|| "the plugin returned no value".into())
    }
}
