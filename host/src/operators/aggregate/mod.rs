//! The aggregation operator: keeps each source row's last contribution
//! (normalisation and dedup, DESIGN §3a), retracts it when the row changes
//! or goes away, adds the new one to the windows of its event time, and
//! answers with the group rows to upsert or delete and the state to write.
//!
//! It runs inside the sink's commit (`sink/sql/state.rs` loads what it needs
//! and writes what it changed, with the batch's rows and offsets), so the
//! database is the truth: whichever host of the pipeline committed last,
//! the next commit reads its state.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::accumulate::GroupAcc;
use super::codec::{self, CorruptState, Reader, Writer};
use super::session::{Session, SessionState};
use super::spec::{AggregationSpec, EmitMode, EventTimeSpec, LatePolicy, Semantics, WindowSpec};
use super::watermark::{WatermarkRows, Watermarks};
use super::window::{windows_of, Window};
use super::{CustomCalls, Projection};
use crate::model::{SinkTable, SinkWrite, SourceOrder, Value};

mod output;
mod panes;
mod stored;

use output::output_row;
pub use output::output_table;
use panes::TouchedPane;
pub use stored::kind;
use stored::{bound, micros, Contribution, GroupState, RowState};

/// The state caches' maps, keyed by encoded row and group keys: hashed
/// with foldhash (randomly seeded, as std's SipHash, at a fraction of its
/// cost per key: SipHash was ~3 % of an hopping-window aggregation's sink).
type KeyMap<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// An aggregation as the pipeline runs it.
#[derive(Debug)]
pub struct AggregationOp {
    /// State is kept under this id: `<plugin name>/<output table>`.
    pub id: String,
    pub plugin: String,
    /// Index in the plugin's declaration (for `project`).
    pub index: u32,
    pub spec: AggregationSpec,
    /// The plugin version that declared it: custom aggregates run on an
    /// instance of it inside the commit.
    pub code: Option<Arc<crate::plugin::runtime::Compiled>>,
}

/// What a change means to an aggregation.
#[derive(Clone, Debug)]
pub enum InputChange {
    /// The row's new image projected (`None`: the plugin filtered it out).
    Row(Option<Projection>),
    /// The row is gone.
    Delete,
}

/// One change for one aggregation, as the processor prepared it.
#[derive(Clone, Debug)]
pub struct OperatorInput {
    pub op: Arc<AggregationOp>,
    /// The sink table the group rows go to (types from the source table).
    pub output: Arc<SinkTable>,
    /// Identifies the source row: topic and primary key.
    pub row_key: Vec<u8>,
    pub order: Option<SourceOrder>,
    pub change: InputChange,
    pub commit_time_ms: Option<i64>,
    /// The source partition (`watermark::partition_key`): watermarks are
    /// kept per partition.
    pub partition: Vec<u8>,
}

/// A key an apply changed, and whether the sink held no row for it before
/// the apply (see [`StateWrite::fresh`]).
type Dirty = (Vec<u8>, bool);

/// `keys` without repeats, in the order first seen: each with the flag of
/// its first touch (later ones see what the apply itself changed).
fn distinct(mut keys: Vec<Dirty>) -> Vec<Dirty> {
    let mut seen: HashSet<&[u8], foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(keys.len(), Default::default());
    let first: Vec<bool> = keys
        .iter()
        .map(|(k, _)| seen.insert(k.as_slice()))
        .collect();
    drop(seen);
    let mut first = first.into_iter();
    keys.retain(|_| first.next().unwrap_or(false));
    keys
}

/// Whether two contributions are the same to the groups, value for value
/// as their state keys encode them (floats by their bits: 0.0 and -0.0
/// are different group keys and different minima).
fn same_contribution(a: Option<&Contribution>, b: Option<&Contribution>) -> bool {
    let same = |x: &[Value], y: &[Value]| {
        x.len() == y.len()
            && x.iter().zip(y).all(|pair| match pair {
                (Value::Float(f), Value::Float(g)) => f.to_bits() == g.to_bits(),
                (v, w) => v == w,
            })
    };
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            same(&a.group, &b.group)
                && same(a.time.as_slice(), b.time.as_slice())
                && same(&a.args, &b.args)
                && a.partition == b.partition
        }
        _ => false,
    }
}

/// Whether the sink holds no row for a key, by its cache entry: one read as
/// absent (or deleted since) holds none; one never cached holds none only
/// when the cache is complete. Call before the apply changes the entry.
fn absent_from_sink<V>(cached: Option<&Option<V>>, complete: bool) -> bool {
    match cached {
        Some(Some(_)) => false,
        Some(None) => true,
        None => complete,
    }
}

/// The cache entry of `key` (made, empty, when it has none) and whether the
/// sink holds no row for it: one hash lookup for both.
fn cached_entry<V>(
    map: &mut KeyMap<Option<V>>,
    key: Vec<u8>,
    complete: bool,
) -> (&mut Option<V>, bool) {
    match map.entry(key) {
        Entry::Occupied(o) => {
            let absent = absent_from_sink(Some(o.get()), complete);
            (o.into_mut(), absent)
        }
        Entry::Vacant(v) => (v.insert(None), absent_from_sink::<V>(None, complete)),
    }
}

/// The state writes of a watermark's changed rows (kinds `w` and `m`).
pub fn watermark_writes((partitions, reached): WatermarkRows) -> Vec<StateWrite> {
    let mut out: Vec<StateWrite> = partitions
        .into_iter()
        .map(|(key, value)| StateWrite {
            kind: kind::PARTITION,
            key,
            value: Some(value),
            expires: None,
            fresh: false,
        })
        .collect();
    out.extend(reached.map(|value| StateWrite {
        kind: kind::WATERMARK,
        key: Vec::new(),
        value: Some(value),
        expires: None,
        fresh: false,
    }));
    out
}

/// A state row to write: `value` `None` deletes it. `expires` is the time
/// after which the watermark may close it (windowed groups).
#[derive(Clone, Debug, PartialEq)]
pub struct StateWrite {
    pub kind: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub expires: Option<i64>,
    /// The sink held no row for this key before the commit (the operator's
    /// cache knows it): PostgreSQL inserts it without `ON CONFLICT`, which
    /// costs it about half (no speculative insertion). Wrong only if the
    /// cache is: the insert then fails and the commit is tried again with
    /// the caches dropped. `false` when unsure.
    pub fresh: bool,
}

/// What applying a batch's inputs produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// Group rows for the sink, in order, each with whether the sink is
    /// known to lack it (its group's state was: [`StateWrite::fresh`];
    /// a group's row and its state are written together). A row taken for
    /// new that is not makes PostgreSQL upsert it after all (`rows.rs`).
    pub outputs: Vec<(SinkWrite, bool)>,
    pub state: Vec<StateWrite>,
    /// (input index, reason) of inputs that change nothing and go to the DLQ.
    pub rejected: Vec<(usize, String)>,
    /// Re-deliveries: not newer than what the state holds for their row.
    pub duplicates: u64,
    /// Events for windows the watermark had closed, applied as corrections.
    pub late_applied: u64,
    /// Events for closed windows sent to the DLQ (reason `late`).
    pub late_dead_lettered: u64,
    /// Group rows that could not be computed (a custom aggregate failed
    /// to merge or finish): the batch cannot commit.
    pub failures: Vec<String>,
}

/// One aggregation's state as the sink holds it between commits: what was
/// loaded from (or written to) the database, by key; `None` = known absent.
pub struct AggregateState {
    spec: AggregationSpec,
    rows: KeyMap<Option<RowState>>,
    groups: KeyMap<Option<GroupState>>,
    /// Session windows: per group, its rows by event time.
    sessions: KeyMap<Option<SessionState>>,
    /// Per-partition event times and the watermark; `None` until loaded.
    watermarks: Option<Watermarks>,
    /// Every state row of this aggregation in the database is cached here
    /// (it had none when first loaded, and this host wrote all there is
    /// since): a key not cached is known absent and needs no read. A fresh
    /// pipeline catching up reads no state at all.
    complete: bool,
    /// A hopping window kept by panes (see `AggregateState::pane_length`):
    /// the pane length, µs; `None`: group state per window.
    panes: Option<i64>,
    /// The pane layout's marker row is still to be written (a fresh start).
    layout_unwritten: bool,
}

impl AggregateState {
    pub fn new(spec: AggregationSpec) -> Self {
        AggregateState {
            spec,
            rows: KeyMap::default(),
            groups: KeyMap::default(),
            sessions: KeyMap::default(),
            watermarks: None,
            complete: false,
            panes: None,
            layout_unwritten: false,
        }
    }

    /// The database holds no state of this aggregation (checked when the
    /// state is first loaded): every key not cached is absent.
    pub fn mark_complete(&mut self) {
        self.complete = true;
    }

    /// Whether keys not cached are known absent (see `mark_complete`).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether the watermark state must be read before `apply`.
    pub fn needs_watermarks(&self) -> bool {
        self.watermarks.is_none()
    }

    /// Store the loaded watermark rows: partitions (kind `w`) and the
    /// watermark reached (kind `m`, key empty).
    pub fn load_watermarks(
        &mut self,
        partitions: Vec<(Vec<u8>, Vec<u8>)>,
        reached: Option<Vec<u8>>,
    ) -> Result<(), CorruptState> {
        self.watermarks = Some(Watermarks::from_rows(partitions, reached)?);
        Ok(())
    }

    /// The watermark reached (µs), if any event was seen.
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.as_ref().and_then(|w| w.emitted)
    }

    /// Windows ending at or before this may be closed now: those whose end
    /// plus the allowed lateness the watermark has passed. `None` when this
    /// aggregation never closes windows (update mode applying late rows).
    pub fn closing_before(&self) -> Option<i64> {
        let closes = self.spec.emit == EmitMode::Final || self.spec.late == LatePolicy::DeadLetter;
        if !closes || self.gap().is_some() || self.spec.window == WindowSpec::Global {
            return None;
        }
        self.watermark()
            .map(|w| w.saturating_sub(self.spec.allowed_lateness))
    }

    /// When a window ending at `end` closes (is written for good in final
    /// mode, or dropped), as the `expires` of its state row.
    fn expiry(&self, end: i64) -> Option<i64> {
        let closes = self.spec.emit == EmitMode::Final || self.spec.late == LatePolicy::DeadLetter;
        (closes && self.gap().is_none() && self.spec.window != WindowSpec::Global).then_some(end)
    }

    /// Whether a window ending at `end` had closed when the batch began.
    fn closed(&self, end: i64, watermark: Option<i64>) -> bool {
        watermark.is_some_and(|w| end.saturating_add(self.spec.allowed_lateness) <= w)
    }

    /// The end of every window a contribution counts in.
    fn window_ends(&self, c: &Contribution) -> Vec<i64> {
        match (self.gap(), &c.time) {
            (_, None) => Vec::new(),
            (Some(gap), Some(t)) => micros(t)
                .map(|t| vec![t.saturating_add(gap)])
                .unwrap_or_default(),
            (None, Some(_)) => self
                .windows(c)
                .unwrap_or_default()
                .into_iter()
                .filter(|w| *w != (i64::MIN, i64::MAX))
                .map(|w| w.1)
                .collect(),
        }
    }

    fn gap(&self) -> Option<i64> {
        match self.spec.window {
            WindowSpec::Session { gap } => Some(gap),
            _ => None,
        }
    }

    fn session_key(c: &Contribution) -> Vec<u8> {
        codec::key(&c.group)
    }

    /// Forget everything loaded (another host may have changed the state).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.groups.clear();
        self.sessions.clear();
        self.watermarks = None;
        self.complete = false;
        self.panes = None;
        self.layout_unwritten = false;
    }

    /// (state rows, encoded bytes) held in memory, for the summary.
    pub fn size(&self) -> (usize, usize) {
        let rows = self.rows.values().flatten().map(|r| r.encode().len());
        let groups = self.groups.values().flatten().map(|g| g.encode().len());
        let sessions = self.sessions.values().flatten().map(|g| g.encode().len());
        let sizes: Vec<usize> = rows.chain(groups).chain(sessions).collect();
        (sizes.len(), sizes.iter().sum())
    }

    /// Row keys the inputs need that are not loaded.
    pub fn missing_rows<'a>(
        &self,
        inputs: impl Iterator<Item = &'a OperatorInput>,
    ) -> Vec<Vec<u8>> {
        let mut out: BTreeSet<Vec<u8>> = BTreeSet::new();
        for i in inputs {
            if !self.rows.contains_key(&i.row_key) {
                out.insert(i.row_key.clone());
            }
        }
        out.into_iter().collect()
    }

    /// Store loaded source rows (`None`: not in the database).
    pub fn load_rows(&mut self, rows: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), CorruptState> {
        for (k, v) in rows {
            let state = v.map(|b| RowState::decode(&b)).transpose()?;
            self.rows.insert(k, state);
        }
        Ok(())
    }

    /// The windows a contribution counts in.
    fn windows(&self, c: &Contribution) -> Result<Vec<Window>, String> {
        match &c.time {
            None => Ok(vec![(i64::MIN, i64::MAX)]),
            Some(t) => Ok(windows_of(&self.spec.window, micros(t)?)),
        }
    }

    fn group_key(c: &Contribution, w: Window) -> Vec<u8> {
        Self::window_key(&c.group, w)
    }

    fn window_key(group: &[Value], w: Window) -> Vec<u8> {
        let mut k = Writer::default();
        Self::window_key_bounds(&mut k, w);
        k.values(group);
        k.buf
    }

    /// The head of a window's state key: its bounds (the group's values
    /// follow, as `Writer::values` encodes them).
    fn window_key_bounds(k: &mut Writer, w: Window) {
        k.i64(w.0);
        k.i64(w.1);
    }

    /// The contribution an input brings (or why it cannot count).
    fn contribution(&self, input: &OperatorInput) -> Result<Option<Contribution>, String> {
        let p = match &input.change {
            InputChange::Row(Some(p)) => p,
            InputChange::Row(None) | InputChange::Delete => return Ok(None),
        };
        if p.args.len() != self.spec.measures.len() {
            return Err(format!(
                "the projection has {} arguments for {} measures",
                p.args.len(),
                self.spec.measures.len()
            ));
        }
        if p.group.len() != self.spec.group_by.len() {
            return Err(format!(
                "the projection has {} group values for {} group columns",
                p.group.len(),
                self.spec.group_by.len()
            ));
        }
        if let Some(i) = p.group.iter().position(|v| *v == Value::Null) {
            return Err(format!(
                "group column `{}` is null: a sink key cannot hold null",
                self.spec.group_by[i]
            ));
        }
        let time = match (&self.spec.event_time, &self.spec.window) {
            (_, WindowSpec::Global) => None,
            (EventTimeSpec::CommitTime, _) => match input.commit_time_ms {
                Some(ms) => Some(Value::Timestamp(ms * 1000)),
                None => return Err("the event has no commit time (source.ts_ms)".into()),
            },
            (EventTimeSpec::Column(c), _) => {
                let t = p
                    .event_time
                    .clone()
                    .ok_or_else(|| format!("the projection gave no event time (column `{c}`)"))?;
                micros(&t)?;
                Some(t)
            }
        };
        let custom = self
            .spec
            .measures
            .iter()
            .any(|m| m.function == super::spec::AggregateFn::Custom);
        Ok(Some(Contribution {
            group: p.group.clone(),
            time,
            args: p.args.clone(),
            partition: custom.then(|| input.partition.clone()),
        }))
    }

    /// Group keys the inputs touch that are not loaded. Call after the rows
    /// are loaded.
    pub fn missing_groups<'a>(
        &self,
        inputs: impl Iterator<Item = &'a OperatorInput>,
    ) -> Vec<Vec<u8>> {
        let mut out: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut want = |c: &Contribution| {
            if self.gap().is_some() {
                let k = Self::session_key(c);
                if !self.sessions.contains_key(&k) {
                    out.insert(k);
                }
                return;
            }
            for w in self.windows(c).unwrap_or_default() {
                // kept by panes: every pane of the windows it counts in
                // (their rows are merged from them)
                let cells: Vec<Window> = match self.panes {
                    Some(pane) => Self::panes_of(w, pane).collect(),
                    None => vec![w],
                };
                for cell in cells {
                    let k = Self::group_key(c, cell);
                    if !self.groups.contains_key(&k) {
                        out.insert(k);
                    }
                }
            }
        };
        for i in inputs {
            if let Some(Some(RowState {
                contribution: Some(old),
                ..
            })) = self.rows.get(&i.row_key)
            {
                want(old);
            }
            if let Ok(Some(new)) = self.contribution(i) {
                want(&new);
            }
        }
        out.into_iter().collect()
    }

    /// Store loaded groups (`None`: not in the database).
    pub fn load_groups(
        &mut self,
        groups: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), CorruptState> {
        for (k, v) in groups {
            if self.gap().is_some() {
                let state = v.map(|b| SessionState::decode(&b)).transpose()?;
                self.sessions.insert(k, state);
            } else {
                let state = v.map(|b| GroupState::decode(&b)).transpose()?;
                self.groups.insert(k, state);
            }
        }
        Ok(())
    }

    /// Apply the inputs in order. Rows and groups they need must be loaded,
    /// unless the cache is complete (a key not cached is then absent).
    ///
    /// `idle`: partitions signalled idle during the batch. Call
    /// `load_watermarks` first.
    pub fn apply(
        &mut self,
        inputs: &[&OperatorInput],
        idle: &[Vec<u8>],
        calls: &mut dyn CustomCalls,
    ) -> Applied {
        let mut applied = Applied::default();
        let watermark = self.watermark();
        let mut times = self.watermarks.take().unwrap_or_default();
        let times_before = times.clone();
        // Groups of closed windows corrected by late rows (final mode
        // writes them again at once).
        let mut corrected: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut dirty_rows: Vec<Dirty> = Vec::new();
        let mut dirty_groups: Vec<Dirty> = Vec::new();
        // Sessions of each touched session group before this batch.
        let mut sessions_before: KeyMap<Vec<Session>> = KeyMap::default();
        let mut output_table: Option<Arc<SinkTable>> = None;
        // Kept by panes: each touched pane's group, start and an event time.
        let mut panes_touched: KeyMap<TouchedPane> = KeyMap::default();
        if self.layout_unwritten {
            self.layout_unwritten = false;
            applied.state.push(StateWrite {
                kind: kind::PANES,
                key: Vec::new(),
                value: Some(self.marker()),
                expires: None,
                fresh: false,
            });
        }
        for (idx, input) in inputs.iter().enumerate() {
            output_table = Some(input.output.clone());
            let stored = self.rows.get(&input.row_key).and_then(Option::as_ref);
            if let (Some(new), Some(old)) = (input.order, stored.and_then(|s| s.order)) {
                if new <= old {
                    applied.duplicates += 1;
                    continue;
                }
            }
            let new = match self.contribution(input) {
                Ok(c) => c,
                Err(reason) => {
                    applied.rejected.push((idx, reason));
                    continue;
                }
            };
            let old = match self.spec.semantics {
                Semantics::Changelog => stored.and_then(|s| s.contribution.as_deref().cloned()),
                // Append: every event counts once; nothing is retracted.
                Semantics::Append => None,
            };
            let late_end = [old.as_ref(), new.as_ref()]
                .into_iter()
                .flatten()
                .flat_map(|c| self.window_ends(c))
                .filter(|&end| self.closed(end, watermark))
                .min();
            if let Some(end) = late_end {
                if self.spec.late == LatePolicy::DeadLetter {
                    applied.late_dead_lettered += 1;
                    applied.rejected.push((
                        idx,
                        format!(
                            "late: the change touches a window ending at {} µs, closed by the watermark at {} µs (allowed lateness {} µs)",
                            end,
                            watermark.unwrap_or_default(),
                            self.spec.allowed_lateness
                        ),
                    ));
                    continue;
                }
                applied.late_applied += 1;
            }
            match new.as_ref().and_then(|c| c.time.as_ref()) {
                Some(t) => times.saw(input.partition.clone(), micros(t).unwrap_or(i64::MIN)),
                None => times.heard(&input.partition),
            }
            // A change that leaves the row's contribution as it was (an
            // update of columns the aggregation does not read) retracts
            // and adds the same thing: it cancels out, as consolidated
            // diffs do in Materialize (Flink emits nothing for an
            // unchanged aggregate), so no group is touched. The row's
            // position still moves on and is written: it is what tells a
            // later re-delivery (or a replayed dead letter) from a change.
            let unchanged = self.spec.semantics == Semantics::Changelog
                && same_contribution(old.as_ref(), new.as_ref());
            if !unchanged {
                let moved = match self.gap() {
                    Some(gap) => {
                        self.move_in_sessions(old.as_ref(), new.as_ref(), gap, &mut sessions_before)
                    }
                    None => self.move_contribution(
                        old.as_ref(),
                        new.as_ref(),
                        calls,
                        &mut panes_touched,
                    ),
                };
                match moved {
                    Ok(touched) => {
                        if late_end.is_some() {
                            corrected.extend(touched.iter().map(|(k, _)| k.clone()));
                        }
                        dirty_groups.extend(touched)
                    }
                    Err(reason) => {
                        applied.rejected.push((idx, reason));
                        continue;
                    }
                }
            }
            let contribution = match self.spec.semantics {
                Semantics::Changelog => new.map(Box::new),
                Semantics::Append => None,
            };
            // A row without a source position (a joined row: the join
            // skips re-deliveries) keeps nothing once it contributes nothing.
            let keep = input.order.is_some() || contribution.is_some();
            // (the entry the insert replaces is the cache's before the apply)
            let replaced = self.rows.insert(
                input.row_key.clone(),
                keep.then_some(RowState {
                    order: input.order,
                    contribution,
                }),
            );
            let absent = absent_from_sink(replaced.as_ref(), self.complete);
            dirty_rows.push((input.row_key.clone(), absent));
        }
        for (k, fresh) in distinct(dirty_rows) {
            let value = self
                .rows
                .get(&k)
                .and_then(Option::as_ref)
                .map(RowState::encode);
            applied.state.push(StateWrite {
                kind: kind::ROW,
                key: k,
                fresh: fresh && value.is_some(),
                value,
                expires: None,
            });
        }
        for p in idle {
            times.idle(p);
        }
        times.advance(self.spec.out_of_orderness);
        applied
            .state
            .extend(watermark_writes(times.changed_rows(&times_before)));
        self.watermarks = Some(times);
        if let Some(gap) = self.gap() {
            self.session_writes(
                dirty_groups,
                sessions_before,
                gap,
                output_table,
                &mut applied,
                calls,
            );
            return applied;
        }
        if let Some(pane) = self.panes {
            self.pane_writes(
                dirty_groups,
                panes_touched,
                pane,
                output_table,
                &mut applied,
                calls,
            );
            return applied;
        }
        for (k, fresh) in distinct(dirty_groups) {
            let group = self.groups.get(&k).and_then(Option::as_ref);
            let (value, expires) = match group {
                // A closed window's state that stays (late rows applied) no
                // longer expires.
                Some(g) if g.acc.rows > 0 && self.closed(g.window.1, watermark) => {
                    (Some(g.encode()), None)
                }
                Some(g) if g.acc.rows > 0 => (Some(g.encode()), self.expiry(g.window.1)),
                _ => (None, None),
            };
            let emptied = value.is_none();
            if let (Some(table), Some(g)) = (&output_table, group) {
                if self.spec.emit == EmitMode::Update || corrected.contains(&k) {
                    match output_row(&self.spec, table, g, calls) {
                        Ok(w) => applied.outputs.push((w, fresh)),
                        Err(e) => applied.failures.push(e),
                    }
                }
            }
            if emptied {
                self.groups.insert(k.clone(), None);
            }
            applied.state.push(StateWrite {
                kind: kind::GROUP,
                key: k,
                fresh: fresh && value.is_some(),
                value,
                expires,
            });
        }
        let _ = LatePolicy::Apply;
        applied
    }

    /// Close the windows the watermark passed (`groups`: their state rows,
    /// read by `closing_before`): final mode writes their rows now; state
    /// that can no longer change (late rows dead-lettered) is dropped,
    /// state that late rows may still correct stays without expiry.
    pub fn close(
        &mut self,
        groups: Vec<(Vec<u8>, Vec<u8>)>,
        table: Option<&Arc<SinkTable>>,
        calls: &mut dyn CustomCalls,
    ) -> Result<Applied, CorruptState> {
        let mut applied = Applied::default();
        for (k, v) in groups {
            let g = GroupState::decode(&v)?;
            if self.spec.emit == EmitMode::Final {
                if let Some(table) = table {
                    match output_row(&self.spec, table, &g, calls) {
                        Ok(w) => applied.outputs.push((w, false)),
                        Err(e) => applied.failures.push(e),
                    }
                }
            }
            let keep = self.spec.late == LatePolicy::Apply;
            applied.state.push(StateWrite {
                kind: kind::GROUP,
                key: k.clone(),
                value: keep.then(|| g.encode()),
                expires: None,
                fresh: false,
            });
            self.groups.insert(k, keep.then_some(g));
        }
        Ok(applied)
    }

    /// `move_contribution` for session windows: the row's time moves in its
    /// group's (or groups') time map. Records each group's sessions before
    /// its first change in the batch.
    fn move_in_sessions(
        &mut self,
        old: Option<&Contribution>,
        new: Option<&Contribution>,
        gap: i64,
        before: &mut KeyMap<Vec<Session>>,
    ) -> Result<Vec<Dirty>, String> {
        let mut steps: Vec<(Vec<u8>, &Contribution, i64, i64)> = Vec::new();
        for (c, weight) in [(old, -1), (new, 1)] {
            if let Some(c) = c {
                let t = micros(c.time.as_ref().ok_or("a session row without event time")?)?;
                steps.push((Self::session_key(c), c, t, weight));
            }
        }
        // Check step by step against copies of the accumulators at the
        // steps' times only (a group's state holds all its rows' times).
        let measures = &self.spec.measures;
        let mut scratch: HashMap<(&[u8], i64), GroupAcc, foldhash::fast::RandomState> =
            HashMap::default();
        for (k, c, t, weight) in &steps {
            let acc = scratch.entry((k.as_slice(), *t)).or_insert_with(|| {
                self.sessions
                    .get(k)
                    .and_then(|s| s.as_ref()?.times.get(t).cloned())
                    .unwrap_or_else(|| GroupAcc::new(measures))
            });
            acc.check(&c.args, *weight)?;
            acc.apply(&c.args, *weight);
            // As `SessionState::apply`: a time without rows starts afresh.
            if acc.rows == 0 {
                *acc = GroupAcc::new(measures);
            }
        }
        let mut touched = Vec::new();
        for (k, c, t, weight) in steps {
            let measures = &self.spec.measures;
            let (entry, absent) = cached_entry(&mut self.sessions, k.clone(), self.complete);
            before.entry(k.clone()).or_insert_with(|| {
                entry
                    .as_ref()
                    .map(|s| s.sessions(measures, gap))
                    .unwrap_or_default()
            });
            let s = entry.get_or_insert_with(|| {
                SessionState::new(c.group.clone(), c.time.clone().unwrap_or(Value::Null))
            });
            s.apply(measures, t, &c.args, weight);
            touched.push((k, absent));
        }
        Ok(touched)
    }

    /// State and output writes of the touched session groups: sessions that
    /// no longer exist are deleted, changed and new ones upserted.
    fn session_writes(
        &mut self,
        dirty: Vec<Dirty>,
        mut before: KeyMap<Vec<Session>>,
        gap: i64,
        table: Option<Arc<SinkTable>>,
        applied: &mut Applied,
        calls: &mut dyn CustomCalls,
    ) {
        for (k, fresh) in distinct(dirty) {
            let state = self.sessions.get(&k).and_then(Option::as_ref);
            let value = state.filter(|s| !s.is_empty()).map(|s| s.encode());
            let emptied = value.is_none();
            applied.state.push(StateWrite {
                kind: kind::GROUP,
                key: k.clone(),
                fresh: fresh && value.is_some(),
                value,
                expires: None,
            });
            if let (Some(table), Some(state), EmitMode::Update) = (&table, state, self.spec.emit) {
                Self::session_outputs(
                    &self.spec,
                    table,
                    (state, fresh),
                    before.remove(&k).unwrap_or_default(),
                    gap,
                    applied,
                    calls,
                );
            }
            if emptied {
                self.sessions.insert(k, None);
            }
        }
    }

    /// The output rows of one session group's change: rows of sessions
    /// gone are deleted (as zero-row groups), new and changed ones upserted
    /// (new to the sink, all of them, when the group is `fresh`).
    fn session_outputs(
        spec: &AggregationSpec,
        table: &Arc<SinkTable>,
        (state, fresh): (&SessionState, bool),
        old: Vec<Session>,
        gap: i64,
        applied: &mut Applied,
        calls: &mut dyn CustomCalls,
    ) {
        let after = state.sessions(&spec.measures, gap);
        let row = |s: &Session| GroupState {
            group: state.group.clone(),
            window: (s.start, s.end),
            bounds: Some((bound(&state.like, s.start), bound(&state.like, s.end))),
            acc: s.acc.clone(),
        };
        for gone in old
            .iter()
            .filter(|o| !after.iter().any(|a| a.start == o.start))
        {
            let mut g = row(gone);
            g.acc.rows = 0;
            match output_row(spec, table, &g, calls) {
                Ok(w) => applied.outputs.push((w, false)),
                Err(e) => applied.failures.push(e),
            }
        }
        for s in after.iter().filter(|a| !old.contains(a)) {
            match output_row(spec, table, &row(s), calls) {
                Ok(w) => applied.outputs.push((w, fresh)),
                Err(e) => applied.failures.push(e),
            }
        }
    }

    /// Retract `old` and add `new`, checking first so that a refused change
    /// leaves every group as it was. Returns the groups touched.
    fn move_contribution(
        &mut self,
        old: Option<&Contribution>,
        new: Option<&Contribution>,
        calls: &mut dyn CustomCalls,
        panes_touched: &mut KeyMap<TouchedPane>,
    ) -> Result<Vec<Dirty>, String> {
        let mut steps: Vec<(Vec<u8>, &Contribution, Window, i64)> = Vec::new();
        if let Some(c) = old {
            for w in self.cells(c)? {
                steps.push((Self::group_key(c, w), c, w, -1));
            }
        }
        if let Some(c) = new {
            for w in self.cells(c)? {
                steps.push((Self::group_key(c, w), c, w, 1));
            }
        }
        // Check against the groups as they would be step by step: a group
        // one step touches is checked as it is; only one that two steps
        // touch (the row stays in its group) is copied to check the
        // second step against the first one's result (a copy per step
        // was a copy of every min/max multiset per change).
        let mut scratch: HashMap<&[u8], GroupAcc, foldhash::fast::RandomState> = HashMap::default();
        // Whether a later step touches the same group: a scan for the few
        // steps of a tumbling window, one pass over a set for the many of
        // a hopping window kept per window (1 day sliding by a minute:
        // 2,880 steps).
        let again: Vec<bool> = if steps.len() <= 8 {
            (0..steps.len())
                .map(|i| {
                    steps[i + 1..]
                        .iter()
                        .any(|(later, ..)| *later == steps[i].0)
                })
                .collect()
        } else {
            let mut later: HashSet<&[u8], foldhash::fast::RandomState> = HashSet::default();
            let mut flags = vec![false; steps.len()];
            for (i, (k, ..)) in steps.iter().enumerate().rev() {
                flags[i] = !later.insert(k.as_slice());
            }
            flags
        };
        for (i, (k, c, _, weight)) in steps.iter().enumerate() {
            let again = again[i];
            let cached = || self.groups.get(k).and_then(Option::as_ref).map(|g| &g.acc);
            match scratch.get_mut(k.as_slice()) {
                Some(acc) => {
                    acc.check(&c.args, *weight)?;
                    acc.apply(&c.args, *weight);
                }
                None if again => {
                    let mut acc = cached()
                        .cloned()
                        .unwrap_or_else(|| GroupAcc::new(&self.spec.measures));
                    acc.check(&c.args, *weight)?;
                    acc.apply(&c.args, *weight);
                    scratch.insert(k, acc);
                }
                None => match cached() {
                    Some(acc) => acc.check(&c.args, *weight)?,
                    None => GroupAcc::new(&self.spec.measures).check(&c.args, *weight)?,
                },
            }
        }
        // Custom measures: the plugin folds the row into the state of the
        // partition the row came from (refusing aborts the whole change).
        // (group key, measure, partition, new state)
        type Partial = (Vec<u8>, usize, Vec<u8>, Vec<u8>);
        let mut partials: Vec<Partial> = Vec::new();
        for (m, spec) in self.spec.measures.iter().enumerate() {
            if spec.function != super::spec::AggregateFn::Custom {
                continue;
            }
            for (k, c, _, weight) in &steps {
                let part = c.partition.clone().unwrap_or_default();
                let current = partials
                    .iter()
                    .rev()
                    .find(|(pk, pm, pp, _)| pk == k && *pm == m && *pp == part)
                    .map(|(_, _, _, s)| s.clone())
                    .or_else(|| {
                        self.groups
                            .get(k)
                            .and_then(|g| g.as_ref())
                            .and_then(|g| g.acc.partial(m, &part))
                            .map(<[u8]>::to_vec)
                    });
                let arg = c.args.get(m).cloned().unwrap_or(Value::Null);
                let state = calls
                    .apply(m as u32, current.as_deref(), &[(arg, *weight)])
                    .map_err(|e| format!("custom measure `{}`: {e}", spec.name))?;
                partials.push((k.clone(), m, part, state));
            }
        }
        let mut touched = Vec::with_capacity(steps.len());
        for (k, c, w, weight) in steps {
            let (entry, absent) = cached_entry(&mut self.groups, k.clone(), self.complete);
            let g = entry.get_or_insert_with(|| GroupState {
                group: c.group.clone(),
                window: w,
                bounds: c.time.as_ref().map(|t| (bound(t, w.0), bound(t, w.1))),
                acc: GroupAcc::new(&self.spec.measures),
            });
            g.acc.apply(&c.args, weight);
            if let (Some(_), Some(t)) = (self.panes, &c.time) {
                if !panes_touched.contains_key(&k) {
                    let pane = TouchedPane {
                        group: c.group.clone(),
                        start: w.0,
                        time: t.clone(),
                    };
                    panes_touched.insert(k.clone(), pane);
                }
            }
            touched.push((k, absent));
        }
        for (k, m, part, state) in partials {
            if let Some(Some(g)) = self.groups.get_mut(&k) {
                g.acc.set_partial(m, part, state);
            }
        }
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::spec::tests::daily_orders;
    use crate::operators::NoCustom;

    pub(super) const HOUR: i64 = 3_600_000_000;

    /// Order `row` at source position `pos`: customer and hour, or deleted.
    pub(super) fn input(row: u8, pos: u64, placed: Option<(i64, i64)>) -> OperatorInput {
        let spec = daily_orders();
        OperatorInput {
            op: Arc::new(AggregationOp {
                id: "p/orders_daily".into(),
                plugin: "p".into(),
                index: 0,
                spec,
                code: None,
            }),
            output: Arc::new(SinkTable {
                name: "orders_daily".into(),
                columns: Vec::new(),
                key: Vec::new(),
                rewritten: true,
            }),
            row_key: vec![row],
            order: Some(SourceOrder([pos, 0, 0])),
            change: match placed {
                Some((customer, hour)) => InputChange::Row(Some(Projection {
                    group: vec![Value::Int(customer)],
                    event_time: Some(Value::Timestamp(hour * HOUR)),
                    args: vec![Value::Null, Value::Int(5)],
                })),
                None => InputChange::Delete,
            },
            commit_time_ms: None,
            partition: vec![0],
        }
    }

    /// (kind, written or deleted, fresh) of the row and group writes, in order.
    fn writes(
        state: &mut AggregateState,
        inputs: &[OperatorInput],
    ) -> Vec<(&'static str, bool, bool)> {
        let refs: Vec<&OperatorInput> = inputs.iter().collect();
        let applied = state.apply(&refs, &[], &mut NoCustom);
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        applied
            .state
            .iter()
            .filter(|w| w.kind == kind::ROW || w.kind == kind::GROUP)
            .map(|w| (w.kind, w.value.is_some(), w.fresh))
            .collect()
    }

    /// A write is fresh (inserted without ON CONFLICT) only where the cache
    /// knows the sink holds no row: never cached in a complete cache, read
    /// as absent, or deleted since; never for a key it does not know.
    #[test]
    fn only_keys_the_sink_is_known_to_lack_are_written_fresh() {
        let mut state = AggregateState::new(daily_orders());
        state.mark_complete();
        state.load_watermarks(Vec::new(), None).unwrap();
        // a new order: its row and its group are new
        let got = writes(&mut state, &[input(1, 1, Some((7, 1)))]);
        assert_eq!(got, [("r", true, true), ("g", true, true)]);
        // it moves to customer 8: its row is held; 7's group empties
        // (deleted), 8's is new; touched twice in one apply, the first
        // touch decides
        let got = writes(
            &mut state,
            &[input(1, 2, Some((8, 1))), input(1, 3, Some((8, 2)))],
        );
        assert_eq!(
            got,
            [("r", true, false), ("g", false, false), ("g", true, true)]
        );
        // back to customer 7: the group deleted above is new again
        let got = writes(&mut state, &[input(1, 4, Some((7, 1)))]);
        assert_eq!(
            got,
            [("r", true, false), ("g", false, false), ("g", true, true)]
        );

        // A cache that is not complete: a key never read may be held.
        let mut state = AggregateState::new(daily_orders());
        state.load_watermarks(Vec::new(), None).unwrap();
        state.load_rows(vec![(vec![2], None)]).unwrap();
        let seven = state
            .contribution(&input(2, 1, Some((7, 1))))
            .unwrap()
            .unwrap();
        let day = state.windows(&seven).unwrap()[0];
        state
            .load_groups(vec![(AggregateState::group_key(&seven, day), None)])
            .unwrap();
        let got = writes(
            &mut state,
            &[input(2, 1, Some((7, 1))), input(3, 1, Some((9, 1)))],
        );
        assert_eq!(
            got,
            [
                ("r", true, true),
                ("r", true, false),
                ("g", true, true),
                ("g", true, false)
            ]
        );
    }

    /// An update of columns the aggregation does not read cancels out: no
    /// group or output is written, only the row's new position, so what
    /// came before it — its re-delivery, a replayed older change that
    /// projects elsewhere — is still a duplicate.
    #[test]
    fn a_change_that_keeps_the_contribution_writes_only_its_position() {
        let mut state = AggregateState::new(daily_orders());
        state.mark_complete();
        state.load_watermarks(Vec::new(), None).unwrap();
        let apply = |state: &mut AggregateState, input: OperatorInput| {
            let applied = state.apply(&[&input], &[], &mut NoCustom);
            assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
            let rows: Vec<_> = applied
                .state
                .iter()
                .filter(|w| w.kind == kind::ROW || w.kind == kind::GROUP)
                .map(|w| (w.kind, w.value.is_some()))
                .collect();
            (rows, applied.outputs.len(), applied.duplicates)
        };
        let created = apply(&mut state, input(1, 1, Some((7, 1))));
        assert_eq!(created.0, [("r", true), ("g", true)]);
        // the same customer and hour at a newer position: its position only
        let position = (vec![("r", true)], 0, 0);
        assert_eq!(apply(&mut state, input(1, 3, Some((7, 1)))), position);
        // its re-delivery, and an older change replayed (say a dead letter
        // sent again) though it projects elsewhere, are duplicates
        let duplicate = (vec![], 0, 1);
        assert_eq!(apply(&mut state, input(1, 3, Some((7, 1)))), duplicate);
        assert_eq!(apply(&mut state, input(1, 2, Some((9, 1)))), duplicate);
        // a real change still moves the row
        let moved = apply(&mut state, input(1, 4, Some((8, 1))));
        assert_eq!(moved.0, [("r", true), ("g", false), ("g", true)]);
        // floats are the same by their bits, as group keys are
        let with = |v: f64| Contribution {
            group: vec![Value::Float(v)],
            time: None,
            args: vec![],
            partition: None,
        };
        assert!(same_contribution(Some(&with(0.5)), Some(&with(0.5))));
        assert!(!same_contribution(Some(&with(0.0)), Some(&with(-0.0))));
        assert!(same_contribution(None, None));
        assert!(!same_contribution(Some(&with(0.5)), None));
    }

    /// A change is checked step by step before it touches a group: a
    /// retraction from a group that does not hold the row is refused and
    /// changes nothing; a row that stays in its group is checked against
    /// the group as its retraction leaves it.
    #[test]
    fn a_change_is_checked_against_the_groups_as_its_steps_leave_them() {
        // a day's window (two steps a change), and seven days sliding by
        // one kept per window (fourteen: the set-based repeat check)
        checked_step_by_step(daily_orders());
        checked_step_by_step(AggregationSpec {
            window: crate::operators::spec::WindowSpec::Hopping {
                size: 7 * 24 * HOUR,
                slide: 24 * HOUR,
                offset: 0,
            },
            ..daily_orders()
        });
    }

    fn checked_step_by_step(spec: AggregationSpec) {
        let with_amount = |mut input: OperatorInput, amount: Value| {
            if let InputChange::Row(Some(p)) = &mut input.change {
                p.args[1] = amount;
            }
            input
        };
        let mut state = AggregateState::new(spec);
        state.mark_complete();
        state.load_watermarks(Vec::new(), None).unwrap();
        let created = with_amount(input(1, 1, Some((7, 1))), Value::Float(1.5));
        let seven = state.contribution(&created).unwrap().unwrap();
        let day = AggregateState::group_key(&seven, state.windows(&seven).unwrap()[0]);
        let applied = state.apply(&[&created], &[], &mut NoCustom);
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        // the only row of its group changes its amount from a float to a
        // decimal: retracted, the sum is empty and takes a decimal
        let decimal = with_amount(input(1, 2, Some((7, 1))), Value::Decimal("2.50".into()));
        let applied = state.apply(&[&decimal], &[], &mut NoCustom);
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        let sum = |state: &AggregateState| {
            state.groups[&day]
                .as_ref()
                .map(|g| g.acc.finish(&state.spec.measures, &mut NoCustom).unwrap())
        };
        assert_eq!(
            sum(&state),
            Some(vec![Value::Int(1), Value::Decimal("2.50".into())])
        );
        // a second row: the first one's retraction no longer empties the
        // sum, so a float amount is refused, and nothing changes
        let other = with_amount(input(2, 3, Some((7, 2))), Value::Decimal("1.00".into()));
        assert!(state
            .apply(&[&other], &[], &mut NoCustom)
            .rejected
            .is_empty());
        let float = with_amount(input(1, 4, Some((7, 1))), Value::Float(3.0));
        let applied = state.apply(&[&float], &[], &mut NoCustom);
        assert_eq!(applied.rejected.len(), 1, "{:?}", applied.rejected);
        let before = sum(&state);
        assert_eq!(
            before,
            Some(vec![Value::Int(2), Value::Decimal("3.50".into())])
        );
        // a group that lost the row (corrupt state): its retraction is
        // refused and the group is left as it was
        state.groups.insert(day.clone(), None);
        let applied = state.apply(&[&input(2, 5, None)], &[], &mut NoCustom);
        assert_eq!(applied.rejected.len(), 1, "{:?}", applied.rejected);
        assert!(
            applied.rejected[0].1.contains("matches no row"),
            "{:?}",
            applied.rejected
        );
        assert_eq!(state.groups[&day], None);
    }
}
