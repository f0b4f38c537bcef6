//! Wires the stages: source task → processor thread (decode + plugins,
//! `process.rs`) → sink task, with bounded channels between them and one
//! cancellation token.
//!
//! Invariant (exactly once): a batch's sink writes, dead letters and the next
//! offsets of every record in it commit in one sink transaction; at start
//! (and, for Kafka, on every partition assignment) the source resumes from
//! the offsets in the sink. Plugin swaps happen only between batches, so
//! every event is handled by exactly one plugin version.

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Pipeline, SinkSpec, SourceSpec};
use crate::decode::Decoder;
use crate::dlq::DlqTopic;
use crate::plugin::loader::{self, PluginUpdate};
use crate::plugin::runtime::{Limits, Runtime};
use crate::plugin::set::PluginSet;
use crate::sink::checkpoint::CheckpointReader;
use crate::sink::sql::SqlSink;
use crate::sink::SinkBatch;
use crate::source::file::FileSource;
use crate::source::kafka::{Checkpoint, KafkaSource};
use crate::source::SourceItem;
use crate::stats::Stats;

mod process;
use process::process_loop;

/// Records that may wait in each channel between stages: big batches
/// (catching up) get shallower channels, so memory stays bounded whatever
/// the batch size (the channel before the sink holds one commit's worth).
const CHANNEL_RECORDS: usize = 4000;

/// Bounded channel depth between stages, in batches: one at least, so the
/// next batch is decoded while the previous one commits; four at most.
fn channel_batches(max_batch: usize) -> usize {
    (CHANNEL_RECORDS / max_batch.max(1)).clamp(1, 4)
}

/// Source batches per commit, at most: the source reads and the processor
/// decodes in parts of a commit, and the sink takes as many parts as have
/// queued while it committed the last ones (up to the most records per
/// commit). A sink that keeps up commits each part as it comes (live: low
/// latency); one that falls behind (catching up) commits them together,
/// which writes each touched row and state row once for all of them. Only
/// the commit and the parts queued for the next one are whole commits in
/// memory, not every stage's batch.
const PARTS_PER_COMMIT: usize = 4;

/// The most records per source batch for commits of at most `max_commit`.
fn part_records(max_commit: usize) -> usize {
    (max_commit / PARTS_PER_COMMIT).max(1)
}

/// The next commit: `first` and the batches queued behind it, while they
/// fit in `max_records` and may share a commit (`SinkBatch::takes`); a
/// queued batch that may not join is handed back to start the next one.
fn gather(
    mut batch: SinkBatch,
    queued: &mut mpsc::Receiver<SinkBatch>,
    max_records: usize,
) -> (SinkBatch, Option<SinkBatch>) {
    while batch.signals.is_empty() && (batch.records as usize) < max_records {
        match queued.try_recv() {
            Ok(next)
                if batch.takes(&next) && (batch.records + next.records) as usize <= max_records =>
            {
                batch.merge(next)
            }
            Ok(next) => return (batch, Some(next)),
            Err(_) => break,
        }
    }
    (batch, None)
}

/// What a finished run reports.
#[derive(Debug)]
pub struct RunSummary {
    pub stats: Arc<Stats>,
    pub tables: Vec<(String, i64)>,
    /// (aggregation, state rows, bytes) this host held at the end.
    pub state: Vec<(String, usize, usize)>,
    pub elapsed: Duration,
}

/// Run a pipeline until the source ends (`until_caught_up`) or `cancel` fires.
pub async fn run(p: Pipeline, cancel: CancellationToken) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    if let SinkSpec::Sqlite { path, .. } = &p.sink {
        let dir = path.parent().unwrap_or(path);
        if !dir.is_dir() {
            anyhow::bail!(
                "the SQLite file {} cannot be created: its directory {} does not exist",
                path.display(),
                dir.display()
            );
        }
    }
    let mut sink = SqlSink::open(p.sink.url(), &p.sink.shown(), &p.name).await?;
    sink.set_consolidate(p.consolidate);
    if let Some(f) = p.table_fillfactor {
        if !sink.set_table_fillfactor(f) {
            tracing::warn!(
                fillfactor = f,
                "`tables.fillfactor` applies to PostgreSQL sinks only: ignored"
            );
        }
    }
    let resume = sink.load_offsets().await?;
    let learned = sink.load_learned().await?;
    if !resume.is_empty() {
        tracing::info!(
            partitions = resume.len(),
            "resuming from the sink's checkpoint"
        );
    }

    let runtime = Runtime::new(Limits {
        call_timeout: p.call_timeout,
        memory_bytes: p.memory_limit_bytes,
    })?;
    if !p.plugins.is_dir() {
        anyhow::bail!("plugin folder {} does not exist", p.plugins.display());
    }
    // Watch before the first scan so no change falls between the two.
    let (update_tx, update_rx) = std_mpsc::channel::<PluginUpdate>();
    let hashes = loader::Hashes::default();
    let _watcher = loader::watch(runtime.clone(), &p.plugins, hashes.clone(), update_tx)?;
    let plugin_dir = p.plugins.clone();
    let rt = runtime.clone();
    let (initial, rejected) =
        tokio::task::spawn_blocking(move || loader::load_dir(&rt, &plugin_dir, &hashes)).await??;
    if !rejected.is_empty() {
        // Starting without a plugin the user put there would skip its
        // tables' events for good: refuse instead.
        anyhow::bail!(
            "{} plugin file(s) in {} failed to load; fix or remove them:\n{}",
            rejected.len(),
            p.plugins.display(),
            rejected
                .iter()
                .map(|(path, e)| format!("  {}: {e:#}", path.display()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let mut set = PluginSet::default();
    for plugin in initial {
        set.install(plugin);
    }
    if set.is_empty() {
        anyhow::bail!(
            "no plugin could be loaded from {}: put at least one .wasm component there (see README)",
            p.plugins.display()
        );
    }
    tracing::info!(plugins = ?set.summary(), "plugins ready");

    let part = part_records(p.max_batch_records);
    let depth = channel_batches(part);
    let (raw_tx, raw_rx) = mpsc::channel::<Vec<SourceItem>>(depth);
    // Deep enough to hold the parts of one whole commit (see `gather`).
    let (sink_tx, mut sink_rx) =
        mpsc::channel::<SinkBatch>(depth.max(p.max_batch_records.div_ceil(part)));
    // The sink's checkpoint, updated after every commit; the Kafka source
    // resumes assigned partitions from it.
    let checkpoint: Checkpoint = Arc::new(std::sync::Mutex::new(resume.clone()));
    let source_task = match &p.source {
        SourceSpec::File(path) => tokio::spawn(
            FileSource {
                path: path.clone(),
                follow: !p.until_caught_up,
                max_batch: part,
                max_wait: p.max_batch_wait,
                resume,
                idle_timeout: p.idle_timeout,
            }
            .run(raw_tx, cancel.clone(), stats.clone()),
        ),
        SourceSpec::Kafka {
            brokers,
            topics,
            group,
            instance_id,
        } => tokio::spawn(
            KafkaSource {
                brokers: brokers.clone(),
                topics: topics.clone(),
                group: group.clone(),
                instance_id: instance_id.clone(),
                read_checkpoint: {
                    let (url, shown, name) =
                        (p.sink.url().to_string(), p.sink.shown(), p.name.clone());
                    let reader = tokio::task::spawn_blocking(move || {
                        CheckpointReader::connect(url, shown, name)
                    })
                    .await??;
                    Arc::new(move || reader.read())
                },
                until_caught_up: p.until_caught_up,
                max_batch: part,
                max_wait: p.max_batch_wait,
                linger: p.batch_linger,
                checkpoint: checkpoint.clone(),
                idle_timeout: p.idle_timeout,
            }
            .run(raw_tx, cancel.clone(), stats.clone()),
        ),
    };
    let processor = {
        let stats = stats.clone();
        let hints = p.hints.clone();
        let keys = p.keys.clone();
        let decimal_handling = p.decimal_handling;
        let mut decoder = Decoder::new(hints)
            .with_keys(keys)
            .with_decimal_handling(decimal_handling);
        decoder.restore(learned);
        std::thread::Builder::new()
            .name("sluice-processor".into())
            .spawn(move || process_loop(raw_rx, sink_tx, update_rx, set, decoder, stats))?
    };
    let progress = spawn_progress(stats.clone(), cancel.clone());

    // Dead letters go to the DLQ topic from a task (and a sink connection) of
    // their own, so a slow or unreachable broker never holds up a commit.
    let dlq_wake = Arc::new(Notify::new());
    let dlq_done = CancellationToken::new();
    let dlq_publisher = match (&p.source, &p.dlq_topic) {
        (SourceSpec::Kafka { brokers, .. }, Some(topic)) => {
            let dlq = DlqTopic::new(brokers, topic, &p.name)?;
            let outbox = SinkAddress {
                url: p.sink.url().to_string(),
                shown: p.sink.shown(),
                pipeline: p.name.clone(),
            };
            Some(spawn_dlq_publisher(
                outbox,
                dlq,
                stats.clone(),
                dlq_wake.clone(),
                dlq_done.clone(),
            ))
        }
        _ => None,
    };
    let mut sink_error = None;
    // Since the last commit; `None` before the first batch, whose wait is
    // start-up (plugins, Kafka's assignment), not a sink waiting for a busy
    // processor.
    let mut waiting: Option<Instant> = None;
    let mut carried: Option<SinkBatch> = None;
    loop {
        let first = match carried.take() {
            Some(b) => b,
            None => match sink_rx.recv().await {
                Some(b) => b,
                None => break,
            },
        };
        if let Some(since) = waiting {
            stats.time(&stats.sink_idle_us, since);
        }
        let (batch, next) = gather(first, &mut sink_rx, p.max_batch_records);
        carried = next;
        let records = batch.records;
        let had_dead = !batch.dead.is_empty();
        let committing = Instant::now();
        let result = sink.commit(batch).await;
        stats.time(&stats.commit_us, committing);
        waiting = Some(Instant::now());
        match result {
            Ok(report) => {
                stats.add(&stats.writes, report.writes);
                stats.add(&stats.dlq_sink, report.dlq_sink);
                stats.add(&stats.dlq_aggregate, report.dlq_aggregate);
                stats.add(&stats.dlq_plugin, report.dlq_plugin);
                stats.add(&stats.duplicates, report.duplicates);
                stats.add(&stats.late_applied, report.late_applied);
                stats.add(&stats.late_dead_lettered, report.late_dead_lettered);
                stats.add(&stats.skipped, report.stale);
                stats.add(&stats.committed, records.saturating_sub(report.stale));
                stats.add(&stats.batches, 1);
                stats.add(&stats.row_by_row, report.row_by_row as u64);
                {
                    let mut cp = checkpoint.lock().unwrap_or_else(|e| e.into_inner());
                    for (topic, partition, next) in report.offsets {
                        cp.insert((topic.to_string(), partition), next);
                    }
                }
                if had_dead || report.dlq_sink > 0 {
                    dlq_wake.notify_one();
                }
            }
            Err(e) => {
                sink_error = Some(e.context(
                    "sink commit failed; the batch was rolled back and will be re-read on restart",
                ));
                cancel.cancel();
                break;
            }
        }
    }
    drop(sink_rx);
    // One last pass for what the last batches dead-lettered.
    dlq_done.cancel();
    if let Some(publisher) = dlq_publisher {
        if tokio::time::timeout(Duration::from_secs(40), publisher)
            .await
            .is_err()
        {
            tracing::warn!("the DLQ topic did not acknowledge in time; unsent dead letters stay in sluice_dlq and are sent at the next start");
        }
    }
    progress.abort();
    let source_result = source_task.await.context("source task panicked")?;
    let processor_result = tokio::task::spawn_blocking(move || processor.join())
        .await
        .context("joining the processor")?;
    if processor_result.is_err() {
        anyhow::bail!("the processor thread panicked; nothing after the last committed batch was applied (a restart resumes there)");
    }
    if let Some(e) = sink_error {
        return Err(e);
    }
    source_result?;
    let tables = sink.table_counts().await.unwrap_or_default();
    Ok(RunSummary {
        stats,
        tables,
        state: sink.state_sizes(),
        elapsed: started.elapsed(),
    })
}

/// Copy committed dead letters to the DLQ topic: those a previous run left
/// unsent at once, then after every commit that dead-lettered (woken by
/// `wake`), retrying every 5 s while some stay unsent, and a last time once
/// `done` fires.
fn spawn_dlq_publisher(
    outbox: SinkAddress,
    dlq: DlqTopic,
    stats: Arc<Stats>,
    wake: Arc<Notify>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn: Option<SqlSink> = None;
        loop {
            // Read before the pass: a pass that starts after `done` covers every commit.
            let finishing = done.is_cancelled();
            if conn.is_none() {
                match SqlSink::open(&outbox.url, &outbox.shown, &outbox.pipeline).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => tracing::warn!(topic = dlq.topic(), "DLQ outbox: {e:#}"),
                }
            }
            let pass = match conn.as_mut() {
                Some(c) => publish_dead_letters(c, &dlq, &stats).await,
                None => Pass::OutboxFailed,
            };
            if finishing {
                if let (Pass::Unsent(e), Some(c)) = (&pass, conn.as_mut()) {
                    let unsent = c.unpublished_count().await.unwrap_or(-1);
                    stats
                        .dlq_unsent
                        .store(unsent.max(0) as u64, Ordering::Relaxed);
                    tracing::warn!(
                        topic = dlq.topic(),
                        unsent,
                        "dead letters not sent to the DLQ topic ({e:#}); they stay in sluice_dlq and are sent at the next start"
                    );
                }
                return;
            }
            match &pass {
                Pass::Unsent(e) => {
                    tracing::warn!(topic = dlq.topic(), "DLQ topic: {e:#}; retrying in 5 s")
                }
                Pass::OutboxFailed => conn = None,
                Pass::AllSent => {}
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = done.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)), if !matches!(pass, Pass::AllSent) => {}
            }
        }
    })
}

/// Where the DLQ publisher connects (its own sink connection).
struct SinkAddress {
    url: String,
    shown: String,
    pipeline: String,
}

/// Copy the sink's unpublished dead letters to the DLQ topic. A broker that
/// cannot be reached does not stop the pipeline: the rows stay unpublished
/// and are sent on the next pass. Returns whether all were sent.
async fn publish_dead_letters(sink: &mut SqlSink, dlq: &DlqTopic, stats: &Stats) -> Pass {
    loop {
        let rows = match sink.unpublished_dead_letters(500).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(
                    topic = dlq.topic(),
                    "reading dead letters to publish: {e:#}"
                );
                return Pass::OutboxFailed;
            }
        };
        if rows.is_empty() {
            return Pass::AllSent;
        }
        let (sent, error) = dlq.publish(&rows).await;
        stats.add(&stats.dlq_published, sent.len() as u64);
        if let Err(e) = sink.mark_published(&sent).await {
            tracing::warn!(topic = dlq.topic(), "{e:#}");
            return Pass::OutboxFailed;
        }
        if let Some(e) = error {
            return Pass::Unsent(e);
        }
    }
}

/// How a pass over the outbox ended.
enum Pass {
    AllSent,
    /// Kafka did not take them all (why).
    Unsent(anyhow::Error),
    /// The sink connection failed (closed while idle, say): open a new one.
    OutboxFailed,
}

fn spawn_progress(stats: Arc<Stats>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let done = Stats::get(&stats.committed);
            let read = Stats::get(&stats.read);
            tracing::info!(
                committed = done,
                rate_per_s = (done - last) / 5,
                in_flight = read.saturating_sub(done),
                writes = Stats::get(&stats.writes),
                dead_lettered = stats.dead_lettered(),
                "progress"
            );
            last = done;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RawRecord, RecordId};
    use crate::sink::EventWrites;
    use crate::source::SourceSignal;

    /// A batch of `n` records of partition `p` starting at `from`.
    fn batch(p: i32, from: i64, n: i64) -> SinkBatch {
        let topic: Arc<str> = "t".into();
        let events = (from..from + n)
            .map(|offset| {
                let record = RawRecord {
                    id: RecordId {
                        topic: topic.clone(),
                        partition: p,
                        offset,
                    },
                    key: None,
                    value: Some(format!("{offset}")),
                    headers: Arc::from(Vec::new()),
                    schema: None,
                };
                EventWrites::written(record, None, Vec::new())
            })
            .collect();
        SinkBatch {
            events,
            offsets: vec![(topic, p, from + n)],
            records: n as u64,
            ..Default::default()
        }
    }

    fn offsets_of(b: &SinkBatch) -> Vec<(i32, i64)> {
        let mut o: Vec<(i32, i64)> = b.offsets.iter().map(|(_, p, n)| (*p, *n)).collect();
        o.sort();
        o
    }

    fn queue(batches: Vec<SinkBatch>) -> mpsc::Receiver<SinkBatch> {
        let (tx, rx) = mpsc::channel(batches.len().max(1));
        for b in batches {
            tx.try_send(b).unwrap();
        }
        rx
    }

    #[test]
    fn a_commit_takes_the_queued_batches_that_fit_and_hands_back_the_next() {
        let mut rx = queue(vec![batch(1, 0, 3), batch(0, 4, 4), batch(0, 8, 2)]);
        let (commit, next) = gather(batch(0, 0, 4), &mut rx, 10);
        assert_eq!(commit.records, 7);
        let offsets: Vec<i64> = commit.events.iter().map(|e| e.record.id.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(offsets_of(&commit), [(0, 4), (1, 3)]);
        let next = next.expect("the batch that did not fit starts the next commit");
        assert_eq!((next.records, offsets_of(&next)), (4, vec![(0, 8)]));
        // The next commit goes on from there, offsets of one partition merged.
        let (commit, next) = gather(next, &mut rx, 10);
        assert_eq!((commit.records, offsets_of(&commit)), (6, vec![(0, 10)]));
        assert!(next.is_none() && rx.try_recv().is_err());
    }

    #[test]
    fn a_batch_with_partition_signals_ends_its_commit() {
        let mut signalled = batch(0, 4, 2);
        signalled.signals.push(SourceSignal::Idle {
            topic: "t".into(),
            partition: 1,
        });
        let mut rx = queue(vec![signalled, batch(1, 0, 2)]);
        let (commit, next) = gather(batch(0, 0, 4), &mut rx, 100);
        // The idle signal stays at the end of the commit, after the
        // records it followed and before the ones that came after it.
        assert_eq!((commit.records, commit.signals.len()), (6, 1));
        assert!(next.is_none());
        let (commit, _) = gather(rx.try_recv().unwrap(), &mut rx, 100);
        assert_eq!((commit.records, commit.signals.len()), (2, 0));
    }

    #[test]
    fn batches_of_different_plugin_versions_do_not_share_a_commit() {
        let mut swapped = batch(0, 4, 2);
        swapped.plugin_generation = 1;
        let mut after = batch(0, 6, 2);
        after.plugin_generation = 1;
        let mut rx = queue(vec![swapped, after]);
        let (commit, next) = gather(batch(0, 0, 4), &mut rx, 100);
        assert_eq!(commit.records, 4);
        let next = next.expect("the swapped plugins' batch starts the next commit");
        let (commit, next) = gather(next, &mut rx, 100);
        assert_eq!((commit.records, commit.plugin_generation), (4, 1));
        assert_eq!(offsets_of(&commit), [(0, 8)]);
        assert!(next.is_none());
    }

    #[test]
    fn a_sink_that_keeps_up_commits_each_batch_as_it_comes() {
        let mut rx = queue(Vec::new());
        let (commit, next) = gather(batch(0, 0, 5), &mut rx, 100);
        assert_eq!(commit.records, 5);
        assert!(next.is_none());
        // A full batch takes nothing more; the queue keeps the next one.
        let mut rx = queue(vec![batch(0, 5, 1)]);
        let (commit, next) = gather(batch(0, 0, 5), &mut rx, 5);
        assert_eq!((commit.records, next.is_none()), (5, true));
        assert_eq!(rx.try_recv().map(|b| b.records).ok(), Some(1));
    }

    #[test]
    fn parts_divide_a_commit() {
        assert_eq!(part_records(10_000), 2_500);
        assert_eq!(part_records(3), 1);
        assert_eq!(part_records(1), 1);
    }
}
