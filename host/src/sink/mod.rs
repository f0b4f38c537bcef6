//! Sinks: where a batch's writes, dead letters and offsets land, atomically.

pub mod checkpoint;
mod ddl_lock;
pub mod dialect;
pub mod sql;

use std::sync::Arc;

use crate::model::{DeadLetter, Learned, RawRecord, SinkWrite};
use crate::operators::aggregate::OperatorInput;
use crate::operators::join::JoinOpInput;
use crate::operators::keyed::KeyedInput;
use crate::operators::lookup::LookupInput;
use crate::operators::table::TableChange;
use crate::source::SourceSignal;

/// The writes one source record produced.
#[derive(Debug)]
pub struct EventWrites {
    pub record: RawRecord,
    /// Plugins that produced the writes (for a sink-stage dead letter).
    pub plugins: Option<String>,
    pub writes: Vec<SinkWrite>,
    /// What the record means to aggregations (applied in the commit).
    pub ops: Vec<OperatorInput>,
    /// The record for plugins with keyed state (run in the commit).
    pub keyed: Vec<KeyedInput>,
    /// What the record means to joins (applied in the commit).
    pub joins: Vec<JoinOpInput>,
    /// The record for plugins with lookups (run in the commit).
    pub lookups: Vec<LookupInput>,
    /// The record as a change of its stored table (applied in the commit).
    pub tables: Vec<TableChange>,
    /// The change created its row at the source (Debezium `c`): the rows
    /// it upserts are most likely new to the sink too (PostgreSQL then
    /// tries them without `ON CONFLICT`, see `rows::write_upserts`).
    pub created: bool,
}

impl EventWrites {
    /// Writes a plugin made of `record` (no operator inputs).
    pub fn written(record: RawRecord, plugins: Option<String>, writes: Vec<SinkWrite>) -> Self {
        EventWrites {
            record,
            plugins,
            writes,
            ops: Vec::new(),
            keyed: Vec::new(),
            joins: Vec::new(),
            lookups: Vec::new(),
            tables: Vec::new(),
            created: false,
        }
    }
}

/// Everything one batch commits, in one transaction.
#[derive(Debug, Default)]
pub struct SinkBatch {
    pub events: Vec<EventWrites>,
    pub dead: Vec<DeadLetter>,
    /// Next offset per (topic, partition) after this batch.
    pub offsets: Vec<(Arc<str>, i32, i64)>,
    /// Source records covered by the batch.
    pub records: u64,
    /// Decoder facts learned from this batch (committed with its offsets).
    pub learned: Vec<Learned>,
    /// What happened to the source's partitions during the batch, in order
    /// (operators' watermarks follow them).
    pub signals: Vec<SourceSignal>,
    /// The plugin set that processed the batch (the processor counts its
    /// swaps): batches of different plugin versions never share a commit,
    /// where the sink runs one version per operator.
    pub plugin_generation: u64,
}

impl SinkBatch {
    /// Whether `next`, the batch that followed this one, may join it in
    /// one commit. Partition signals take effect at the end of their batch
    /// (an idle partition after the batch's records), so a batch that
    /// carries any ends a merge; the sink runs one plugin version per
    /// operator, so a plugin swap between the two ends it too. (Operators
    /// judge lateness against the watermark at the start of a commit, as
    /// within any one batch: a merged commit is a bigger batch.)
    pub fn takes(&self, next: &SinkBatch) -> bool {
        self.signals.is_empty() && self.plugin_generation == next.plugin_generation
    }

    /// Append the batch that followed this one (see `takes`): one commit
    /// for both, events and dead letters in their order, offsets the later.
    pub fn merge(&mut self, next: SinkBatch) {
        let SinkBatch {
            events,
            dead,
            offsets,
            records,
            learned,
            signals,
            plugin_generation: _,
        } = next;
        self.events.reserve_exact(events.len());
        self.events.extend(events);
        self.dead.extend(dead);
        for (topic, partition, after) in offsets {
            match self
                .offsets
                .iter_mut()
                .find(|(t, p, _)| *p == partition && *t == topic)
            {
                Some((_, _, next)) => *next = (*next).max(after),
                None => self.offsets.push((topic, partition, after)),
            }
        }
        self.records += records;
        self.learned.extend(learned);
        self.signals.extend(signals);
    }
}

/// What a commit did beyond the batch's own dead letters.
#[derive(Debug, Default)]
pub struct SinkReport {
    pub writes: u64,
    pub dlq_sink: u64,
    /// Records dropped because another consumer of the pipeline had
    /// committed them (a partition moved while the batch was in flight).
    pub stale: u64,
    /// Changes keyed plugins refused or trapped on (stage `plugin`).
    pub dlq_plugin: u64,
    /// Events aggregations refused (dead-lettered with stage `aggregate`).
    pub dlq_aggregate: u64,
    /// Late events applied: for windows the watermark had closed (as
    /// corrections), or interval-join rows whose partners may be gone.
    pub late_applied: u64,
    /// Events for closed windows dead-lettered (reason `late`).
    pub late_dead_lettered: u64,
    /// Events aggregations and keyed plugins skipped as re-deliveries (not
    /// newer than the state holds for their row).
    pub duplicates: u64,
    /// The bulk write met a row error, so the batch was written again event
    /// by event (slower; the rows at fault were dead-lettered).
    pub row_by_row: bool,
    /// The next offsets now committed (never lower than before).
    pub offsets: Vec<(Arc<str>, i32, i64)>,
}
