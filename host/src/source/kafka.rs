//! Kafka source (rdkafka): a consumer group subscribed to a topic regex, with
//! cooperative rebalancing and manual offsets. Where to read from is decided
//! by the sink's checkpoint, never by Kafka's group offsets: on every
//! assignment the sink's offsets are read again and each partition starts at
//! the next offset committed there (or at the beginning), whichever host of
//! the pipeline committed it. Group offsets are committed afterwards, for lag
//! monitoring only. Per-partition order is kept (one consumer, in order).
//! A batch still in flight for a partition this host lost is fenced by the
//! sink (`SqlSink::commit` drops what the new owner committed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{SourceItem, SourceSignal};
use crate::model::{Headers, RawRecord, RecordId};
use crate::stats::Stats;

/// Next offset per (topic, partition) as committed in the sink; shared with
/// the sink task, which updates it after every commit.
pub type Checkpoint = Arc<Mutex<HashMap<(String, i32), i64>>>;

fn lock(c: &Checkpoint) -> std::sync::MutexGuard<'_, HashMap<(String, i32), i64>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the sink's committed offsets now (blocking; see `sink::checkpoint`).
pub type ReadCheckpoint =
    Arc<dyn Fn() -> anyhow::Result<HashMap<(String, i32), i64>> + Send + Sync>;

/// Settings of the Kafka source.
pub struct KafkaSource {
    pub brokers: String,
    /// Regex over topic names (a leading `^` is added if missing).
    pub topics: String,
    pub group: String,
    /// This member's static id within the group (`group.instance.id` is
    /// `GROUP@ID`); each running copy of a pipeline needs its own.
    pub instance_id: String,
    /// The sink's offsets, read on every assignment.
    pub read_checkpoint: ReadCheckpoint,
    pub until_caught_up: bool,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Shortest a batch waits for more records before it is handed over.
    pub linger: Duration,
    pub checkpoint: Checkpoint,
    /// A partition with no record for this long (while this host polls) is
    /// signalled idle.
    pub idle_timeout: Duration,
}

/// Sets each assigned partition's start offset from the sink's checkpoint.
struct ResumeFromSink {
    checkpoint: Checkpoint,
    read_checkpoint: ReadCheckpoint,
    assigned: Arc<Mutex<HashMap<(String, i32), ()>>>,
    /// Assignments and revocations for the batch stream, in the order the
    /// hook saw them; the poll loop drains them before the next message.
    signals: Arc<Mutex<Vec<SourceSignal>>>,
}

/// The partition assignor: cooperative, so a rebalance moves only the
/// partitions that change owner.
const ASSIGNOR: &str = "cooperative-sticky";

impl ResumeFromSink {
    /// The sink's offsets as committed now, by any host of the pipeline. If
    /// the sink cannot be read, this host's last known checkpoint (a start
    /// too early is still safe: the sink drops what it already has).
    fn sink_offsets(&self) -> HashMap<(String, i32), i64> {
        let read = || (self.read_checkpoint)();
        // Called from inside the consumer's poll on an async worker: let the
        // runtime move its other tasks away while this thread waits.
        let fresh = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(read)
            }
            _ => read(),
        };
        let mut known = lock(&self.checkpoint);
        match fresh {
            Ok(fresh) => {
                for (k, next) in fresh {
                    let v = known.entry(k).or_insert(next);
                    *v = (*v).max(next);
                }
            }
            Err(e) => {
                tracing::warn!("reading the sink's offsets: {e:#}; using the last known checkpoint")
            }
        }
        known.clone()
    }
}

impl ClientContext for ResumeFromSink {}

impl ConsumerContext for ResumeFromSink {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // Known from the configuration, never asked of the consumer: asking
        // queues a request to the group handler, which after the close has
        // terminated it is never answered, and a rebalance event served that
        // late would block here forever.
        let cooperative = ASSIGNOR == "cooperative-sticky";
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let cp = self.sink_offsets();
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
                let mut signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
                for (topic, partition) in parts {
                    let next = cp.get(&(topic.clone(), partition)).copied();
                    signals.push(SourceSignal::Assigned {
                        topic: topic.as_str().into(),
                        partition,
                        start: next,
                    });
                    let start = match next {
                        Some(next) => Offset::Offset(next),
                        None => Offset::Beginning,
                    };
                    tracing::info!(%topic, partition, start = ?start, "partition assigned; resuming from the sink's checkpoint");
                    if let Err(err) = tpl.set_partition_offset(&topic, partition, start) {
                        tracing::error!("setting the start offset of {topic}/{partition}: {err}");
                    }
                    assigned.insert((topic, partition), ());
                }
                drop(assigned);
                let res = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = res {
                    tracing::error!("assigning partitions failed: {e}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
                let mut signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
                for e in tpl.elements() {
                    tracing::info!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "partition revoked"
                    );
                    signals.push(SourceSignal::Revoked {
                        topic: e.topic().into(),
                        partition: e.partition(),
                    });
                    assigned.remove(&(e.topic().to_string(), e.partition()));
                }
                drop(assigned);
                let res = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = res {
                    tracing::error!("revoking partitions failed: {e}");
                }
            }
            other => tracing::error!("rebalance error: {other:?}"),
        }
    }
}

impl KafkaSource {
    /// Consume, batch and send until cancelled (or caught up).
    pub async fn run(
        self,
        out: mpsc::Sender<Vec<SourceItem>>,
        cancel: CancellationToken,
        stats: Arc<Stats>,
    ) -> anyhow::Result<()> {
        let assigned = Arc::new(Mutex::new(HashMap::new()));
        let signals = Arc::new(Mutex::new(Vec::new()));
        let context = ResumeFromSink {
            checkpoint: self.checkpoint.clone(),
            read_checkpoint: self.read_checkpoint.clone(),
            assigned: assigned.clone(),
            signals: signals.clone(),
        };
        // Static membership: a restarted member (crash, deploy) takes its
        // partitions back at once instead of waiting out the dead member's
        // session. A newer member with the same id fences the older one,
        // which then stops (see `fatal`).
        let instance = format!("{}@{}", self.group, self.instance_id);
        let consumer: StreamConsumer<ResumeFromSink> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("group.instance.id", &instance)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", ASSIGNOR)
            // librdkafka waits a whole second after a full local queue otherwise
            .set("fetch.queue.backoff.ms", "10")
            // librdkafka prefetches up to 64 MB by default: an eighth (more
            // than a full batch of Debezium records) keeps the fetcher ahead
            // of the pipeline, and its fetch buffers were the largest heap
            // item at 16 MB (heaptrack: 25 MB at the peak).
            .set("queued.max.messages.kbytes", "8192")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", self.brokers))?;
        let pattern = if self.topics.starts_with('^') {
            self.topics.clone()
        } else {
            format!("^{}", self.topics)
        };
        consumer
            .subscribe(&[&pattern])
            .with_context(|| format!("subscribing to {pattern}"))?;

        // With --until-caught-up: the end offsets at start are the finish line.
        let targets = if self.until_caught_up {
            // metadata and watermark requests block: keep them off the async workers
            Some(tokio::task::block_in_place(|| {
                end_offsets(&consumer, &pattern)
            })?)
        } else {
            None
        };
        if let Some(t) = &targets {
            tracing::info!(
                partitions = t.len(),
                "catching up to the end offsets seen at start"
            );
        }
        let mut reached: HashMap<(String, i32), i64> = lock(&self.checkpoint).clone();
        let caught_up = |reached: &HashMap<(String, i32), i64>| {
            targets.as_ref().is_some_and(|t| {
                t.iter()
                    .all(|(k, &end)| reached.get(k).copied().unwrap_or(0) >= end)
            })
        };

        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        let mut envelopes = super::envelope::SchemaSharing::default();
        let mut last_headers = Headers::default();
        let mut batch: Vec<SourceItem> = Vec::with_capacity(self.max_batch);
        let mut last_commit = Instant::now();
        let mut last_sink_read = Instant::now();
        let mut quiet = Quiet::default();
        loop {
            if caught_up(&reached) && batch.is_empty() {
                tracing::info!("caught up with the end offsets seen at start");
                break;
            }
            let batch_started = Instant::now();
            let deadline = batch_started + self.max_wait;
            while batch.len() < self.max_batch {
                // Group commit: once the batch holds a record and the next
                // stage can take it, a record not already waiting ends the
                // batch. Live, each batch commits as soon as the previous one
                // is done (latency: one commit, not `max_wait`); catching
                // up, records wait while the stages ahead are busy, so
                // batches grow towards `max_batch` by themselves.
                let hand_over = !batch.is_empty() && out.capacity() > 0;
                let until = if hand_over {
                    (batch_started + self.linger).min(deadline)
                } else {
                    deadline
                };
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break,
                    m = tokio::time::timeout_at(until, consumer.recv()) => match m {
                        Err(_) if hand_over => break,
                        Err(_) => {
                            // Idle: the consumer's position moves past offsets that
                            // carry no message (transaction markers), which the
                            // last message's offset alone would never reach.
                            if targets.is_some() && batch.is_empty() {
                                advance_to_positions(&consumer, &mut reached);
                                // Partitions other hosts of the pipeline own
                                // are caught up when the sink has them.
                                if last_sink_read.elapsed() >= Duration::from_secs(1) {
                                    last_sink_read = Instant::now();
                                    for (k, next) in consumer.context().sink_offsets() {
                                        let r = reached.entry(k).or_insert(0);
                                        *r = (*r).max(next);
                                    }
                                }
                            }
                            fatal(&consumer, &instance)?;
                            break; // max wait reached
                        }
                        Ok(Err(e)) => {
                            fatal(&consumer, &instance)?;
                            tracing::warn!("Kafka consumer error: {e}");
                            continue;
                        }
                        Ok(Ok(m)) => m,
                    },
                };
                // Signals the rebalance hook queued during this poll precede
                // the message: it may be the first of a new assignment.
                drain_signals(&signals, &mut batch, &mut quiet);
                let key = (msg.topic().to_string(), msg.partition());
                // Redelivery after a rebalance: skip what the sink already has.
                if reached.get(&key).is_some_and(|&next| msg.offset() < next) {
                    stats.add(&stats.skipped, 1);
                    continue;
                }
                reached.insert(key, msg.offset() + 1);
                let topic = match topics.get(msg.topic()) {
                    Some(t) => t.clone(),
                    None => {
                        let t: Arc<str> = msg.topic().into();
                        topics.insert(msg.topic().to_string(), t.clone());
                        t
                    }
                };
                let id = RecordId {
                    topic,
                    partition: msg.partition(),
                    offset: msg.offset(),
                };
                let text = |b: Option<&[u8]>, what: &str| -> Result<Option<String>, String> {
                    b.map(|b| {
                        String::from_utf8(b.to_vec())
                            .map_err(|_| format!("the Kafka {what} is not UTF-8 text"))
                    })
                    .transpose()
                };
                let headers = headers(&msg, &mut last_headers);
                let (schema, payload) = match msg.payload() {
                    Some(v) => {
                        let (schema, payload) = envelopes.split(&id.topic, v);
                        (schema, Some(payload))
                    }
                    None => (None, None),
                };
                let item = match (text(msg.key(), "key"), text(payload, "value")) {
                    (Ok(key), Ok(value)) => SourceItem::Record(RawRecord {
                        id,
                        key,
                        value,
                        headers,
                        schema,
                    }),
                    (k, v) => {
                        let reason = [k.err(), v.err()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join("; ");
                        SourceItem::Malformed {
                            record: RawRecord {
                                id,
                                key: msg.key().map(|b| String::from_utf8_lossy(b).into_owned()),
                                value: msg
                                    .payload()
                                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                                headers,
                                schema: None,
                            },
                            reason,
                        }
                    }
                };
                stats.add(&stats.read, 1);
                quiet.heard(&id_of(&item));
                batch.push(item);
            }
            drain_signals(&signals, &mut batch, &mut quiet);
            quiet.idle_since(self.idle_timeout, &mut batch);
            if !batch.is_empty() {
                let sending = Instant::now();
                if out.send(std::mem::take(&mut batch)).await.is_err() {
                    break;
                }
                stats.time(&stats.source_blocked_us, sending);
                // Waiting on a full pipeline is not a quiet partition.
                if sending.elapsed() >= self.max_wait {
                    quiet.restart_clocks();
                }
            }
            if cancel.is_cancelled() {
                break;
            }
            if last_commit.elapsed() >= Duration::from_secs(1) {
                commit_group_offsets(&consumer, &self.checkpoint, &assigned);
                last_commit = Instant::now();
            }
        }
        commit_group_offsets(&consumer, &self.checkpoint, &assigned);
        // Everything read is sent: let the pipeline finish while the consumer closes.
        drop(out);
        close(consumer).await;
        Ok(())
    }
}

/// Move the hook's queued signals into the batch, in order.
fn drain_signals(
    signals: &Mutex<Vec<SourceSignal>>,
    batch: &mut Vec<SourceItem>,
    quiet: &mut Quiet,
) {
    let mut queued = signals.lock().unwrap_or_else(|p| p.into_inner());
    for signal in queued.drain(..) {
        quiet.follow(&signal);
        batch.push(SourceItem::Signal(signal));
    }
}

fn id_of(item: &SourceItem) -> (Arc<str>, i32) {
    match item.id() {
        Some(id) => (id.topic.clone(), id.partition),
        None => ("".into(), -1),
    }
}

/// Which assigned partitions have been quiet, and since when (Flink's
/// `withIdleness`: no record for the timeout while this host polls).
#[derive(Default)]
struct Quiet {
    /// Assigned partitions: when their last record (or the assignment) came,
    /// and whether they were signalled idle since.
    partitions: HashMap<(Arc<str>, i32), (Instant, bool)>,
}

impl Quiet {
    fn follow(&mut self, signal: &SourceSignal) {
        let (topic, partition) = signal.partition();
        match signal {
            SourceSignal::Assigned { .. } => {
                self.partitions
                    .insert((topic.clone(), partition), (Instant::now(), false));
            }
            SourceSignal::Revoked { .. } => {
                self.partitions.remove(&(topic.clone(), partition));
            }
            SourceSignal::Idle { .. } => {}
        }
    }

    fn heard(&mut self, key: &(Arc<str>, i32)) {
        if let Some(state) = self.partitions.get_mut(key) {
            *state = (Instant::now(), false);
        }
    }

    fn restart_clocks(&mut self) {
        for (since, _) in self.partitions.values_mut() {
            *since = Instant::now();
        }
    }

    /// Signal each partition quiet for `timeout` idle, once.
    fn idle_since(&mut self, timeout: Duration, batch: &mut Vec<SourceItem>) {
        for ((topic, partition), (since, idle)) in &mut self.partitions {
            if !*idle && since.elapsed() >= timeout {
                *idle = true;
                tracing::debug!(%topic, partition, "partition idle");
                batch.push(SourceItem::Signal(SourceSignal::Idle {
                    topic: topic.clone(),
                    partition: *partition,
                }));
            }
        }
    }
}

/// How long closing the consumer may take before the run ends without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Close the consumer without ever hanging the run. rdkafka's `Drop` polls
/// until librdkafka says the consumer is closed, serving rebalance events on
/// the way; a rebalance event served after the group handler has terminated
/// blocks in any call that asks the handler something (it never answers
/// then: librdkafka #4041, #4884). A restart that is caught up before its first poll
/// meets exactly that when its assignment, and a second rebalance, arrive
/// while it closes (a static member rejoining a group with live members).
/// So: unsubscribe first and serve the resulting revocation while the group
/// handler still runs, then close on a thread of its own, for at most
/// [`CLOSE_TIMEOUT`]. Nothing read here is used: the sink's offsets, not these
/// messages, decide where the next run starts.
async fn close(consumer: StreamConsumer<ResumeFromSink>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sluice-kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!("closing the Kafka consumer: {e}; leaving it open");
        return;
    }
    if tokio::time::timeout(CLOSE_TIMEOUT, done_rx).await.is_err() {
        tracing::warn!(
            "the Kafka consumer did not close within {CLOSE_TIMEOUT:?}; ending without it \
             (its partitions return to the group after session.timeout.ms)"
        );
    }
}

/// Stop on a fatal consumer error, such as being fenced by a newer member
/// with the same `group.instance.id`: this member no longer owns its
/// partitions. (Batches already read still commit; the sink drops whatever
/// the new owner committed first.)
fn fatal(consumer: &StreamConsumer<ResumeFromSink>, instance: &str) -> anyhow::Result<()> {
    match consumer.client().fatal_error() {
        None => Ok(()),
        Some((code, reason)) => anyhow::bail!(
            "the Kafka consumer {instance} stopped with a fatal error ({code:?}): {reason}; \
             if it was fenced, another copy of this pipeline runs with the same instance id \
             (give each copy its own --instance-id)"
        ),
    }
}

/// A message's headers, kept for the DLQ topic: `last` (the previous
/// record's) again when they are equal, else a copy that becomes `last`.
fn headers(msg: &BorrowedMessage<'_>, last: &mut Headers) -> Headers {
    let same = match msg.headers() {
        None => last.is_empty(),
        Some(hs) => {
            hs.count() == last.len()
                && hs
                    .iter()
                    .zip(last.iter())
                    .all(|(h, (k, v))| h.key == k && h.value == v.as_deref())
        }
    };
    if !same {
        *last = msg.headers().map_or_else(Headers::default, |hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        });
    }
    last.clone()
}

/// Raise `reached` to the consumer's position of each assigned partition.
fn advance_to_positions(
    consumer: &StreamConsumer<ResumeFromSink>,
    reached: &mut HashMap<(String, i32), i64>,
) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for e in positions.elements() {
        if let Offset::Offset(pos) = e.offset() {
            let r = reached
                .entry((e.topic().to_string(), e.partition()))
                .or_insert(0);
            *r = (*r).max(pos);
        }
    }
}

/// High watermarks of every partition of the topics matching `pattern`.
fn end_offsets(
    consumer: &StreamConsumer<ResumeFromSink>,
    pattern: &str,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let re = regex_lite::Regex::new(pattern).with_context(|| format!("topic pattern {pattern}"))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .context("fetching Kafka metadata")?;
    let mut out = HashMap::new();
    for t in md.topics().iter().filter(|t| re.is_match(t.name())) {
        for p in t.partitions() {
            let (_low, high) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .with_context(|| format!("end offset of {}/{}", t.name(), p.id()))?;
            out.insert((t.name().to_string(), p.id()), high);
        }
    }
    Ok(out)
}

/// Report progress to Kafka (lag monitoring only; never read back).
fn commit_group_offsets(
    consumer: &StreamConsumer<ResumeFromSink>,
    checkpoint: &Checkpoint,
    assigned: &Mutex<HashMap<(String, i32), ()>>,
) {
    let cp = lock(checkpoint).clone();
    let assigned = assigned.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in cp {
        if assigned.contains_key(&(topic.clone(), partition)) {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
        }
    }
    if tpl.count() > 0 {
        let r: KafkaResult<()> = consumer.commit(&tpl, CommitMode::Async);
        if let Err(e) = r {
            tracing::debug!("committing group offsets (for lag monitoring): {e}");
        }
    }
}
