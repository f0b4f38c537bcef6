//! What an aggregation keeps per source row and per group, and how it is
//! encoded in `sluice_state` rows.

use super::*;

/// State kinds in `sluice_state`.
pub mod kind {
    /// A source row's last position and contribution.
    pub const ROW: &str = "r";
    /// A window's group state.
    pub const GROUP: &str = "g";
    /// A source partition's newest event time (watermarks).
    pub const PARTITION: &str = "w";
    /// The watermark reached (one row, empty key).
    pub const WATERMARK: &str = "m";
    /// The state is kept by panes (one row, empty key; see
    /// `AggregateState::set_layout`): its groups are panes, not windows.
    pub const PANES: &str = "p";
}

/// What a row currently contributes: its group, event time and arguments.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Contribution {
    pub(super) group: Vec<Value>,
    /// Typed event time (window bounds take its type); `None` without windows.
    pub(super) time: Option<Value>,
    pub(super) args: Vec<Value>,
    /// The source partition it was added from, kept when custom measures
    /// hold per-partition states (a retraction goes to the same one).
    pub(super) partition: Option<Vec<u8>>,
}

/// A source row as the aggregation last saw it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RowState {
    pub(super) order: Option<SourceOrder>,
    /// Boxed: an append-mode row keeps none, and the cache holds a row
    /// state per source row (the map's slots stay small).
    pub(super) contribution: Option<Box<Contribution>>,
}

impl RowState {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(codec::VERSION);
        w.order(self.order);
        match &self.contribution {
            Some(c) => {
                w.u8(if c.partition.is_some() { 2 } else { 1 });
                w.values(&c.group);
                match &c.time {
                    Some(t) => {
                        w.u8(1);
                        w.value(t)
                    }
                    None => w.u8(0),
                }
                w.values(&c.args);
                if let Some(p) = &c.partition {
                    w.bytes(p);
                }
            }
            None => w.u8(0),
        }
        w.buf
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<RowState, CorruptState> {
        let mut r = Reader::new(bytes);
        if r.u8()? != codec::VERSION {
            return Err(CorruptState("row state version"));
        }
        let order = r.order()?;
        let contribution = match r.u8()? {
            0 => None,
            tag => {
                let group = r.values()?;
                let time = match r.u8()? {
                    0 => None,
                    _ => Some(r.value()?),
                };
                let args = r.values()?;
                let partition = match tag {
                    2 => Some(r.bytes()?.to_vec()),
                    _ => None,
                };
                Some(Box::new(Contribution {
                    group,
                    time,
                    args,
                    partition,
                }))
            }
        };
        Ok(RowState {
            order,
            contribution,
        })
    }
}

/// A window of a group: its bounds (typed for the output) and accumulators.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct GroupState {
    pub(super) group: Vec<Value>,
    pub(super) window: Window,
    pub(super) bounds: Option<(Value, Value)>,
    pub(super) acc: GroupAcc,
}

impl GroupState {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(codec::VERSION);
        w.values(&self.group);
        w.i64(self.window.0);
        w.i64(self.window.1);
        match &self.bounds {
            Some((s, e)) => {
                w.u8(1);
                w.value(s);
                w.value(e);
            }
            None => w.u8(0),
        }
        self.acc.write(&mut w);
        w.buf
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<GroupState, CorruptState> {
        let mut r = Reader::new(bytes);
        if r.u8()? != codec::VERSION {
            return Err(CorruptState("group state version"));
        }
        let group = r.values()?;
        let window = (r.i64()?, r.i64()?);
        let bounds = match r.u8()? {
            0 => None,
            _ => Some((r.value()?, r.value()?)),
        };
        let acc = GroupAcc::read(&mut r)?;
        Ok(GroupState {
            group,
            window,
            bounds,
            acc,
        })
    }
}

/// µs of an event time value, or why it cannot be one.
pub(super) fn micros(v: &Value) -> Result<i64, String> {
    match v {
        Value::Timestamp(t) | Value::LocalTimestamp(t) => Ok(*t),
        Value::Date(d) => Ok(*d as i64 * 86_400_000_000),
        Value::Null => Err("the event time is null".into()),
        other => Err(format!(
            "the event time must be a timestamp, local-timestamp or date, not {}",
            other.natural_type().as_str()
        )),
    }
}

/// Window bounds typed like the event time: dates stay dates when the
/// bounds fall on midnight, else become zone-less timestamps.
pub(super) fn bound(like: &Value, t: i64) -> Value {
    const DAY: i64 = 86_400_000_000;
    match like {
        Value::Timestamp(_) => Value::Timestamp(t),
        Value::Date(_) if t % DAY == 0 => Value::Date((t / DAY) as i32),
        _ => Value::LocalTimestamp(t),
    }
}
