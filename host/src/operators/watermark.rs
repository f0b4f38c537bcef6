//! Event-time watermarks of one aggregation: per source partition the
//! newest event time seen, minus the declared out-of-orderness; the
//! aggregation's watermark is the minimum over its partitions, leaving out
//! partitions signalled idle until their next record, and never goes back.
//! Kept as state rows, so it survives restarts and follows partitions to
//! whichever host reads them next.

use std::collections::BTreeMap;

use super::codec::{CorruptState, Reader, Writer};
use crate::source::SourceSignal;

/// One partition's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionTime {
    /// Newest event time seen, µs.
    pub max: i64,
    pub idle: bool,
}

impl PartitionTime {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.i64(self.max);
        w.u8(self.idle as u8);
        w.buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptState> {
        let mut r = Reader::new(bytes);
        Ok(PartitionTime {
            max: r.i64()?,
            idle: r.u8()? != 0,
        })
    }
}

/// An aggregation's watermark state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watermarks {
    /// By encoded (topic, partition).
    pub partitions: BTreeMap<Vec<u8>, PartitionTime>,
    /// The watermark last reached (µs); `None` before any event.
    pub emitted: Option<i64>,
}

/// The state rows of a watermark that changed: each partition's (key,
/// value), and the watermark reached (its value) when it moved.
pub type WatermarkRows = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// The partitions `signals` say went idle, encoded (`partition_key`).
pub fn idle_partitions(signals: &[SourceSignal]) -> Vec<Vec<u8>> {
    signals
        .iter()
        .filter_map(|s| match s {
            SourceSignal::Idle { topic, partition } => Some(partition_key(topic, *partition)),
            _ => None,
        })
        .collect()
}

/// Encoded (topic, partition), the key of a partition's row.
pub fn partition_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut w = Writer::default();
    w.str(topic);
    w.i64(partition as i64);
    w.buf
}

impl Watermarks {
    /// From its stored rows: the partitions' and the watermark reached.
    pub fn from_rows(
        partitions: Vec<(Vec<u8>, Vec<u8>)>,
        reached: Option<Vec<u8>>,
    ) -> Result<Watermarks, CorruptState> {
        let mut w = Watermarks::default();
        for (k, v) in partitions {
            w.partitions.insert(k, PartitionTime::decode(&v)?);
        }
        if let Some(b) = reached {
            w.emitted = Some(Reader::new(&b).i64()?);
        }
        Ok(w)
    }

    /// The rows to store for what changed since `before`.
    pub fn changed_rows(&self, before: &Watermarks) -> WatermarkRows {
        let partitions = self
            .partitions
            .iter()
            .filter(|(k, p)| before.partitions.get(*k) != Some(p))
            .map(|(k, p)| (k.clone(), p.encode()))
            .collect();
        let reached = (self.emitted != before.emitted).then(|| {
            let mut w = Writer::default();
            w.i64(self.emitted.unwrap_or(i64::MIN));
            w.buf
        });
        (partitions, reached)
    }

    /// A record with event time `t` came from the partition.
    pub fn saw(&mut self, partition: Vec<u8>, t: i64) {
        let p = self.partitions.entry(partition).or_insert(PartitionTime {
            max: t,
            idle: false,
        });
        p.max = p.max.max(t);
        p.idle = false;
    }

    /// A record without event time (a delete) still shows the partition is live.
    pub fn heard(&mut self, partition: &[u8]) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.idle = false;
        }
    }

    /// The partition was signalled idle. Returns whether anything changed.
    pub fn idle(&mut self, partition: &[u8]) -> bool {
        match self.partitions.get_mut(partition) {
            Some(p) if !p.idle => {
                p.idle = true;
                true
            }
            _ => false,
        }
    }

    /// Move the watermark to min over live partitions of (max − delay);
    /// never backwards; unchanged when every partition is idle.
    pub fn advance(&mut self, delay: i64) -> Option<i64> {
        let live = self
            .partitions
            .values()
            .filter(|p| !p.idle)
            .map(|p| p.max.saturating_sub(delay))
            .min();
        if let Some(w) = live {
            self.emitted = Some(self.emitted.map_or(w, |e| e.max(w)));
        }
        self.emitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_live_partition_holds_the_watermark_and_idle_ones_do_not() {
        let mut w = Watermarks::default();
        let (a, b) = (partition_key("t", 0), partition_key("t", 1));
        w.saw(a.clone(), 100);
        w.saw(b.clone(), 40);
        assert_eq!(w.advance(10), Some(30));
        w.saw(a.clone(), 500);
        assert_eq!(w.advance(10), Some(30), "b still holds it back");
        assert!(w.idle(&b));
        assert_eq!(
            w.advance(10),
            Some(490),
            "an idle partition does not stall it"
        );
        w.saw(b.clone(), 45);
        assert_eq!(w.advance(10), Some(490), "never backwards");
        w.idle(&a);
        w.idle(&b);
        assert_eq!(w.advance(10), Some(490), "all idle: unchanged");
        let p = w.partitions[&a];
        assert_eq!(PartitionTime::decode(&p.encode()).unwrap(), p);
    }
}
