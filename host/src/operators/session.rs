//! Session windows over a changelog: a group keeps its rows' accumulators
//! by event time, and sessions are the runs of times less than `gap` apart.
//! An insert can merge two sessions, a delete (or a row moving away) can
//! split one; both fall out of recomputing the group's runs.

use std::collections::BTreeMap;

use super::accumulate::GroupAcc;
use super::codec::{self, CorruptState, Reader, Writer};
use super::spec::MeasureSpec;
use crate::model::Value;

/// One group's rows by event time (µs), with the event time's type.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionState {
    pub group: Vec<Value>,
    /// An event time value of the group: bounds are typed like it.
    pub like: Value,
    pub times: BTreeMap<i64, GroupAcc>,
}

/// A session: `[start, last + gap)` and its accumulators.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub start: i64,
    pub end: i64,
    pub acc: GroupAcc,
}

impl SessionState {
    pub fn new(group: Vec<Value>, like: Value) -> Self {
        SessionState {
            group,
            like,
            times: BTreeMap::new(),
        }
    }

    pub fn apply(&mut self, measures: &[MeasureSpec], t: i64, args: &[Value], weight: i64) {
        let acc = self
            .times
            .entry(t)
            .or_insert_with(|| GroupAcc::new(measures));
        acc.apply(args, weight);
        if acc.rows == 0 {
            self.times.remove(&t);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// The sessions, oldest first.
    pub fn sessions(&self, measures: &[MeasureSpec], gap: i64) -> Vec<Session> {
        let mut out: Vec<Session> = Vec::new();
        for (&t, acc) in &self.times {
            match out.last_mut() {
                Some(s) if t - (s.end - gap) < gap => {
                    s.end = t + gap;
                    // A merge fails only for float and decimal sums mixed
                    // in one measure (a projection giving both): that
                    // time's sum is left out, as it always was here.
                    let _ = s.acc.merge(acc);
                }
                _ => {
                    let mut a = GroupAcc::new(measures);
                    let _ = a.merge(acc);
                    out.push(Session {
                        start: t,
                        end: t.saturating_add(gap),
                        acc: a,
                    })
                }
            }
        }
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(codec::VERSION);
        w.values(&self.group);
        w.value(&self.like);
        w.u32(self.times.len() as u32);
        for (t, acc) in &self.times {
            w.i64(*t);
            acc.write(&mut w);
        }
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<SessionState, CorruptState> {
        let mut r = Reader::new(bytes);
        if r.u8()? != codec::VERSION {
            return Err(CorruptState("session state version"));
        }
        let group = r.values()?;
        let like = r.value()?;
        let n = r.u32()?;
        let mut times = BTreeMap::new();
        for _ in 0..n {
            let t = r.i64()?;
            times.insert(t, GroupAcc::read(&mut r)?);
        }
        Ok(SessionState { group, like, times })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::spec::AggregateFn;

    const DAY: i64 = 86_400_000_000;

    fn count() -> Vec<MeasureSpec> {
        vec![MeasureSpec {
            name: "orders".into(),
            function: AggregateFn::CountRows,
            column: None,
            output_type: None,
        }]
    }

    fn spans(s: &SessionState) -> Vec<(i64, i64, i64)> {
        s.sessions(&count(), 2 * DAY)
            .into_iter()
            .map(|x| (x.start / DAY, x.end / DAY, x.acc.rows))
            .collect()
    }

    #[test]
    fn an_insert_merges_sessions_and_a_delete_splits_them() {
        let ms = count();
        let mut s = SessionState::new(vec![Value::Int(1)], Value::LocalTimestamp(0));
        s.apply(&ms, 0, &[Value::Null], 1);
        s.apply(&ms, 3 * DAY, &[Value::Null], 1);
        assert_eq!(spans(&s), vec![(0, 2, 1), (3, 5, 1)]);
        // 2 days after the previous is a new session; less than 2 merges
        s.apply(&ms, 2 * DAY, &[Value::Null], 1);
        assert_eq!(spans(&s), vec![(0, 2, 1), (2, 5, 2)]);
        s.apply(&ms, DAY + DAY / 2, &[Value::Null], 1);
        assert_eq!(spans(&s), vec![(0, 5, 4)]);
        s.apply(&ms, DAY + DAY / 2, &[Value::Null], -1);
        assert_eq!(spans(&s), vec![(0, 2, 1), (2, 5, 2)]);
        let back = SessionState::decode(&s.encode()).unwrap();
        assert_eq!(back, s);
    }
}
