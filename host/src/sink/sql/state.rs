//! Operator state in the commit: `sluice_state` rows read and written in
//! the batch's transaction, so state, group rows, dead letters and offsets
//! commit together (invariant 1). What was read stays cached between
//! commits while this host is the only writer: `sluice_state_seq` counts
//! the pipeline's stateful commits, and a count that moved by more than
//! this host's own commit means another host wrote, so the cache is dropped
//! and the state read again. Stateful commits lock that row after the
//! offsets, so they run one at a time per pipeline.

use sha2::Digest as _;

use super::*;
use crate::operators::aggregate::{kind, AggregateState, OperatorInput, StateWrite};
use crate::operators::watermark::partition_key;
use crate::source::SourceSignal;

/// Keys longer than this are stored as their SHA-256 (MySQL indexes at most
/// 1024 bytes of this key).
const MAX_KEY: usize = 1000;

fn stored_key(k: &[u8]) -> Vec<u8> {
    if k.len() <= MAX_KEY {
        return k.to_vec();
    }
    let mut out = vec![0xff, b'#'];
    out.extend_from_slice(&sha2::Sha256::digest(k));
    out
}

/// Rows per `IN (…)` read and per multi-row write.
const CHUNK: usize = 200;

/// The state of every aggregation this sink has seen, cached.
#[derive(Default)]
pub(super) struct OperatorStates {
    ops: HashMap<String, AggregateState>,
    /// The output table each aggregation last wrote (windows closed by the
    /// watermark alone are written there).
    tables: HashMap<String, Arc<SinkTable>>,
    /// `sluice_state_seq` after this host's last stateful commit.
    last_seq: Option<i64>,
    /// The sequence this attempt took (committed with it or not).
    pending_seq: Option<i64>,
}

/// What the operators did in one commit.
#[derive(Default)]
pub(super) struct OperatorReport {
    pub(super) outputs: Vec<SinkWrite>,
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
        self.last_seq = None;
        self.pending_seq = None;
    }

    /// Whether any aggregation ran in this sink (an idle partition may
    /// move its watermark).
    pub(super) fn any(&self) -> bool {
        !self.ops.is_empty()
    }

    /// After COMMIT.
    pub(super) fn committed(&mut self) {
        if let Some(seq) = self.pending_seq.take() {
            self.last_seq = Some(seq);
        }
    }

    /// (state rows, bytes) cached per aggregation, for the summary.
    pub(super) fn sizes(&self) -> Vec<(String, usize, usize)> {
        let mut out: Vec<_> = self
            .ops
            .iter()
            .map(|(id, s)| {
                let (rows, bytes) = s.size();
                (id.clone(), rows, bytes)
            })
            .collect();
        out.sort();
        out
    }

    /// Apply the events' operator inputs: take the pipeline's state turn,
    /// load what the inputs touch, apply, write the state. Inputs that
    /// change nothing (bad projection, impossible retraction) come back as
    /// dead letters; the group rows to write come back in the report.
    pub(super) async fn apply(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
        events: &[EventWrites],
        signals: &[SourceSignal],
        dead: &mut Vec<DeadLetter>,
    ) -> anyhow::Result<OperatorReport> {
        let mut report = OperatorReport::default();
        self.take_turn(conn, d, pipeline).await?;
        let idle: Vec<Vec<u8>> = signals
            .iter()
            .filter_map(|s| match s {
                SourceSignal::Idle { topic, partition } => Some(partition_key(topic, *partition)),
                _ => None,
            })
            .collect();
        // Inputs per aggregation, in batch order; with idle partitions,
        // every aggregation this sink knows (its watermark may move).
        let mut per_op: Vec<(String, Vec<(usize, &OperatorInput)>)> = Vec::new();
        if !idle.is_empty() {
            let mut known: Vec<&String> = self.ops.keys().collect();
            known.sort();
            per_op.extend(known.into_iter().map(|id| (id.clone(), Vec::new())));
        }
        for (e, ev) in events.iter().enumerate() {
            for input in &ev.ops {
                match per_op.iter_mut().find(|(id, _)| *id == input.op.id) {
                    Some((_, v)) => v.push((e, input)),
                    None => per_op.push((input.op.id.clone(), vec![(e, input)])),
                }
            }
        }
        for (id, inputs) in per_op {
            if let Some((_, first)) = inputs.first() {
                let spec = first.op.spec.clone();
                self.ops
                    .entry(id.clone())
                    .or_insert_with(|| AggregateState::new(spec));
                self.tables.insert(id.clone(), first.output.clone());
            }
            let Some(state) = self.ops.get_mut(&id) else {
                continue;
            };
            let context = || format!("reading the state of aggregation {id}");
            if state.needs_watermarks() {
                let partitions = read_kind(conn, d, pipeline, &id, kind::PARTITION).await?;
                let reached = read_kind(conn, d, pipeline, &id, kind::WATERMARK)
                    .await?
                    .into_iter()
                    .next()
                    .map(|(_, v)| v);
                state
                    .load_watermarks(partitions, reached)
                    .with_context(context)?;
            }
            let missing = state.missing_rows(inputs.iter().map(|(_, i)| *i));
            let loaded = read_state(conn, d, pipeline, &id, kind::ROW, &missing).await?;
            state.load_rows(loaded).with_context(context)?;
            let missing = state.missing_groups(inputs.iter().map(|(_, i)| *i));
            let loaded = read_state(conn, d, pipeline, &id, kind::GROUP, &missing).await?;
            state.load_groups(loaded).with_context(context)?;
            let refs: Vec<&OperatorInput> = inputs.iter().map(|(_, i)| *i).collect();
            let applied = state.apply(&refs, &idle);
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
            write_state(conn, d, pipeline, &id, &applied.state).await?;
            report.outputs.extend(applied.outputs);
            report.duplicates += applied.duplicates;
            report.late_applied += applied.late_applied;
            report.late_dead_lettered += applied.late_dead_lettered;
            // Windows the watermark passed: written (final mode), dropped
            // (nothing may change them any more).
            if let Some(before) = state.closing_before() {
                let closing = read_expired(conn, d, pipeline, &id, before).await?;
                if !closing.is_empty() {
                    let closed = state
                        .close(closing, self.tables.get(&id))
                        .with_context(context)?;
                    write_state(conn, d, pipeline, &id, &closed.state).await?;
                    report.outputs.extend(closed.outputs);
                }
            }
        }
        Ok(report)
    }

    /// Lock the pipeline's state sequence and move it on; if another host
    /// moved it since this host's last commit, drop the cache.
    async fn take_turn(
        &mut self,
        conn: &mut AnyConnection,
        d: Dialect,
        pipeline: &str,
    ) -> anyhow::Result<()> {
        let insert = format!(
            "{} INTO sluice_state_seq (pipeline, seq) VALUES (?, 0){}",
            d.insert_ignore(),
            d.insert_ignore_tail()
        );
        sqlx::query(&d.sql(&insert))
            .bind(pipeline)
            .execute(&mut *conn)
            .await
            .context("creating the state sequence")?;
        sqlx::query(&d.sql("UPDATE sluice_state_seq SET seq = seq + 1 WHERE pipeline = ?"))
            .bind(pipeline)
            .execute(&mut *conn)
            .await
            .context("taking the state turn")?;
        let seq: i64 = sqlx::query(&d.sql("SELECT seq FROM sluice_state_seq WHERE pipeline = ?"))
            .bind(pipeline)
            .fetch_one(&mut *conn)
            .await
            .context("reading the state sequence")?
            .try_get(0)?;
        if self.last_seq.map(|s| s + 1) != Some(seq) {
            if self.last_seq.is_some() {
                tracing::debug!("another host of the pipeline committed state; reading it afresh");
            }
            for s in self.ops.values_mut() {
                s.clear();
            }
        }
        self.pending_seq = Some(seq);
        Ok(())
    }
}

/// Every state row of one kind (the partitions of a watermark).
async fn read_kind(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let sql =
        d.sql("SELECT k, v FROM sluice_state WHERE pipeline = ? AND operator = ? AND kind = ?");
    let rows = sqlx::query(&sql)
        .bind(pipeline)
        .bind(operator)
        .bind(kind)
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("reading the watermarks of aggregation {operator}"))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Groups whose window ends at or before `before` and are not yet closed.
async fn read_expired(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    before: i64,
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let sql = d.sql(
        "SELECT k, v FROM sluice_state WHERE pipeline = ? AND operator = ? AND kind = ? \
         AND expires IS NOT NULL AND expires <= ? ORDER BY expires",
    );
    let rows = sqlx::query(&sql)
        .bind(pipeline)
        .bind(operator)
        .bind(kind::GROUP)
        .bind(before)
        .fetch_all(&mut *conn)
        .await
        .with_context(|| format!("reading the closing windows of aggregation {operator}"))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Read state rows by key; every key comes back, `None` when absent.
async fn read_state(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    kind: &str,
    keys: &[Vec<u8>],
) -> anyhow::Result<Vec<(Vec<u8>, Option<Vec<u8>>)>> {
    let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        let sql = d.sql(&format!(
            "SELECT k, v FROM sluice_state WHERE pipeline = ? AND operator = ? AND kind = ? AND k IN ({})",
            vec!["?"; chunk.len()].join(", ")
        ))
        .into_owned();
        let mut q = sqlx::query(&sql).bind(pipeline).bind(operator).bind(kind);
        for k in chunk {
            q = q.bind(stored_key(k));
        }
        for row in q
            .fetch_all(&mut *conn)
            .await
            .with_context(|| format!("reading the state of aggregation {operator}"))?
        {
            let k: Vec<u8> = row.try_get(0)?;
            let v: Vec<u8> = row.try_get(1)?;
            found.insert(k, v);
        }
    }
    Ok(keys
        .iter()
        .map(|k| {
            let v = found.remove(&stored_key(k));
            (k.clone(), v)
        })
        .collect())
}

/// Write (or delete) state rows.
async fn write_state(
    conn: &mut AnyConnection,
    d: Dialect,
    pipeline: &str,
    operator: &str,
    writes: &[StateWrite],
) -> anyhow::Result<()> {
    let (upserts, deletes): (Vec<&StateWrite>, Vec<&StateWrite>) =
        writes.iter().partition(|w| w.value.is_some());
    let cols: Vec<String> = ["pipeline", "operator", "kind", "k", "v", "expires"]
        .iter()
        .map(|c| d.quote(c))
        .collect();
    for chunk in upserts.chunks(CHUNK) {
        let sql = d
            .sql(&format!(
                "INSERT INTO sluice_state ({}) VALUES {}{}",
                cols.join(", "),
                vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", "),
                d.upsert_clause(&cols[..4], &cols[4..])
            ))
            .into_owned();
        let mut q = sqlx::query(&sql);
        for w in chunk {
            q = q
                .bind(pipeline)
                .bind(operator)
                .bind(w.kind)
                .bind(stored_key(&w.key))
                .bind(w.value.clone().unwrap_or_default())
                .bind(w.expires);
        }
        q.execute(&mut *conn)
            .await
            .with_context(|| format!("writing the state of aggregation {operator}"))?;
    }
    for chunk in deletes.chunks(CHUNK) {
        let sql = d.sql(&format!(
            "DELETE FROM sluice_state WHERE pipeline = ? AND operator = ? AND kind = ? AND k IN ({})",
            vec!["?"; chunk.len()].join(", ")
        ))
        .into_owned();
        // One kind per statement: split if mixed.
        let kinds: HashSet<&str> = chunk.iter().map(|w| w.kind).collect();
        for kind in kinds {
            let keys: Vec<&&StateWrite> = chunk.iter().filter(|w| w.kind == kind).collect();
            let sql = if keys.len() == chunk.len() {
                sql.clone()
            } else {
                d.sql(&format!(
                    "DELETE FROM sluice_state WHERE pipeline = ? AND operator = ? AND kind = ? AND k IN ({})",
                    vec!["?"; keys.len()].join(", ")
                ))
                .into_owned()
            };
            let mut q = sqlx::query(&sql).bind(pipeline).bind(operator).bind(kind);
            for w in keys {
                q = q.bind(stored_key(&w.key));
            }
            q.execute(&mut *conn)
                .await
                .with_context(|| format!("deleting state of aggregation {operator}"))?;
        }
    }
    Ok(())
}
