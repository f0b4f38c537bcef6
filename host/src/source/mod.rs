//! Sources of raw change records, and the vocabulary they share with the
//! stages after them: what travels in a source batch is records and, in
//! band with them, what happened to the partitions they come from.

pub mod envelope;
pub mod file;
pub mod kafka;

use std::sync::Arc;

use crate::model::{RawRecord, RecordId};

/// One item of a source batch, in the order the source saw it.
#[derive(Debug)]
pub enum SourceItem {
    Record(RawRecord),
    /// Input that is not a record (a file line that is not kcat JSON, a Kafka
    /// message that is not UTF-8); it goes to the DLQ with `reason`.
    Malformed {
        record: RawRecord,
        reason: String,
    },
    /// A partition changed hands or went quiet. Travels in band, so every
    /// stage sees it between the same records: state and watermarks follow
    /// partitions, and a signal overtaking data would misplace them.
    Signal(SourceSignal),
}

impl SourceItem {
    /// The record's position; `None` for signals.
    pub fn id(&self) -> Option<&RecordId> {
        match self {
            SourceItem::Record(r) => Some(&r.id),
            SourceItem::Malformed { record, .. } => Some(&record.id),
            SourceItem::Signal(_) => None,
        }
    }
}

/// What happened to a source partition (Arroyo's `Signal`, Flink's
/// idleness): the records after it are read under the new situation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSignal {
    /// This host reads the partition from `start` (the sink's next offset;
    /// `None`: from the beginning).
    Assigned {
        topic: Arc<str>,
        partition: i32,
        start: Option<i64>,
    },
    /// Another host (or nobody) reads the partition from now on.
    Revoked { topic: Arc<str>, partition: i32 },
    /// The partition is caught up and has had no record for the idle
    /// timeout: watermarks stop waiting for it until its next record.
    Idle { topic: Arc<str>, partition: i32 },
}

impl SourceSignal {
    /// The partition the signal is about.
    pub fn partition(&self) -> (&Arc<str>, i32) {
        match self {
            SourceSignal::Assigned {
                topic, partition, ..
            }
            | SourceSignal::Revoked { topic, partition }
            | SourceSignal::Idle { topic, partition } => (topic, *partition),
        }
    }
}
