//! The join operator over CDC tables (DESIGN §3a): it keeps both sides'
//! current rows, indexed by join key, and turns every change of either side
//! into the changes of the join result — the joined rows it retracts and the
//! ones it adds — so that whatever is maintained from those changes (a sink
//! table, an aggregation) equals the join of the source tables.
//!
//! Like `aggregate`, it is storage-free: the sink loads what a batch needs
//! (`missing_rows`, then `missing_keys`), calls `apply`, and writes the rows
//! it reports dirty, all inside the batch's transaction. Each side's rows
//! keep their last source position, so a re-delivered change does nothing.
//!
//! Semantics (SQL's, kept incrementally as Flink's regular joins do):
//! - inner: a joined row for every left and right row with equal join keys;
//! - left: the same, and a left row that matches nothing is joined with
//!   nulls (`right: None`) until its first match arrives and again once its
//!   last match is gone;
//! - a null in a join column matches nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::aggregate::AggregationOp;
use super::codec::{self, CorruptState, Reader, Writer};
use super::spec::LatePolicy;
use super::watermark::{PartitionTime, WatermarkRows, Watermarks};
use crate::model::{SinkTable, SourceOrder, TableDesc, Value};
use spec::IntervalSpec;

pub mod spec;

/// A join as the pipeline runs it.
#[derive(Debug)]
pub struct JoinOp {
    /// State is kept under this id: `<plugin name>/<join name>`.
    pub id: String,
    pub plugin: String,
    pub spec: spec::JoinSpec,
    /// The joined rows as a sink table (`spec.joined_table()`).
    pub table: Arc<SinkTable>,
    /// The joined rows as a source table, for the `project` calls of the
    /// aggregations that read them.
    pub desc: Arc<TableDesc>,
    /// Aggregations of the same plugin whose source is this join.
    pub feeds: Vec<Arc<AggregationOp>>,
    /// The plugin version that declared it (projects the joined rows for
    /// `feeds` inside the commit).
    pub code: Option<Arc<crate::plugin::runtime::Compiled>>,
}

impl JoinOp {
    /// The operator of `spec`, declared by `plugin`; `aggregations` are
    /// the plugin's, those reading the join by name become its feeds.
    pub fn new(
        plugin: &str,
        spec: spec::JoinSpec,
        aggregations: &[Arc<AggregationOp>],
        code: Option<Arc<crate::plugin::runtime::Compiled>>,
    ) -> JoinOp {
        let table = spec.joined_table();
        let desc = TableDesc {
            topic: format!("join:{plugin}/{}", spec.name),
            name: spec.name.clone(),
            namespace: String::new(),
            columns: table.columns.clone(),
            key: table.key.clone(),
        };
        JoinOp {
            id: format!("{plugin}/{}", spec.name),
            plugin: plugin.to_string(),
            feeds: aggregations
                .iter()
                .filter(|a| a.spec.source == spec.name)
                .cloned()
                .collect(),
            spec,
            table: Arc::new(table),
            desc: Arc::new(desc),
            code,
        }
    }

    /// Whether the joined rows go to a sink table of their own.
    pub fn writes_output(&self) -> bool {
        self.spec.output.is_some()
    }
}

/// One change of one side of one join, as the processor prepared it.
#[derive(Clone, Debug)]
pub struct JoinOpInput {
    pub op: Arc<JoinOp>,
    pub input: JoinInput,
    /// For the aggregations the join feeds: the change's commit time and
    /// source partition (`watermark::partition_key`).
    pub commit_time_ms: Option<i64>,
    pub partition: Vec<u8>,
}

/// Which rows a join keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    /// Every left row, with nulls for the right side when nothing matches.
    Left,
}

/// One of the two tables of a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Left => 0,
            Side::Right => 1,
        }
    }
}

/// What a change of one side means to the join.
#[derive(Clone, Debug, PartialEq)]
pub enum JoinChange {
    /// The row's new image: its join-column values, the columns the join
    /// keeps of it and (interval joins) its event time, µs.
    Row {
        on: Vec<Value>,
        values: Vec<Value>,
        time: Option<i64>,
    },
    /// The row is gone.
    Delete,
}

/// One change of one side, as the processor prepared it.
#[derive(Clone, Debug)]
pub struct JoinInput {
    pub side: Side,
    /// Identifies the source row: topic and primary key.
    pub row_key: Vec<u8>,
    pub order: Option<SourceOrder>,
    pub change: JoinChange,
}

/// A live row of one side.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveRow {
    /// Encoded join key; `None` when a join column is null (matches nothing).
    pub on: Option<Vec<u8>>,
    pub values: Vec<Value>,
    /// Event time, µs (interval joins).
    pub time: Option<i64>,
}

/// A source row as the join last saw it: its position, and its image unless
/// deleted (the position stays, so a re-delivered older change is known).
#[derive(Clone, Debug, PartialEq)]
pub struct SideRow {
    pub order: Option<SourceOrder>,
    pub live: Option<LiveRow>,
}

impl SideRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(codec::VERSION);
        w.order(self.order);
        match &self.live {
            None => w.u8(0),
            Some(l) => {
                // 1, 2: without a time (the first layout); 3, 4: with one
                let timed = if l.time.is_some() { 2 } else { 0 };
                match &l.on {
                    None => w.u8(1 + timed),
                    Some(on) => {
                        w.u8(2 + timed);
                        w.bytes(on);
                    }
                }
                w.values(&l.values);
                if let Some(t) = l.time {
                    w.i64(t);
                }
            }
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<SideRow, CorruptState> {
        let mut r = Reader::new(bytes);
        if r.u8()? != codec::VERSION {
            return Err(CorruptState("join row version"));
        }
        let order = r.order()?;
        let live = match r.u8()? {
            0 => None,
            tag => {
                let on = match tag {
                    1 | 3 => None,
                    2 | 4 => Some(r.bytes()?.to_vec()),
                    _ => return Err(CorruptState("join row tag")),
                };
                let values = r.values()?;
                let time = if tag > 2 { Some(r.i64()?) } else { None };
                Some(LiveRow { on, values, time })
            }
        };
        Ok(SideRow { order, live })
    }
}

/// One change of the join result: the joined row of `left` and `right`
/// (`None`: the nulls of a left join) added (`+1`) or retracted (`-1`).
/// `(left_key, right_key)` identifies the joined row.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinDelta {
    /// Index of the input whose change made it.
    pub cause: usize,
    pub weight: i8,
    pub left_key: Vec<u8>,
    pub left: Vec<Value>,
    pub right_key: Option<Vec<u8>>,
    pub right: Option<Vec<Value>>,
}

/// A side row whose stored state changed: write `row` (keyed by side and
/// row key) and move its index entry from `old_on` to `row.live.on`.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinWrite {
    pub side: Side,
    pub row_key: Vec<u8>,
    /// The join key it was indexed under before the batch.
    pub old_on: Option<Vec<u8>>,
    pub row: SideRow,
    /// Interval joins: the watermark past which the row's state goes.
    pub expires: Option<i64>,
}

/// What applying a batch's inputs produced.
#[derive(Debug, Default)]
pub struct JoinApplied {
    /// Changes of the join result, in the order they happened (a sink
    /// table keeps, per key, the last).
    pub deltas: Vec<JoinDelta>,
    /// Side rows to store, one per changed row.
    pub writes: Vec<JoinWrite>,
    /// Re-deliveries: not newer than the stored row.
    pub duplicates: u64,
    /// Interval joins: late inputs not applied (policy dead-letter), by
    /// input index, with the reason; and late inputs applied.
    pub late: Vec<(usize, String)>,
    pub late_applied: u64,
}

/// A row key, the values a side keeps of that row and its event time.
type KeyedValues = (Vec<u8>, Vec<Value>, Option<i64>);

/// Why `apply` could not run: the sink did not load what it needed.
#[derive(Debug, thiserror::Error)]
#[error("join state not loaded: {0}")]
pub struct NotLoaded(pub String);

/// A join's state as the sink holds it between commits: what was loaded
/// from (or written to) the database.
pub struct JoinState {
    kind: JoinKind,
    interval: Option<IntervalSpec>,
    /// Interval joins: per-partition event times; `None` until loaded.
    watermarks: Option<Watermarks>,
    /// Per side: each source row's state; `None` = known absent.
    rows: [HashMap<Vec<u8>, Option<SideRow>>; 2],
    /// Per side: the live rows under each loaded join key.
    by_key: [HashMap<Vec<u8>, BTreeSet<Vec<u8>>>; 2],
    /// Join keys whose rows, on both sides, are all loaded.
    loaded: HashSet<Vec<u8>>,
}

/// The watermark state key recording that a side was seen (never a
/// partition key: those start with a topic's length).
fn side_marker(side: Side) -> &'static [u8] {
    match side {
        Side::Left => b"\xffside:left",
        Side::Right => b"\xffside:right",
    }
}

/// The encoded join key of a row image; `None` when a join column is null.
pub fn join_key(on: &[Value]) -> Option<Vec<u8>> {
    if on.contains(&Value::Null) {
        return None;
    }
    Some(codec::key(on))
}

impl JoinState {
    pub fn new(kind: JoinKind) -> Self {
        JoinState {
            kind,
            interval: None,
            watermarks: None,
            rows: [HashMap::new(), HashMap::new()],
            by_key: [HashMap::new(), HashMap::new()],
            loaded: HashSet::new(),
        }
    }

    /// An interval join's state.
    pub fn with_interval(mut self, interval: Option<IntervalSpec>) -> Self {
        self.interval = interval;
        self
    }

    /// Forget everything loaded (another host may have changed the state).
    pub fn clear(&mut self) {
        *self = JoinState::new(self.kind).with_interval(self.interval.take());
    }

    /// Whether this is an interval join whose watermark must be loaded
    /// before `apply`.
    pub fn needs_watermarks(&self) -> bool {
        self.interval.is_some() && self.watermarks.is_none()
    }

    pub fn load_watermarks(&mut self, w: Watermarks) {
        self.watermarks = Some(w);
    }

    /// The watermark reached (µs), for interval joins that saw an event.
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.as_ref().and_then(|w| w.emitted)
    }

    /// Why an input of an interval join is late, if it is: its event time
    /// is behind the watermark the batch started with, so partners it
    /// could match may have expired already (a row at or after the
    /// watermark finds every partner still kept: a partner's state goes
    /// only once the watermark passes the last time it can match).
    pub fn late(&self, input: &JoinInput) -> Option<String> {
        let watermark = self.watermark()?;
        let JoinChange::Row { time: Some(t), .. } = &input.change else {
            return None;
        };
        (*t < watermark).then(|| {
            format!("late: the row's event time {t} µs is behind the watermark at {watermark} µs, past which partners leave the state")
        })
    }

    /// Interval joins: the batch's rows (partition, event time) and idle
    /// partitions move the watermark; returns the watermark state rows that
    /// changed (as `Watermarks::changed_rows`).
    pub fn advance<'a>(
        &mut self,
        times: impl Iterator<Item = (Side, &'a [u8], Option<i64>)>,
        idle: &[Vec<u8>],
    ) -> Option<WatermarkRows> {
        let interval = self.interval.as_ref()?;
        let mut w = self.watermarks.take().unwrap_or_default();
        let before = w.clone();
        for (side, partition, time) in times {
            match time {
                Some(t) => {
                    w.saw(partition.to_vec(), t);
                    // Which sides were seen (idle: never in the minimum).
                    w.partitions.insert(
                        side_marker(side).to_vec(),
                        PartitionTime { max: t, idle: true },
                    );
                }
                None => w.heard(partition),
            }
        }
        for p in idle {
            w.idle(p);
        }
        // Until both tables were seen, a watermark from one side alone
        // would make the other side's rows late.
        let both = [Side::Left, Side::Right]
            .iter()
            .all(|s| w.partitions.contains_key(side_marker(*s)));
        if both {
            w.advance(interval.out_of_orderness);
        }
        let rows = w.changed_rows(&before);
        self.watermarks = Some(w);
        Some(rows)
    }

    /// Drop an expired row from what is cached (its state was deleted):
    /// the next change of it reads the database again, and a join key
    /// left without rows is no longer held as loaded.
    pub fn forget(&mut self, side: Side, pk: &[u8]) {
        let old = self.rows[side.index()]
            .remove(pk)
            .flatten()
            .and_then(|r| r.live);
        self.index(side, pk, old.as_ref(), None);
        if let Some(on) = old.and_then(|l| l.on) {
            if self.by_key.iter().all(|m| !m.contains_key(&on)) {
                self.loaded.remove(&on);
            }
        }
    }

    /// Whether rows at these event times may be joined (always, for a
    /// regular join).
    fn fits(&self, left: Option<i64>, right: Option<i64>) -> bool {
        match (&self.interval, left, right) {
            (None, ..) => true,
            (Some(i), Some(l), Some(r)) => i.fits(l, r),
            (Some(_), ..) => false,
        }
    }

    /// (state rows, encoded bytes) held in memory, for the summary: an
    /// interval join's side rows; a regular join's index entries (its rows
    /// are the stored tables', counted there).
    pub fn size(&self) -> (usize, usize) {
        if self.interval.is_none() {
            let entries = self.by_key.iter().flat_map(|m| m.values().flatten());
            // an entry: two 16-byte digests, the row key as its value
            return entries.fold((0, 0), |(n, b), pk| (n + 1, b + 32 + pk.len()));
        }
        let rows = self.rows.iter().flat_map(|m| m.values().flatten());
        rows.fold((0, 0), |(n, b), r| (n + 1, b + r.encode().len()))
    }

    /// Rows of `side` the inputs change that are not loaded.
    pub fn missing_rows<'a>(
        &self,
        side: Side,
        inputs: impl Iterator<Item = &'a JoinInput>,
    ) -> Vec<Vec<u8>> {
        let rows = &self.rows[side.index()];
        let missing = inputs.filter(|i| i.side == side && !rows.contains_key(&i.row_key));
        let unique: BTreeSet<&Vec<u8>> = missing.map(|i| &i.row_key).collect();
        unique.into_iter().cloned().collect()
    }

    /// Store loaded side rows (`None`: not in the database).
    pub fn load_rows(&mut self, side: Side, rows: Vec<(Vec<u8>, Option<SideRow>)>) {
        for (k, row) in rows {
            self.rows[side.index()].entry(k).or_insert(row);
        }
    }

    /// Join keys the inputs touch (the rows' old keys and new ones) whose
    /// rows are not loaded. Call after `load_rows`.
    pub fn missing_keys<'a>(&self, inputs: impl Iterator<Item = &'a JoinInput>) -> Vec<Vec<u8>> {
        let mut out = BTreeSet::new();
        for i in inputs {
            let old = self.rows[i.side.index()]
                .get(&i.row_key)
                .and_then(|r| r.as_ref())
                .and_then(|r| r.live.as_ref())
                .and_then(|l| l.on.clone());
            let new = match &i.change {
                JoinChange::Row { on, .. } => join_key(on),
                JoinChange::Delete => None,
            };
            for k in [old, new].into_iter().flatten() {
                if !self.loaded.contains(&k) {
                    out.insert(k);
                }
            }
        }
        out.into_iter().collect()
    }

    /// Store every row, of both sides, under one join key.
    pub fn load_key(
        &mut self,
        key: Vec<u8>,
        left: Vec<(Vec<u8>, SideRow)>,
        right: Vec<(Vec<u8>, SideRow)>,
    ) {
        if self.loaded.contains(&key) {
            return;
        }
        for (side, rows) in [(Side::Left, left), (Side::Right, right)] {
            for (k, row) in rows {
                // A row already cached is newer than the database's copy.
                let cached = self.rows[side.index()]
                    .entry(k.clone())
                    .or_insert(Some(row));
                if let Some(LiveRow { on: Some(on), .. }) =
                    cached.as_ref().and_then(|r| r.live.as_ref())
                {
                    if *on == key {
                        self.by_key[side.index()]
                            .entry(key.clone())
                            .or_default()
                            .insert(k);
                    }
                }
            }
        }
        self.loaded.insert(key);
    }

    fn live(&self, side: Side, row_key: &[u8]) -> Option<&LiveRow> {
        self.rows[side.index()]
            .get(row_key)
            .and_then(|r| r.as_ref())
            .and_then(|r| r.live.as_ref())
    }

    /// Whether no live row of `side` has the (loaded) join key `key`: the
    /// index holds live rows only and drops a key's set when it empties.
    fn unmatched(&self, side: Side, key: &[u8]) -> bool {
        !self.by_key[side.index()].contains_key(key)
    }

    /// The live rows of `side` under `key` (none for a null key).
    fn matches(&self, side: Side, key: Option<&Vec<u8>>) -> Result<Vec<KeyedValues>, NotLoaded> {
        let Some(key) = key else {
            return Ok(Vec::new());
        };
        if !self.loaded.contains(key) {
            return Err(NotLoaded(format!("join key {key:?}")));
        }
        Ok(self.by_key[side.index()]
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| {
                self.live(side, k)
                    .map(|l| (k.clone(), l.values.clone(), l.time))
            })
            .collect())
    }

    /// Apply the inputs in order; the rows and keys they need must be loaded.
    pub fn apply(&mut self, inputs: &[&JoinInput]) -> Result<JoinApplied, NotLoaded> {
        let mut applied = JoinApplied::default();
        // Per changed row: its join key before the batch.
        let mut dirty: Vec<(Side, Vec<u8>)> = Vec::new();
        let mut old_keys: HashMap<(Side, Vec<u8>), Option<Vec<u8>>> = HashMap::new();
        // Per changed row: its latest event time (a deleted row's state,
        // kept against re-deliveries, expires with its last image).
        let mut times: HashMap<(Side, Vec<u8>), i64> = HashMap::new();
        for (idx, input) in inputs.iter().enumerate() {
            let (side, pk) = (input.side, &input.row_key);
            let stored = self.rows[side.index()]
                .get(pk)
                .ok_or_else(|| NotLoaded(format!("row {pk:?}")))?
                .clone();
            if let (
                Some(new),
                Some(SideRow {
                    order: Some(old), ..
                }),
            ) = (input.order, &stored)
            {
                if new <= *old {
                    applied.duplicates += 1;
                    continue;
                }
            }
            if let Some(reason) = self.late(input) {
                if self
                    .interval
                    .as_ref()
                    .is_some_and(|i| i.late == LatePolicy::DeadLetter)
                {
                    applied.late.push((idx, reason));
                    continue;
                }
                applied.late_applied += 1;
            }
            let old = stored.and_then(|s| s.live);
            let new = match &input.change {
                JoinChange::Row { on, values, time } => Some(LiveRow {
                    on: join_key(on),
                    values: values.clone(),
                    time: *time,
                }),
                JoinChange::Delete => None,
            };
            old_keys
                .entry((side, pk.clone()))
                .or_insert_with(|| old.as_ref().and_then(|l| l.on.clone()));
            if let Some(t) = new.as_ref().or(old.as_ref()).and_then(|l| l.time) {
                times.insert((side, pk.clone()), t);
            }
            if old != new {
                let made = applied.deltas.len();
                match side {
                    Side::Left => self.move_left(pk, old.as_ref(), new.as_ref(), &mut applied)?,
                    Side::Right => self.move_right(pk, old.as_ref(), new.as_ref(), &mut applied)?,
                }
                for d in &mut applied.deltas[made..] {
                    d.cause = idx;
                }
            }
            self.rows[side.index()].insert(
                pk.clone(),
                Some(SideRow {
                    order: input.order,
                    live: new,
                }),
            );
            dirty.push((side, pk.clone()));
        }
        let mut seen = HashSet::new();
        for (side, pk) in dirty {
            if !seen.insert((side, pk.clone())) {
                continue;
            }
            let row = self.rows[side.index()].get(&pk).cloned().flatten();
            let old_on = old_keys.remove(&(side, pk.clone())).flatten();
            if let Some(row) = row {
                // A delete of a row whose time is unknown (expired, never
                // seen) goes at the next expiry.
                let expires = match (&self.interval, times.get(&(side, pk.clone()))) {
                    (Some(i), Some(t)) => Some(i.expiry(side, *t)),
                    (Some(_), None) => Some(self.watermark().unwrap_or(i64::MIN)),
                    (None, _) => None,
                };
                applied.writes.push(JoinWrite {
                    side,
                    row_key: pk,
                    old_on,
                    row,
                    expires,
                });
            }
        }
        Ok(applied)
    }

    fn index(&mut self, side: Side, pk: &[u8], old: Option<&LiveRow>, new: Option<&LiveRow>) {
        let map = &mut self.by_key[side.index()];
        if let Some(on) = old.and_then(|l| l.on.as_ref()) {
            if let Some(set) = map.get_mut(on) {
                set.remove(pk);
                if set.is_empty() {
                    map.remove(on);
                }
            }
        }
        if let Some(on) = new.and_then(|l| l.on.as_ref()) {
            map.entry(on.clone()).or_default().insert(pk.to_vec());
        }
    }

    /// A left row changed: retract what its old image joined, add what
    /// its new one joins.
    fn move_left(
        &mut self,
        pk: &[u8],
        old: Option<&LiveRow>,
        new: Option<&LiveRow>,
        out: &mut JoinApplied,
    ) -> Result<(), NotLoaded> {
        for (row, weight) in [(old, -1), (new, 1)] {
            let Some(row) = row else { continue };
            let mut rights = self.matches(Side::Right, row.on.as_ref())?;
            rights.retain(|(_, _, t)| self.fits(row.time, *t));
            if rights.is_empty() && self.kind == JoinKind::Left {
                out.deltas.push(JoinDelta {
                    cause: 0,
                    weight,
                    left_key: pk.to_vec(),
                    left: row.values.clone(),
                    right_key: None,
                    right: None,
                });
            }
            for (rk, rv, _) in rights {
                out.deltas.push(JoinDelta {
                    cause: 0,
                    weight,
                    left_key: pk.to_vec(),
                    left: row.values.clone(),
                    right_key: Some(rk),
                    right: Some(rv),
                });
            }
        }
        self.index(Side::Left, pk, old, new);
        Ok(())
    }

    /// A right row changed: the left rows under its old key lose it (and,
    /// in a left join, fall back to nulls when it was their last match);
    /// those under its new key gain it.
    fn move_right(
        &mut self,
        pk: &[u8],
        old: Option<&LiveRow>,
        new: Option<&LiveRow>,
        out: &mut JoinApplied,
    ) -> Result<(), NotLoaded> {
        let left_join = self.kind == JoinKind::Left;
        if let Some(old) = old {
            let mut lefts = self.matches(Side::Left, old.on.as_ref())?;
            lefts.retain(|(_, _, t)| self.fits(*t, old.time));
            for (lk, lv, _) in &lefts {
                out.deltas.push(JoinDelta {
                    cause: 0,
                    weight: -1,
                    left_key: lk.clone(),
                    left: lv.clone(),
                    right_key: Some(pk.to_vec()),
                    right: Some(old.values.clone()),
                });
            }
            self.index(Side::Right, pk, Some(old), None);
            if left_join
                && old
                    .on
                    .as_ref()
                    .is_some_and(|k| self.unmatched(Side::Right, k))
            {
                for (lk, lv, _) in lefts {
                    out.deltas.push(JoinDelta {
                        cause: 0,
                        weight: 1,
                        left_key: lk,
                        left: lv,
                        right_key: None,
                        right: None,
                    });
                }
            }
        }
        if let Some(new) = new {
            let mut lefts = self.matches(Side::Left, new.on.as_ref())?;
            lefts.retain(|(_, _, t)| self.fits(*t, new.time));
            if left_join
                && new
                    .on
                    .as_ref()
                    .is_some_and(|k| self.unmatched(Side::Right, k))
            {
                for (lk, lv, _) in &lefts {
                    out.deltas.push(JoinDelta {
                        cause: 0,
                        weight: -1,
                        left_key: lk.clone(),
                        left: lv.clone(),
                        right_key: None,
                        right: None,
                    });
                }
            }
            self.index(Side::Right, pk, None, Some(new));
            for (lk, lv, _) in lefts {
                out.deltas.push(JoinDelta {
                    cause: 0,
                    weight: 1,
                    left_key: lk,
                    left: lv,
                    right_key: Some(pk.to_vec()),
                    right: Some(new.values.clone()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(i: i64) -> Value {
        Value::Int(i)
    }

    fn pk(side: Side, id: i64) -> Vec<u8> {
        let t = match side {
            Side::Left => "orders",
            Side::Right => "customers",
        };
        codec::key(&[Value::Text(t.into()), int(id)])
    }

    /// An order (id, customer) or a customer (id, segment).
    fn row(side: Side, id: i64, on: Option<i64>, value: i64, pos: u64) -> JoinInput {
        JoinInput {
            side,
            row_key: pk(side, id),
            order: Some(SourceOrder([pos, 0, 0])),
            change: JoinChange::Row {
                on: vec![on.map(int).unwrap_or(Value::Null)],
                values: vec![int(id), int(value)],
                time: None,
            },
        }
    }

    fn delete(side: Side, id: i64, pos: u64) -> JoinInput {
        JoinInput {
            side,
            row_key: pk(side, id),
            order: Some(SourceOrder([pos, 0, 0])),
            change: JoinChange::Delete,
        }
    }

    /// Load what the inputs need from `db` (the rows a previous state
    /// wrote), as the sink does, then apply.
    fn run(state: &mut JoinState, db: &mut Db, inputs: &[JoinInput]) -> JoinApplied {
        for side in [Side::Left, Side::Right] {
            for k in state.missing_rows(side, inputs.iter()) {
                let row = db.rows.get(&(side, k.clone())).cloned();
                state.load_rows(side, vec![(k, row)]);
            }
        }
        for key in state.missing_keys(inputs.iter()) {
            let under = |side: Side| {
                db.rows
                    .iter()
                    .filter(|((s, _), r)| {
                        *s == side && r.live.as_ref().and_then(|l| l.on.as_ref()) == Some(&key)
                    })
                    .map(|((_, k), r)| (k.clone(), r.clone()))
                    .collect()
            };
            let (l, r) = (under(Side::Left), under(Side::Right));
            state.load_key(key, l, r);
        }
        let refs: Vec<&JoinInput> = inputs.iter().collect();
        let applied = state.apply(&refs).expect("loaded");
        for w in &applied.writes {
            db.rows.insert((w.side, w.row_key.clone()), w.row.clone());
        }
        for d in &applied.deltas {
            let id = (d.left_key.clone(), d.right_key.clone());
            let n = db
                .result
                .entry(id)
                .or_insert((0, d.left.clone(), d.right.clone()));
            n.0 += d.weight as i64;
            assert!(n.0 >= 0 && n.0 <= 1, "a joined row counted {} times", n.0);
            if d.weight > 0 {
                n.1 = d.left.clone();
                n.2 = d.right.clone();
            }
        }
        db.result.retain(|_, v| v.0 > 0);
        applied
    }

    fn timed(side: Side, id: i64, on: i64, time: i64, pos: u64) -> JoinInput {
        let mut i = row(side, id, Some(on), id, pos);
        if let JoinChange::Row { time: t, .. } = &mut i.change {
            *t = Some(time);
        }
        i
    }

    /// Rows match only within the bound; the watermark makes a row late
    /// once its own state would have expired; rows and their joins leave
    /// the state without a retraction.
    #[test]
    fn an_interval_join_matches_within_its_bound_and_flags_late_rows() {
        let (l, r) = (Side::Left, Side::Right);
        let interval = IntervalSpec {
            left_time: "t".into(),
            right_time: "t".into(),
            before: 10,
            after: 5,
            out_of_orderness: 2,
            late: crate::operators::spec::LatePolicy::DeadLetter,
        };
        let mut state = JoinState::new(JoinKind::Inner).with_interval(Some(interval));
        assert!(state.needs_watermarks());
        state.load_watermarks(Watermarks::default());
        let mut db = Db::default();
        // left at 100 matches rights in [90, 105]
        let batch = [
            timed(l, 1, 7, 100, 1),
            timed(r, 2, 7, 103, 2),
            timed(r, 3, 7, 106, 3),
            timed(r, 4, 7, 90, 4),
            timed(r, 5, 7, 89, 5),
        ];
        let applied = run(&mut state, &mut db, &batch);
        let mut matched: Vec<i64> = applied
            .deltas
            .iter()
            .map(|d| match d.right.as_deref() {
                Some([Value::Int(id), ..]) => *id,
                other => panic!("{other:?}"),
            })
            .collect();
        matched.sort();
        assert_eq!(matched, vec![2, 4]);
        // expiry: left at 100 + after 5; right at t + before 10
        let w = |i: &JoinInput| match i.change {
            JoinChange::Row { time, .. } => time,
            JoinChange::Delete => None,
        };
        let p = crate::operators::watermark::partition_key("t", 0);
        let rows = state.advance(batch.iter().map(|i| (i.side, p.as_slice(), w(i))), &[]);
        assert!(rows.is_some_and(|(parts, reached)| parts.len() == 3 && reached.is_some()));
        assert_eq!(state.watermark(), Some(104));
        let exp: HashMap<Vec<u8>, Option<i64>> = applied
            .writes
            .iter()
            .map(|w| (w.row_key.clone(), w.expires))
            .collect();
        assert_eq!(exp[&pk(l, 1)], Some(105));
        assert_eq!(exp[&pk(r, 3)], Some(116));
        // behind the watermark: late (a partner may have expired)
        assert!(state.late(&timed(l, 9, 7, 103, 6)).is_some());
        assert!(state.late(&timed(l, 9, 7, 104, 6)).is_none());
        assert!(state
            .late(&timed(r, 9, 7, 93, 6))
            .unwrap()
            .starts_with("late"));
        // time moves on: the left row at 100 expires (105 < 198) and goes;
        // a late right row is dead-lettered, not applied
        let later = [timed(l, 8, 9, 200, 7)];
        run(&mut state, &mut db, &later);
        state.advance(later.iter().map(|i| (i.side, p.as_slice(), w(i))), &[]);
        assert_eq!(state.watermark(), Some(198));
        state.forget(l, &pk(l, 1));
        db.rows.remove(&(l, pk(l, 1)));
        let applied = run(&mut state, &mut db, &[timed(r, 6, 7, 101, 8)]);
        assert!(applied.deltas.is_empty(), "{:?}", applied.deltas);
        assert_eq!(applied.late.len(), 1);
        assert!(applied.writes.is_empty());
    }

    /// A watermark from one table alone would make the other's rows late:
    /// it waits for both.
    #[test]
    fn an_interval_join_watermark_waits_for_both_tables() {
        let interval = IntervalSpec {
            left_time: "t".into(),
            right_time: "t".into(),
            before: 0,
            after: 0,
            out_of_orderness: 0,
            late: crate::operators::spec::LatePolicy::DeadLetter,
        };
        let mut state = JoinState::new(JoinKind::Inner).with_interval(Some(interval));
        state.load_watermarks(Watermarks::default());
        let p = crate::operators::watermark::partition_key("left", 0);
        state.advance([(Side::Left, p.as_slice(), Some(500))].into_iter(), &[]);
        assert_eq!(state.watermark(), None);
        assert!(state.late(&timed(Side::Right, 1, 1, 10, 1)).is_none());
        let q = crate::operators::watermark::partition_key("right", 0);
        state.advance([(Side::Right, q.as_slice(), Some(10))].into_iter(), &[]);
        assert_eq!(state.watermark(), Some(10));
    }

    /// The stored side rows, and the join result maintained from deltas.
    #[derive(Default)]
    struct Db {
        rows: HashMap<(Side, Vec<u8>), SideRow>,
        #[allow(clippy::type_complexity)]
        result: HashMap<(Vec<u8>, Option<Vec<u8>>), (i64, Vec<Value>, Option<Vec<Value>>)>,
    }

    /// The join computed from scratch from the live rows: (left id, right id).
    fn reference(db: &Db, kind: JoinKind) -> BTreeSet<(i64, Option<i64>, i64, Option<i64>)> {
        let live = |side: Side| -> Vec<(Option<Vec<u8>>, Vec<Value>)> {
            db.rows
                .iter()
                .filter(|((s, _), _)| *s == side)
                .filter_map(|(_, r)| r.live.clone().map(|l| (l.on, l.values)))
                .collect()
        };
        let id = |v: &[Value]| match v[0] {
            Value::Int(i) => i,
            _ => panic!(),
        };
        let val = |v: &[Value]| match v[1] {
            Value::Int(i) => i,
            _ => panic!(),
        };
        let mut out = BTreeSet::new();
        for (lon, lv) in live(Side::Left) {
            let ms: Vec<_> = live(Side::Right)
                .into_iter()
                .filter(|(ron, _)| lon.is_some() && *ron == lon)
                .collect();
            if ms.is_empty() && kind == JoinKind::Left {
                out.insert((id(&lv), None, val(&lv), None));
            }
            for (_, rv) in ms {
                out.insert((id(&lv), Some(id(&rv)), val(&lv), Some(val(&rv))));
            }
        }
        out
    }

    fn maintained(db: &Db) -> BTreeSet<(i64, Option<i64>, i64, Option<i64>)> {
        let n = |v: &Value| match v {
            Value::Int(i) => *i,
            _ => panic!(),
        };
        db.result
            .values()
            .map(|(_, l, r)| {
                (
                    n(&l[0]),
                    r.as_ref().map(|r| n(&r[0])),
                    n(&l[1]),
                    r.as_ref().map(|r| n(&r[1])),
                )
            })
            .collect()
    }

    #[test]
    fn a_customer_after_its_orders_fills_the_left_join_and_its_delete_empties_it() {
        let (l, r) = (Side::Left, Side::Right);
        let mut s = JoinState::new(JoinKind::Left);
        let mut db = Db::default();
        let a = run(
            &mut s,
            &mut db,
            &[row(l, 1, Some(7), 100, 1), row(l, 2, Some(7), 200, 2)],
        );
        assert_eq!(a.deltas.len(), 2);
        assert!(a.deltas.iter().all(|d| d.weight == 1 && d.right.is_none()));
        // the customer arrives: nulls retracted, matches added
        let a = run(&mut s, &mut db, &[row(r, 7, Some(7), 1, 3)]);
        let w: Vec<(i8, bool)> = a
            .deltas
            .iter()
            .map(|d| (d.weight, d.right.is_some()))
            .collect();
        assert_eq!(w, vec![(-1, false), (-1, false), (1, true), (1, true)]);
        assert_eq!(maintained(&db), reference(&db, JoinKind::Left));
        // it changes segment: each order follows
        run(&mut s, &mut db, &[row(r, 7, Some(7), 2, 4)]);
        assert!(maintained(&db).iter().all(|t| t.3 == Some(2)));
        // it is deleted: back to nulls
        run(&mut s, &mut db, &[delete(r, 7, 5)]);
        assert_eq!(maintained(&db), reference(&db, JoinKind::Left));
        assert!(maintained(&db).iter().all(|t| t.1.is_none()));
        assert_eq!(maintained(&db).len(), 2);
    }

    #[test]
    fn an_inner_join_retracts_the_rows_of_a_deleted_customer_and_follows_moved_orders() {
        let (l, r) = (Side::Left, Side::Right);
        let mut s = JoinState::new(JoinKind::Inner);
        let mut db = Db::default();
        run(
            &mut s,
            &mut db,
            &[row(r, 7, Some(7), 1, 1), row(r, 8, Some(8), 2, 2)],
        );
        run(
            &mut s,
            &mut db,
            &[row(l, 1, Some(7), 100, 3), row(l, 2, None, 200, 4)],
        );
        assert_eq!(maintained(&db).len(), 1, "a null join key matches nothing");
        // the order moves to customer 8, in the same batch as 7's delete
        run(
            &mut s,
            &mut db,
            &[row(l, 1, Some(8), 100, 5), delete(r, 7, 6)],
        );
        assert_eq!(maintained(&db), reference(&db, JoinKind::Inner));
        assert_eq!(maintained(&db).iter().next().map(|t| t.1), Some(Some(8)));
        run(&mut s, &mut db, &[delete(r, 8, 7)]);
        assert!(maintained(&db).is_empty());
    }

    #[test]
    fn a_redelivered_change_does_nothing() {
        let (l, r) = (Side::Left, Side::Right);
        let mut s = JoinState::new(JoinKind::Left);
        let mut db = Db::default();
        run(
            &mut s,
            &mut db,
            &[row(r, 7, Some(7), 1, 10), row(l, 1, Some(7), 100, 11)],
        );
        let a = run(
            &mut s,
            &mut db,
            &[row(r, 7, Some(7), 1, 10), row(l, 1, Some(7), 100, 11)],
        );
        assert_eq!((a.duplicates, a.deltas.len(), a.writes.len()), (2, 0, 0));
        // also after a restart (state read back from the database)
        let mut fresh = JoinState::new(JoinKind::Left);
        let a = run(&mut fresh, &mut db, &[row(l, 1, Some(7), 100, 11)]);
        assert_eq!((a.duplicates, a.deltas.len()), (1, 0));
    }

    #[test]
    fn side_rows_round_trip_through_their_encoding() {
        for row in [
            SideRow {
                order: None,
                live: None,
            },
            SideRow {
                order: Some(SourceOrder([1, 2, 3])),
                live: Some(LiveRow {
                    on: None,
                    values: vec![Value::Null, int(3)],
                    time: None,
                }),
            },
            SideRow {
                order: Some(SourceOrder([9, 0, 0])),
                live: Some(LiveRow {
                    on: Some(vec![1, 2, 3]),
                    values: vec![Value::Text("x".into())],
                    time: None,
                }),
            },
            SideRow {
                order: Some(SourceOrder([9, 0, 0])),
                live: Some(LiveRow {
                    on: Some(vec![4]),
                    values: vec![int(1)],
                    time: Some(-5),
                }),
            },
            SideRow {
                order: None,
                live: Some(LiveRow {
                    on: None,
                    values: Vec::new(),
                    time: Some(1_700_000_000_000_000),
                }),
            },
        ] {
            assert_eq!(SideRow::decode(&row.encode()).ok(), Some(row));
        }
    }

    /// Random changes on both sides (moves between keys, deletes, nulls,
    /// re-inserts, one-to-many), in random batches, with the state dropped
    /// and read back now and then: the result kept from the deltas equals
    /// the join of the final tables, for both kinds.
    #[test]
    fn random_churn_keeps_the_result_equal_to_the_join_of_the_tables() {
        for kind in [JoinKind::Inner, JoinKind::Left] {
            let mut seed: u64 = 0x5eed;
            let mut next = |n: u64| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) % n
            };
            let mut s = JoinState::new(kind);
            let mut db = Db::default();
            let mut pos = 0;
            for round in 0..300 {
                let batch: Vec<JoinInput> = (0..1 + next(6))
                    .map(|_| {
                        pos += 1;
                        let side = if next(2) == 0 {
                            Side::Left
                        } else {
                            Side::Right
                        };
                        let id = next(12) as i64;
                        match next(5) {
                            0 => delete(side, id, pos),
                            1 => row(side, id, None, next(3) as i64, pos),
                            _ => row(side, id, Some(next(4) as i64), next(3) as i64, pos),
                        }
                    })
                    .collect();
                run(&mut s, &mut db, &batch);
                if round % 37 == 0 {
                    s.clear();
                }
                assert_eq!(
                    maintained(&db),
                    reference(&db, kind),
                    "{kind:?}, round {round}"
                );
            }
        }
    }
}
