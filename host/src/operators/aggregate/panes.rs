//! Hopping windows kept by panes (Flink's window slices): a pane is one
//! slide of a group's rows, a window's row the merge of its panes, so a
//! change writes one pane's state instead of one per window it counts in.

use super::*;

impl AggregateState {
    /// The pane length a hopping window could be kept by: its slide, when
    /// the size is a whole number of slides and its windows never close
    /// (update mode applying late rows) and no measure is custom. A pane
    /// is one slide of a group's rows; a window's row is the merge of its
    /// panes, so a change writes one pane's state instead of one state per
    /// window (seven for 7 days sliding by one), as Flink's window slices.
    pub(super) fn pane_length(spec: &AggregationSpec) -> Option<i64> {
        let WindowSpec::Hopping { size, slide, .. } = spec.window else {
            return None;
        };
        let custom = spec
            .measures
            .iter()
            .any(|m| m.function == crate::operators::spec::AggregateFn::Custom);
        let closes = spec.emit == EmitMode::Final || spec.late == LatePolicy::DeadLetter;
        (size % slide == 0 && size > slide && !closes && !custom).then_some(slide)
    }

    /// Choose the state layout when the state is first loaded, from what
    /// the database holds: no state of this aggregation yet (`fresh`):
    /// panes when the window allows them (the marker row, [`Self::marker`],
    /// is written with the first commit); state marked as kept by panes
    /// (`marker`): those panes, or `Err` when the declaration does not
    /// keep the same ones (its stored state cannot be read any other way);
    /// state without a marker (an older host's) stays per window.
    pub fn set_layout(&mut self, fresh: bool, marker: Option<&[u8]>) -> Result<(), String> {
        self.panes = match (fresh, marker) {
            (true, _) => Self::pane_length(&self.spec),
            (false, None) => None,
            (false, Some(bytes)) => {
                let (pane, offset) =
                    decode_marker(bytes).ok_or_else(|| "its pane marker is corrupt".to_string())?;
                let allowed = Self::pane_length(&self.spec);
                if allowed.is_none() || self.marker() != bytes {
                    return Err(format!(
                        "its stored state is kept by panes of {pane} µs from offset {offset} µs, \
                         which this declaration does not keep (it needs a hopping window \
                         sliding by {pane} µs from that offset, whose size is a whole number \
                         of slides, `update` emission, late rows applied and no custom \
                         measure); keep the declaration that wrote the state, or run the new \
                         one under a new pipeline name"
                    ));
                }
                allowed
            }
        };
        self.layout_unwritten = fresh && self.panes.is_some();
        Ok(())
    }

    /// The marker row's value: pane length and window offset, µs.
    pub(super) fn marker(&self) -> Vec<u8> {
        let pane = Self::pane_length(&self.spec).unwrap_or_default();
        [pane.to_le_bytes(), self.hopping().1.to_le_bytes()].concat()
    }

    /// (size, offset) of the hopping window, µs ((0, 0) for another kind).
    fn hopping(&self) -> (i64, i64) {
        match self.spec.window {
            WindowSpec::Hopping { size, offset, .. } => (size, offset),
            _ => (0, 0),
        }
    }

    /// Whether the state is kept by panes (see `set_layout`).
    pub fn keeps_panes(&self) -> bool {
        self.panes.is_some()
    }

    /// The windows whose state a contribution changes: its pane when kept
    /// by panes, else every window it counts in.
    pub(super) fn cells(&self, c: &Contribution) -> Result<Vec<Window>, String> {
        match (self.panes, &c.time) {
            (Some(pane), Some(t)) => {
                let t = micros(t)?;
                let offset = self.hopping().1;
                let start = offset + (t - offset).div_euclid(pane) * pane;
                Ok(vec![(start, start.saturating_add(pane))])
            }
            _ => self.windows(c),
        }
    }

    /// The panes of window `w` (pane length `pane`).
    pub(super) fn panes_of(w: Window, pane: i64) -> impl Iterator<Item = Window> {
        (w.0..w.1)
            .step_by(pane as usize)
            .map(move |s| (s, s.saturating_add(pane)))
    }

    /// State and output writes of the touched panes (kept by panes): each
    /// pane's state (deleted when emptied), and the row of every window
    /// that holds one of them, merged from its panes — new to the sink
    /// when all of its panes were.
    pub(super) fn pane_writes(
        &mut self,
        dirty: Vec<Dirty>,
        touched: KeyMap<TouchedPane>,
        pane: i64,
        table: Option<Arc<SinkTable>>,
        applied: &mut Applied,
        calls: &mut dyn CustomCalls,
    ) {
        let size = self.hopping().0;
        let dirty = distinct(dirty);
        // Each touched group once (its encoded values: the tail of its
        // panes' keys), and the windows of its touched panes, first seen
        // first.
        let mut groups: Vec<(Vec<Value>, Vec<u8>)> = Vec::new();
        let mut group_index: KeyMap<usize> = KeyMap::default();
        let mut windows: Vec<(usize, Window, Value)> = Vec::new();
        let mut seen: HashSet<(usize, Window), foldhash::fast::RandomState> = HashSet::default();
        for (k, fresh) in &dirty {
            let value = self
                .groups
                .get(k)
                .and_then(Option::as_ref)
                .filter(|g| g.acc.rows > 0)
                .map(GroupState::encode);
            if value.is_none() {
                self.groups.insert(k.clone(), None);
            }
            applied.state.push(StateWrite {
                kind: kind::GROUP,
                key: k.clone(),
                fresh: *fresh && value.is_some(),
                value,
                expires: None,
            });
            let Some(TouchedPane {
                group,
                start,
                time: like,
            }) = touched.get(k)
            else {
                applied.failures.push(format!(
                    "a pane of {} was written without its group",
                    self.spec.output
                ));
                continue;
            };
            let mut encoded = Writer::default();
            encoded.values(group);
            let g = *group_index.entry(encoded.buf).or_insert_with_key(|bytes| {
                groups.push((group.clone(), bytes.clone()));
                groups.len() - 1
            });
            let start = *start;
            // the windows holding the pane: those starting up to a
            // window's length before it (saturating: times at the ends of
            // the range give fewer windows, never a wrap-around)
            let first = start.saturating_sub(size - pane);
            for k in 0..size / pane {
                let s = first.saturating_add(k.saturating_mul(pane)).min(start);
                let w = (s, s.saturating_add(size));
                if seen.insert((g, w)) {
                    windows.push((g, w, like.clone()));
                }
            }
        }
        let Some(table) = table else {
            return;
        };
        let before: KeyMap<bool> = dirty.into_iter().collect();
        // Each pane looked up once, however many of the windows hold it
        // (seven for 7 days by 1): its accumulators and whether the sink
        // lacks its windows' rows as far as it is concerned.
        let mut panes: HashMap<
            (usize, i64),
            (Option<&GroupAcc>, bool),
            foldhash::fast::RandomState,
        > = HashMap::default();
        let mut key = Writer::default();
        for (g, w, like) in windows {
            let mut acc = GroupAcc::new(&self.spec.measures);
            let mut fresh = true;
            for p in Self::panes_of(w, pane) {
                let (cached, absent) = *panes.entry((g, p.0)).or_insert_with(|| {
                    // `window_key` of the pane, from the group's encoding
                    key.buf.clear();
                    Self::window_key_bounds(&mut key, p);
                    key.buf.extend_from_slice(&groups[g].1);
                    let cached = self.groups.get(key.buf.as_slice());
                    let absent = match before.get(key.buf.as_slice()) {
                        Some(absent) => *absent,
                        None => absent_from_sink(cached, self.complete),
                    };
                    (cached.and_then(Option::as_ref).map(|s| &s.acc), absent)
                });
                fresh &= absent;
                if let Some(pane_acc) = cached {
                    if let Err(e) = acc.merge(pane_acc) {
                        applied
                            .failures
                            .push(format!("merging the panes of a window: {e}"));
                    }
                }
            }
            let g = GroupState {
                group: groups[g].0.clone(),
                window: w,
                bounds: Some((bound(&like, w.0), bound(&like, w.1))),
                acc,
            };
            match output_row(&self.spec, &table, &g, calls) {
                Ok(w) => applied.outputs.push((w, fresh)),
                Err(e) => applied.failures.push(e),
            }
        }
    }
}

/// (pane length, offset) of a marker row.
fn decode_marker(bytes: &[u8]) -> Option<(i64, i64)> {
    let pane = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let offset = i64::from_le_bytes(bytes.get(8..)?.try_into().ok()?);
    Some((pane, offset))
}

/// A pane an apply changed, as its first change saw it: the windows
/// holding it and their bounds' type come from here.
pub(super) struct TouchedPane {
    pub(super) group: Vec<Value>,
    pub(super) start: i64,
    /// An event time in it (bounds are typed like it).
    pub(super) time: Value,
}

#[cfg(test)]
mod tests {
    use super::super::tests::{input, HOUR};
    use super::*;
    use crate::operators::spec::tests::daily_orders;
    use crate::operators::NoCustom;
    use std::collections::BTreeMap;

    /// Orders by customer in 4-hour windows sliding by an hour, with the
    /// largest amount (a multiset to merge) besides count and sum.
    fn hopping() -> AggregationSpec {
        let mut spec = daily_orders();
        spec.window = WindowSpec::Hopping {
            size: 4 * HOUR,
            slide: HOUR,
            offset: 0,
        };
        spec.measures.push(crate::operators::spec::MeasureSpec {
            name: "amount_max".into(),
            function: crate::operators::spec::AggregateFn::Max,
            column: Some("amount".into()),
            output_type: None,
        });
        spec
    }

    /// Order `row` at position `pos`: (customer, minute, amount), or deleted.
    fn order(row: u8, pos: u64, placed: Option<(i64, i64, i64)>) -> OperatorInput {
        let mut i = input(row, pos, None);
        if let Some((customer, minute, amount)) = placed {
            i.change = InputChange::Row(Some(Projection {
                group: vec![Value::Int(customer)],
                event_time: Some(Value::Timestamp(minute * 60_000_000)),
                args: vec![Value::Null, Value::Int(amount), Value::Int(amount)],
            }));
        }
        i
    }

    /// What the sink would hold: output rows by (window start, customer),
    /// state rows by (kind, key). Checks every write flagged fresh finds
    /// nothing in its place.
    #[derive(Default)]
    struct Sink {
        rows: BTreeMap<String, Vec<Value>>,
        state: HashMap<(&'static str, Vec<u8>), Vec<u8>>,
    }

    impl Sink {
        fn take(&mut self, applied: Applied) {
            assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
            for (w, fresh) in applied.outputs {
                let (key, values) = match w {
                    SinkWrite::Upsert { values, .. } => {
                        (format!("{:?}", (&values[0], &values[2])), Some(values))
                    }
                    SinkWrite::Delete { key, .. } => (format!("{:?}", (&key[0], &key[1])), None),
                };
                assert!(
                    !(fresh && self.rows.contains_key(&key)),
                    "row {key} taken for new is in the sink"
                );
                match values {
                    Some(v) => self.rows.insert(key, v),
                    None => self.rows.remove(&key),
                };
            }
            for w in applied.state {
                let key = (w.kind, w.key);
                assert!(
                    !(w.fresh && self.state.contains_key(&key)),
                    "state row {key:?} taken for new is in the sink"
                );
                match w.value {
                    Some(v) => self.state.insert(key, v),
                    None => self.state.remove(&key),
                };
            }
        }
    }

    /// `hopping()` on an empty sink: kept by panes when `fresh`, else per
    /// window (as an older host's state).
    fn started(fresh: bool) -> AggregateState {
        let mut state = AggregateState::new(hopping());
        state.set_layout(fresh, None).unwrap();
        state.mark_complete();
        state.load_watermarks(Vec::new(), None).unwrap();
        state
    }

    /// Random changes (rows moving between customers and hours, amounts
    /// changing, rows deleted and re-created) in random batches: a
    /// hopping window kept by panes writes the rows the same window kept
    /// per window writes, each window's row equal to a count, sum and max
    /// over the live rows; and each change writes one pane's state.
    #[test]
    fn panes_write_the_rows_windows_write() {
        let (mut panes, mut windows) = (started(true), started(false));
        assert!(panes.keeps_panes() && !windows.keeps_panes());
        let (mut by_panes, mut by_windows) = (Sink::default(), Sink::default());
        let mut live: HashMap<u8, (i64, i64, i64)> = HashMap::new();
        let mut seed = 11u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut pos = 0;
        while pos < 600 {
            let n = 1 + next(12);
            let mut batch = Vec::new();
            for _ in 0..n {
                pos += 1;
                let row = next(25) as u8;
                let placed = (next(7) > 0).then(|| {
                    (
                        1 + next(3) as i64,
                        next(12 * 60) as i64,
                        1 + next(100) as i64,
                    )
                });
                match placed {
                    Some(p) => live.insert(row, p),
                    None => live.remove(&row),
                };
                batch.push(order(row, pos, placed));
            }
            let refs: Vec<&OperatorInput> = batch.iter().collect();
            let applied = panes.apply(&refs, &[], &mut NoCustom);
            let groups = applied.state.iter().filter(|w| w.kind == kind::GROUP);
            assert!(
                groups.count() <= 2 * refs.len(),
                "more than a pane per change"
            );
            by_panes.take(applied);
            by_windows.take(windows.apply(&refs, &[], &mut NoCustom));
            assert_eq!(by_panes.rows, by_windows.rows, "after position {pos}");
        }
        // against a count, sum and max over the live rows
        let mut expected: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for &(customer, minute, amount) in live.values() {
            let hour = minute / 60;
            for s in hour - 3..=hour {
                let key = format!("{:?}", (Value::Timestamp(s * HOUR), Value::Int(customer)));
                let row = expected.entry(key).or_insert_with(|| {
                    vec![
                        Value::Timestamp(s * HOUR),
                        Value::Timestamp((s + 4) * HOUR),
                        Value::Int(customer),
                        Value::Int(0),
                        Value::Int(0),
                        Value::Int(0),
                    ]
                });
                let int = |v: &Value| match v {
                    Value::Int(n) => *n,
                    _ => 0,
                };
                row[3] = Value::Int(int(&row[3]) + 1);
                row[4] = Value::Int(int(&row[4]) + amount);
                row[5] = Value::Int(int(&row[5]).max(amount));
            }
        }
        assert_eq!(by_panes.rows, expected);
        // the pane layout is marked once, with the first commit
        assert_eq!(
            by_panes.state.get(&(kind::PANES, Vec::new())),
            Some(&[HOUR.to_le_bytes(), 0i64.to_le_bytes()].concat())
        );
        assert!(!by_windows.state.contains_key(&(kind::PANES, Vec::new())));
    }

    /// Panes only where the window allows them; state kept per window (an
    /// older host's: no marker) stays per window; state kept by panes that
    /// the declaration no longer allows is refused, with the reason.
    #[test]
    fn the_layout_follows_the_stored_state_and_unreadable_panes_are_refused() {
        let hour = [HOUR.to_le_bytes(), 0i64.to_le_bytes()].concat();
        let layout = |spec: AggregationSpec, fresh: bool, marker: Option<&[u8]>| {
            let mut s = AggregateState::new(spec);
            s.set_layout(fresh, marker).map(|()| s.keeps_panes())
        };
        assert_eq!(layout(hopping(), true, None), Ok(true));
        assert_eq!(layout(hopping(), false, Some(&hour)), Ok(true));
        assert_eq!(layout(hopping(), false, None), Ok(false));
        assert_eq!(layout(daily_orders(), true, None), Ok(false));
        let mut closing = hopping();
        closing.late = LatePolicy::DeadLetter;
        assert_eq!(layout(closing.clone(), true, None), Ok(false));
        let refused = layout(closing, false, Some(&hour)).unwrap_err();
        assert!(
            refused.contains("kept by panes of 3600000000 µs from offset 0 µs, which"),
            "{refused}"
        );
        // another kind of window, or the same slide from another offset
        assert!(layout(daily_orders(), false, Some(&hour)).is_err());
        let mut shifted = hopping();
        shifted.window = WindowSpec::Hopping {
            size: 4 * HOUR,
            slide: HOUR,
            offset: HOUR / 2,
        };
        assert!(layout(shifted, false, Some(&hour)).is_err());
        let mut uneven = hopping();
        uneven.window = WindowSpec::Hopping {
            size: 5 * HOUR / 2,
            slide: HOUR,
            offset: 0,
        };
        assert_eq!(layout(uneven, true, None), Ok(false));
        let mut slower = hopping();
        slower.window = WindowSpec::Hopping {
            size: 4 * HOUR,
            slide: 2 * HOUR,
            offset: 0,
        };
        assert!(layout(slower, false, Some(&hour)).is_err());
        assert!(layout(hopping(), false, Some(&HOUR.to_le_bytes())).is_err());
    }

    /// Sums a window cannot add (a float one and a decimal one, from a
    /// projection giving both types) stop the batch with the reason: not
    /// a window row with some of its rows' sums left out.
    #[test]
    fn panes_whose_sums_cannot_be_added_fail_the_batch() {
        let mut state = started(true);
        let row = |id: u8, minute: i64, amount: Value| {
            let mut i = order(id, id as u64, Some((7, minute, 1)));
            if let InputChange::Row(Some(p)) = &mut i.change {
                p.args = vec![Value::Null, amount.clone(), amount];
            }
            i
        };
        let (a, b) = (
            row(1, 0, Value::Float(1.5)),
            row(2, 60, Value::Decimal("2.5".into())),
        );
        let applied = state.apply(&[&a, &b], &[], &mut NoCustom);
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        assert!(
            applied
                .failures
                .iter()
                .any(|f| f.contains("merging the panes")),
            "{:?}",
            applied.failures
        );
    }

    /// An event time at the top of the range: its windows end there
    /// (saturating), the same rows either way, and no loop wraps around.
    #[test]
    fn a_time_at_the_end_of_the_range_gives_the_windows_per_window_gives() {
        let rows = |fresh: bool| {
            let mut state = started(fresh);
            let mut i = order(1, 1, Some((7, 0, 5)));
            if let InputChange::Row(Some(p)) = &mut i.change {
                p.event_time = Some(Value::Timestamp(i64::MAX - 10));
            }
            let mut sink = Sink::default();
            sink.take(state.apply(&[&i], &[], &mut NoCustom));
            sink.rows
        };
        let by_panes = rows(true);
        assert_eq!(by_panes.len(), 4);
        assert_eq!(by_panes, rows(false));
    }
}
