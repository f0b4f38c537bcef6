//! The processor stage: decode each source batch, run the plugins on its
//! change events, hand the sink one `SinkBatch` per source batch. Plugin
//! swaps apply between batches, so every event meets one plugin version.

use std::collections::HashMap;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::decode::{Decoded, Decoder};
use crate::model::{DeadLetter, RawRecord, Stage};
use crate::plugin::loader::PluginUpdate;
use crate::plugin::set::PluginSet;
use crate::sink::{EventWrites, SinkBatch};
use crate::source::SourceItem;
use crate::stats::Stats;

/// The processor: apply pending plugin swaps, decode, run plugins, hand the
/// batch to the sink. Runs on its own thread: Wasm calls are CPU-bound and
/// must not block the async runtime.
pub(super) fn process_loop(
    mut input: mpsc::Receiver<Vec<SourceItem>>,
    output: mpsc::Sender<SinkBatch>,
    updates: std_mpsc::Receiver<PluginUpdate>,
    mut plugins: PluginSet,
    mut decoder: Decoder,
    stats: Arc<Stats>,
) {
    let mut unrouted_topics: HashMap<Arc<str>, u64> = HashMap::new();
    // Plugin swaps so far: stamped on each batch (see `SinkBatch::takes`).
    let mut generation: u64 = 0;
    while let Some(items) = input.blocking_recv() {
        // Batch boundary: swap in finished reloads.
        while let Ok(update) = updates.try_recv() {
            generation += 1;
            match update {
                PluginUpdate::Install(p) => {
                    let (name, version) = (p.info.name.clone(), p.info.version.clone());
                    let old = plugins.install(*p);
                    stats.add(&stats.reloads, 1);
                    tracing::info!(plugin = %name, version = %version, replaced = ?old.map(|o| o.version), "plugin swapped in at batch boundary");
                }
                PluginUpdate::Remove(id) => {
                    if let Some(old) = plugins.remove(&id) {
                        tracing::warn!(plugin = %old.name, "plugin unloaded at batch boundary");
                    }
                }
            }
        }
        let mut batch = process_batch(
            items,
            &mut plugins,
            &mut decoder,
            &stats,
            &mut unrouted_topics,
        );
        batch.plugin_generation = generation;
        if output.blocking_send(batch).is_err() {
            return;
        }
    }
}

fn dead(record: RawRecord, stage: Stage, plugin: Option<String>, reason: String) -> DeadLetter {
    tracing::warn!(
        topic = %record.id.topic, partition = record.id.partition, offset = record.id.offset,
        stage = stage.as_str(), plugin = plugin.as_deref().unwrap_or(""),
        "dead-lettered: {reason}"
    );
    DeadLetter {
        record,
        stage,
        plugin,
        reason,
    }
}

fn process_batch(
    items: Vec<SourceItem>,
    plugins: &mut PluginSet,
    decoder: &mut Decoder,
    stats: &Stats,
    unrouted_topics: &mut HashMap<Arc<str>, u64>,
) -> SinkBatch {
    let mut batch = SinkBatch {
        records: items.iter().filter(|i| i.id().is_some()).count() as u64,
        ..Default::default()
    };
    let mut offsets: HashMap<(Arc<str>, i32), i64> = HashMap::new();
    let mut decoded = Vec::with_capacity(items.len());
    let decoding = Instant::now();
    for item in items {
        if let Some(id) = item.id() {
            let next = offsets.entry((id.topic.clone(), id.partition)).or_insert(0);
            *next = (*next).max(id.offset + 1);
        }
        match item {
            SourceItem::Signal(signal) => batch.signals.push(signal),
            SourceItem::Malformed { record, reason } => {
                stats.add(&stats.dlq_decode, 1);
                batch.dead.push(dead(record, Stage::Decode, None, reason));
            }
            SourceItem::Record(record) => match decoder.decode(&record) {
                Ok(Decoded::Change(ev)) => decoded.push((record, ev)),
                Ok(Decoded::Tombstone) => stats.add(&stats.tombstones, 1),
                Err(e) => {
                    stats.add(&stats.dlq_decode, 1);
                    batch
                        .dead
                        .push(dead(record, Stage::Decode, None, e.to_string()));
                }
            },
        }
    }
    stats.time(&stats.decode_us, decoding);
    let calling = Instant::now();
    let refs: Vec<_> = decoded.iter().map(|(r, ev)| (ev, &r.id)).collect();
    let outcomes = plugins.process(&refs);
    drop(refs);
    stats.time(&stats.plugin_us, calling);
    // Sized once: doubling would leave up to half a batch's slots unused
    // while it waits for the sink.
    batch.events.reserve_exact(decoded.len());
    for ((record, ev), outcome) in decoded.into_iter().zip(outcomes) {
        if outcome.unrouted {
            stats.add(&stats.unrouted, 1);
            let n = unrouted_topics.entry(record.id.topic.clone()).or_insert(0);
            if *n == 0 {
                tracing::warn!(topic = %record.id.topic, "no plugin handles this topic; its events are counted as unrouted and skipped");
            }
            *n += 1;
            continue;
        }
        for (plugin, reason) in outcome.rejections {
            stats.add(&stats.dlq_plugin, 1);
            batch
                .dead
                .push(dead(record.clone(), Stage::Plugin, Some(plugin), reason));
        }
        if !outcome.writes.is_empty()
            || !outcome.ops.is_empty()
            || !outcome.keyed.is_empty()
            || !outcome.joins.is_empty()
            || !outcome.lookups.is_empty()
            || !outcome.tables.is_empty()
        {
            batch.events.push(EventWrites {
                record,
                plugins: Some(outcome.producers.join(",")),
                writes: outcome.writes,
                ops: outcome.ops,
                keyed: outcome.keyed,
                joins: outcome.joins,
                lookups: outcome.lookups,
                tables: outcome.tables,
                created: ev.op == crate::model::Op::Create,
            });
        }
    }
    batch.offsets = offsets.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    batch.learned = decoder.take_learned();
    batch
}
