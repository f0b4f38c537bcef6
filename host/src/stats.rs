//! Pipeline counters, shared by the stages and reported in progress lines and
//! the exit summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; each stage bumps its own.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from the source (after skipping already-applied ones).
    pub read: AtomicU64,
    /// Records skipped because the sink's checkpoint says they were applied.
    pub skipped: AtomicU64,
    pub tombstones: AtomicU64,
    /// Events no plugin handles (their offsets still advance).
    pub unrouted: AtomicU64,
    /// Sink rows upserted or deleted.
    pub writes: AtomicU64,
    /// Records committed (offsets stored in the sink).
    pub committed: AtomicU64,
    pub dlq_decode: AtomicU64,
    pub dlq_plugin: AtomicU64,
    pub dlq_sink: AtomicU64,
    /// Events aggregations refused (bad projection, impossible retraction).
    pub dlq_aggregate: AtomicU64,
    /// Events aggregations skipped as re-deliveries (not newer than their
    /// row's stored position): Debezium is at-least-once.
    pub duplicates: AtomicU64,
    /// Late events applied: for windows the watermark had closed (as
    /// corrections), or interval-join rows whose partners may be gone.
    pub late_applied: AtomicU64,
    /// Events for closed windows dead-lettered (reason `late`; also counted
    /// in `dlq_aggregate`).
    pub late_dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    /// Batches written again event by event after a row error in the bulk
    /// write (each costs a rollback and one statement per row).
    pub row_by_row: AtomicU64,
    /// Dead letters copied to the DLQ topic.
    pub dlq_published: AtomicU64,
    /// Dead letters still waiting for the DLQ topic when the run ended (Kafka
    /// refused them); sent at the next start.
    pub dlq_unsent: AtomicU64,
    pub reloads: AtomicU64,
    /// Where the time went, per stage (µs): decoding, plugin calls, sink
    /// commits; the source waiting for the stages ahead to take a batch
    /// (the pipeline is slower than the source), the sink waiting for a
    /// batch (the source or processor is slower than the sink).
    pub decode_us: AtomicU64,
    pub plugin_us: AtomicU64,
    pub commit_us: AtomicU64,
    pub source_blocked_us: AtomicU64,
    pub sink_idle_us: AtomicU64,
}

impl Stats {
    pub fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Add the time since `since` to a `_us` counter.
    pub fn time(&self, counter: &AtomicU64, since: impl Into<std::time::Instant>) {
        self.add(counter, since.into().elapsed().as_micros() as u64);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn dead_lettered(&self) -> u64 {
        Self::get(&self.dlq_decode)
            + Self::get(&self.dlq_plugin)
            + Self::get(&self.dlq_aggregate)
            + Self::get(&self.dlq_sink)
    }
}
