//! The joins' part of a commit (the caller holds the pipeline's state
//! turn): per join, load the state the batch's changes touch, apply them,
//! write the changed side rows, and turn the changes of the join result
//! into the output table's writes and into inputs of the aggregations that
//! read the join (their rows projected by the plugin, here, in the
//! transaction). Storage lives in `join.rs`, the operator in
//! `operators::join`.

use super::derived::DerivedOutputs;
use super::join::{expire, load, write, SideRows};
use super::state::{per_operator, read_kind, read_state, sizes_by_id, write_state};
use super::tables::StoredTables;
use super::*;
use crate::model::{DeadLetter, Stage, Value};
use crate::operators::aggregate::{
    kind, output_table, watermark_writes, AggregationOp, InputChange, OperatorInput, StateWrite,
};
use crate::operators::codec;
use crate::operators::join::{
    join_key, JoinChange, JoinDelta, JoinInput, JoinOp, JoinOpInput, JoinState, Side,
};
use crate::operators::watermark::{idle_partitions, Watermarks};
use crate::plugin::lazy::{isolating, LazyInstance};
use crate::plugin::runtime::off_runtime;
use crate::source::SourceSignal;

/// The state of every join this sink has seen, cached between commits
/// while this host holds the state turn.
#[derive(Default)]
pub(super) struct JoinStates {
    joins: HashMap<String, JoinState>,
    /// Per aggregation a join feeds: its output table, typed from the
    /// joined table and the first projection.
    feed_tables: HashMap<String, Arc<SinkTable>>,
    /// Per plugin: an instance of the version that declared its joins.
    projectors: HashMap<String, LazyInstance>,
    /// The interval joins this sink has run (idle partitions move their
    /// watermarks in batches without their rows).
    intervals: HashMap<String, Arc<JoinOp>>,
    /// Regular joins known to have started (their index covers every
    /// stored row of their tables).
    started: HashSet<String>,
}

/// State kind of the mark a regular join leaves once it started.
const STARTED: &str = "js";

/// One join's inputs in a batch (by event index), with the join.
type JoinBatch<'a> = (String, Arc<JoinOp>, Vec<(usize, &'a JoinOpInput)>);

/// What the joins did in one attempt.
#[derive(Default)]
pub(super) struct JoinReport {
    /// Output-table writes per source record that caused them.
    pub(super) outputs: DerivedOutputs,
    /// Aggregation inputs of joined rows, by the index of the event that
    /// caused them.
    pub(super) feeds: Vec<(usize, OperatorInput)>,
    /// Interval joins: late rows applied, and dead-lettered.
    pub(super) late_applied: u64,
    pub(super) late_dead_lettered: u64,
}

impl JoinStates {
    /// After a failed attempt: what was applied in memory is not in the
    /// database.
    pub(super) fn invalidate(&mut self) {
        for s in self.joins.values_mut() {
            s.clear();
        }
        self.started.clear();
    }

    /// Whether an interval join ran here (an idle partition may move its
    /// watermark).
    pub(super) fn any_interval(&self) -> bool {
        !self.intervals.is_empty()
    }

    /// (join, side rows, bytes) cached per join, for the summary.
    pub(super) fn sizes(&self) -> Vec<(String, usize, usize)> {
        sizes_by_id(&self.joins, JoinState::size)
    }

    /// Apply the events' join inputs, in batch order per join.
    pub(super) async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        events: &[EventWrites],
        signals: &[SourceSignal],
        tables: &mut StoredTables,
    ) -> anyhow::Result<JoinReport> {
        let mut report = JoinReport::default();
        let idle: Vec<Vec<u8>> = idle_partitions(signals);
        let mut per_op: Vec<JoinBatch<'_>> = per_operator(events, |ev| &ev.joins, |i| &i.op.id)
            .into_iter()
            .filter_map(|(id, inputs)| Some((id, inputs.first()?.1.op.clone(), inputs)))
            .collect();
        // Idle partitions may move the watermark of interval joins this
        // batch has no rows for (their expired rows go then).
        if !idle.is_empty() {
            let mut quiet: Vec<&Arc<JoinOp>> = self
                .intervals
                .iter()
                .filter(|(id, _)| per_op.iter().all(|(seen, _, _)| seen != *id))
                .map(|(_, op)| op)
                .collect();
            quiet.sort_by(|a, b| a.id.cmp(&b.id));
            per_op.extend(
                quiet
                    .into_iter()
                    .map(|op| (op.id.clone(), op.clone(), Vec::new())),
            );
        }
        for (id, op, inputs) in per_op {
            if op.spec.interval.is_some() {
                self.intervals.insert(id.clone(), op.clone());
            }
            let state = self.joins.entry(id.clone()).or_insert_with(|| {
                JoinState::new(op.spec.kind).with_interval(op.spec.interval.clone())
            });
            if state.needs_watermarks() {
                let partitions = read_kind(conn, d, pipeline, &id, kind::PARTITION).await?;
                let reached = read_kind(conn, d, pipeline, &id, kind::WATERMARK)
                    .await?
                    .into_iter()
                    .next()
                    .map(|(_, v)| v);
                let w = Watermarks::from_rows(partitions, reached)
                    .with_context(|| format!("reading the watermark of join {id}"))?;
                state.load_watermarks(w);
            }
            let regular = op.spec.interval.is_none();
            // A regular join that starts over tables already stored (another
            // join or a lookup reads them) first adds their rows.
            let mut start = Vec::new();
            if regular && !self.started.contains(&id) {
                let marked = read_state(conn, d, pipeline, &id, STARTED, &[Vec::new()]).await?;
                if marked.iter().all(|(_, v)| v.is_none()) {
                    start = stored_inputs(conn, d, pipeline, &op, state, tables).await?;
                    let mark = [StateWrite {
                        kind: STARTED,
                        key: Vec::new(),
                        value: Some(vec![1]),
                        expires: None,
                        fresh: false,
                    }];
                    write_state(conn, d, pipeline, &id, &mark).await?;
                }
                self.started.insert(id.clone());
            }
            let refs: Vec<&JoinInput> = start
                .iter()
                .chain(inputs.iter().map(|(_, i)| &i.input))
                .collect();
            let rows = if regular {
                SideRows::Stored(tables, &op.spec)
            } else {
                SideRows::Own
            };
            load(conn, d, pipeline, &id, state, &refs, rows).await?;
            let mut applied = state.apply(&refs).with_context(|| format!("join {id}"))?;
            // What the stored rows made is the first input's doing.
            for delta in &mut applied.deltas {
                delta.cause = delta.cause.saturating_sub(start.len());
            }
            write(conn, d, pipeline, &id, &applied.writes, !regular).await?;
            report.outputs.duplicates += applied.duplicates;
            report.late_applied += applied.late_applied;
            for (i, reason) in &applied.late {
                report.late_dead_lettered += 1;
                let ev = &events[inputs[*i].0];
                tracing::warn!(
                    topic = %ev.record.id.topic, partition = ev.record.id.partition,
                    offset = ev.record.id.offset, join = %id,
                    "dead-lettered: {reason}"
                );
                report.outputs.dead.push(DeadLetter {
                    record: ev.record.clone(),
                    stage: Stage::Aggregate,
                    plugin: Some(op.plugin.clone()),
                    reason: format!("join `{}`: {reason}", op.spec.name),
                });
            }
            let times = inputs.iter().map(|(_, i)| {
                let time = match &i.input.change {
                    JoinChange::Row { time, .. } => *time,
                    JoinChange::Delete => None,
                };
                (i.input.side, i.partition.as_slice(), time)
            });
            if let Some(rows) = state.advance(times, &idle) {
                write_state(conn, d, pipeline, &id, &watermark_writes(rows)).await?;
                if let Some(w) = state.watermark() {
                    expire(conn, d, pipeline, &id, state, w).await?;
                }
            }
            if op.writes_output() {
                let mut per_event: Vec<(usize, Vec<SinkWrite>)> = Vec::new();
                for (cause, w) in op.spec.sink_writes(&op.table, &applied.deltas) {
                    let e = inputs[cause].0;
                    match per_event.iter_mut().find(|(i, _)| *i == e) {
                        Some((_, writes)) => writes.push(w),
                        None => per_event.push((e, vec![w])),
                    }
                }
                report
                    .outputs
                    .outputs
                    .extend(per_event.into_iter().map(|(e, writes)| {
                        EventWrites::written(
                            events[e].record.clone(),
                            Some(op.plugin.clone()),
                            writes,
                        )
                    }));
            }
            if op.feeds.is_empty() || applied.deltas.is_empty() {
                continue;
            }
            let Some(code) = &op.code else {
                anyhow::bail!("join {} feeds aggregations but has no plugin code", op.id);
            };
            let projector = LazyInstance::of(&mut self.projectors, &op.plugin, code, &op.plugin);
            for feed in &op.feeds {
                let fed = feed_inputs(&op, feed, &applied.deltas, projector, &mut self.feed_tables);
                for (cause, input) in fed {
                    let (e, join_input) = inputs[cause];
                    match input {
                        Ok(mut input) => {
                            input.commit_time_ms = join_input.commit_time_ms;
                            input.partition = join_input.partition.clone();
                            report.feeds.push((e, input));
                        }
                        Err(reason) => report.outputs.dead.push(DeadLetter {
                            record: events[e].record.clone(),
                            stage: Stage::Aggregate,
                            plugin: Some(op.plugin.clone()),
                            reason: format!(
                                "aggregation `{}` of join `{}`: {reason}",
                                feed.spec.output, op.spec.name
                            ),
                        }),
                    }
                }
            }
        }
        Ok(report)
    }
}

/// Inputs that add every live stored row of a regular join's tables, for
/// a join that starts while they are stored; `state` learns that the join
/// had none of them (its index is empty).
async fn stored_inputs(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    op: &JoinOp,
    state: &mut JoinState,
    tables: &mut StoredTables,
) -> anyhow::Result<Vec<JoinInput>> {
    let mut out = Vec::new();
    let mut keys = HashSet::new();
    for (side, declared) in [
        (Side::Left, &op.spec.left.table),
        (Side::Right, &op.spec.right.table),
    ] {
        let topics = tables.load_whole(conn, d, pipeline, declared).await?;
        let store = tables.write_store()?;
        let mut absent = Vec::new();
        for topic in topics {
            let Some(rows) = store.tables.get(&topic) else {
                continue;
            };
            for (k, row) in &rows.rows {
                let Some(input) = op.spec.stored_input(side, k, row) else {
                    continue;
                };
                if let JoinChange::Row { on, .. } = &input.change {
                    keys.extend(join_key(on));
                }
                absent.push((k.clone(), None));
                out.push(input);
            }
        }
        state.load_rows(side, absent);
    }
    for key in keys {
        state.load_key(key, Vec::new(), Vec::new());
    }
    // A stable order (the tables are hash maps): by side, then row.
    out.sort_by(|a, b| (a.side as u8, &a.row_key).cmp(&(b.side as u8, &b.row_key)));
    Ok(out)
}

/// The identity of a joined row, as the aggregations' row state knows it:
/// the left row's and the right row's (none: a left join's nulls).
fn joined_identity(d: &JoinDelta) -> Vec<u8> {
    codec::key(&[
        Value::Bytes(d.left_key.clone()),
        d.right_key.clone().map_or(Value::Null, Value::Bytes),
    ])
}

/// The inputs of aggregation `feed` for a batch's deltas, in order, each
/// with the index of the join input that caused it: a retraction deletes
/// the joined row's contribution, an addition adds its projection (or, if
/// the plugin refuses to project it, is refused). The commit time and
/// partition are the caller's to fill.
fn feed_inputs(
    op: &JoinOp,
    feed: &Arc<AggregationOp>,
    deltas: &[JoinDelta],
    projector: &mut LazyInstance,
    tables: &mut HashMap<String, Arc<SinkTable>>,
) -> Vec<(usize, Result<OperatorInput, String>)> {
    let added: Vec<Vec<Value>> = deltas
        .iter()
        .filter(|d| d.weight > 0)
        .map(|d| op.spec.joined_row(&d.left, d.right.as_deref()))
        .collect();
    let rows: Vec<&[Value]> = added.iter().map(Vec::as_slice).collect();
    let projected = off_runtime(|| {
        isolating(&op.plugin, &rows, |rows| {
            projector.call(|i| i.project(feed.index, &op.desc, rows))
        })
    });
    let output = match tables.get(&feed.id) {
        Some(t) => t.clone(),
        None => {
            let first = projected
                .iter()
                .find_map(|p| p.as_ref().ok().and_then(Option::as_ref));
            let t = Arc::new(output_table(&feed.spec, &op.desc, first));
            tables.insert(feed.id.clone(), t.clone());
            t
        }
    };
    let mut projected = projected.into_iter();
    deltas
        .iter()
        .map(|d| {
            let change = if d.weight > 0 {
                match projected.next() {
                    Some(Ok(p)) => Ok(InputChange::Row(p)),
                    Some(Err(reason)) => Err(reason),
                    None => Err("the plugin projected fewer rows than asked".to_string()),
                }
            } else {
                Ok(InputChange::Delete)
            };
            let input = change.map(|change| OperatorInput {
                op: feed.clone(),
                output: output.clone(),
                row_key: joined_identity(d),
                // the join already skipped re-deliveries
                order: None,
                change,
                commit_time_ms: None,
                partition: Vec::new(),
            });
            (d.cause, input)
        })
        .collect()
}
