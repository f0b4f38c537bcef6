//! File source: `kcat -C -J` output, one JSON object per line with `topic`,
//! `partition`, `offset`, `key` and `payload` (JSON text; payload null for a
//! tombstone). Also how production dumps are replayed offline. Without
//! `--until-caught-up` the file is followed like `tail -f`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{SourceItem, SourceSignal};
use crate::model::{RawRecord, RecordId};
use crate::stats::Stats;

/// One line of `kcat -C -J` output (other fields kcat writes are ignored).
#[derive(Deserialize)]
pub struct KcatLine {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub payload: Option<String>,
}

impl KcatLine {
    pub fn parse(text: &str) -> serde_json::Result<KcatLine> {
        serde_json::from_str(text)
    }

    /// The record, with its own topic string (the file source interns topics instead).
    pub fn into_record(self) -> RawRecord {
        RawRecord {
            id: RecordId {
                topic: self.topic.into(),
                partition: self.partition,
                offset: self.offset,
            },
            key: self.key,
            value: self.payload,
            headers: Default::default(),
            schema: None,
        }
    }
}

/// Settings of the file source.
pub struct FileSource {
    pub path: PathBuf,
    pub follow: bool,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Next offset to read per (topic, partition), from the sink's checkpoint.
    pub resume: HashMap<(String, i32), i64>,
    /// While following: a partition with no new line for this long is
    /// signalled idle.
    pub idle_timeout: Duration,
}

const POLL: Duration = Duration::from_millis(100);

impl FileSource {
    /// Read the file, batch records and send them; ends at EOF unless following.
    pub async fn run(
        self,
        out: mpsc::Sender<Vec<SourceItem>>,
        cancel: CancellationToken,
        stats: Arc<Stats>,
    ) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(&self.path)
            .await
            .with_context(|| format!("opening source file {}", self.path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let pseudo_topic: Arc<str> = format!("file:{}", self.path.display()).into();
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        let mut next: HashMap<(String, i32), i64> = self.resume.clone();
        let mut line = String::new();
        let mut line_no: i64 = 0;
        let mut batch: Vec<SourceItem> = Vec::with_capacity(self.max_batch);
        let mut batch_started = Instant::now();
        // Partitions seen so far: when their last line was read, and whether
        // they were signalled idle since.
        let mut seen: HashMap<(Arc<str>, i32), (Instant, bool)> = HashMap::new();
        let mut envelopes = super::envelope::SchemaSharing::default();
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let n = reader
                .read_line(&mut line)
                .await
                .with_context(|| format!("reading {}", self.path.display()))?;
            let at_eof = n == 0 || !line.ends_with('\n');
            if at_eof && (self.follow || n == 0) {
                // Hand over what we have, then wait for more (or stop).
                if !batch.is_empty() && !hand_over(&out, &mut batch, &stats).await {
                    return Ok(());
                }
                if !self.follow {
                    break;
                }
                let idle: Vec<SourceItem> = seen
                    .iter_mut()
                    .filter(|(_, (last, idle))| !*idle && last.elapsed() >= self.idle_timeout)
                    .map(|((topic, partition), (_, idle))| {
                        *idle = true;
                        SourceItem::Signal(SourceSignal::Idle {
                            topic: topic.clone(),
                            partition: *partition,
                        })
                    })
                    .collect();
                if !idle.is_empty() && out.send(idle).await.is_err() {
                    return Ok(());
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL) => continue,
                }
            }
            line_no += 1;
            let text = line.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                line.clear();
                continue;
            }
            if batch.is_empty() {
                batch_started = Instant::now();
            }
            let item = match KcatLine::parse(text) {
                Ok(k) => {
                    let topic = match topics.get(&k.topic) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = k.topic.as_str().into();
                            topics.insert(k.topic.clone(), t.clone());
                            t
                        }
                    };
                    let slot = next.entry((k.topic, k.partition)).or_insert(0);
                    if k.offset < *slot {
                        stats.add(&stats.skipped, 1);
                        line.clear();
                        continue;
                    }
                    *slot = k.offset + 1;
                    match seen.get_mut(&(topic.clone(), k.partition)) {
                        Some(state) => *state = (Instant::now(), false),
                        None => {
                            seen.insert((topic.clone(), k.partition), (Instant::now(), false));
                            let start = self.resume.get(&(topic.to_string(), k.partition)).copied();
                            batch.push(SourceItem::Signal(SourceSignal::Assigned {
                                topic: topic.clone(),
                                partition: k.partition,
                                start,
                            }));
                        }
                    }
                    let (schema, value) = match k.payload {
                        Some(v) => {
                            let (schema, payload) = envelopes.split_text(&topic, v);
                            (schema, Some(payload))
                        }
                        None => (None, None),
                    };
                    SourceItem::Record(RawRecord {
                        id: RecordId {
                            topic,
                            partition: k.partition,
                            offset: k.offset,
                        },
                        key: k.key,
                        value,
                        headers: Default::default(),
                        schema,
                    })
                }
                Err(_) if at_eof => {
                    // The file ends in a partial line: a writer may still be
                    // appending it. Leave it for the next run, do not reject it.
                    tracing::warn!(file = %self.path.display(), line = line_no, "the last line is incomplete (no newline, not a record yet); stopping before it");
                    break;
                }
                Err(e) => {
                    let slot = next.entry((pseudo_topic.to_string(), -1)).or_insert(0);
                    if line_no < *slot {
                        line.clear();
                        continue;
                    }
                    *slot = line_no + 1;
                    SourceItem::Malformed {
                        record: RawRecord {
                            id: RecordId {
                                topic: pseudo_topic.clone(),
                                partition: -1,
                                offset: line_no,
                            },
                            key: None,
                            value: Some(text.to_string()),
                            headers: Default::default(),
                            schema: None,
                        },
                        reason: format!("line {line_no} is not a kcat -J record: {e}"),
                    }
                }
            };
            line.clear();
            stats.add(&stats.read, 1);
            batch.push(item);
            let full = batch.len() >= self.max_batch || batch_started.elapsed() >= self.max_wait;
            if full && !hand_over(&out, &mut batch, &stats).await {
                return Ok(());
            }
        }
        if !batch.is_empty() {
            hand_over(&out, &mut batch, &stats).await;
        }
        Ok(())
    }
}

/// Send the batch on, timing how long the stages ahead kept the source
/// waiting; false once the pipeline has stopped taking batches.
async fn hand_over(
    out: &mpsc::Sender<Vec<SourceItem>>,
    batch: &mut Vec<SourceItem>,
    stats: &Stats,
) -> bool {
    let sending = Instant::now();
    let sent = out.send(std::mem::take(batch)).await.is_ok();
    stats.time(&stats.source_blocked_us, sending);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(partition: i32, offset: i64) -> String {
        format!(
            "{{\"topic\":\"s.public.t\",\"partition\":{partition},\"offset\":{offset},\"key\":null,\"payload\":\"{{}}\"}}\n"
        )
    }

    fn describe(item: &SourceItem) -> String {
        match item {
            SourceItem::Record(r) => format!("record {}/{}", r.id.partition, r.id.offset),
            SourceItem::Malformed { .. } => "malformed".into(),
            SourceItem::Signal(SourceSignal::Assigned {
                partition, start, ..
            }) => format!("assigned {partition} from {start:?}"),
            SourceItem::Signal(SourceSignal::Revoked { partition, .. }) => {
                format!("revoked {partition}")
            }
            SourceItem::Signal(SourceSignal::Idle { partition, .. }) => {
                format!("idle {partition}")
            }
        }
    }

    #[tokio::test]
    async fn partitions_are_announced_before_their_first_record_and_go_idle_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, [line(0, 0), line(1, 0), line(0, 1)].concat()).unwrap();
        let source = FileSource {
            path: path.clone(),
            follow: true,
            max_batch: 100,
            max_wait: Duration::from_millis(10),
            resume: HashMap::from([(("s.public.t".to_string(), 1), 0)]),
            idle_timeout: Duration::from_millis(300),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.run(tx, cancel.clone(), Arc::new(Stats::default())));
        let mut seen = Vec::new();
        // Partition 1 goes quiet; append to partition 0 only, then wait for both to idle.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut appended = false;
        while seen
            .iter()
            .filter(|s: &&String| s.starts_with("idle"))
            .count()
            < 2
        {
            let batch = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("the source went silent without idle signals")
                .expect("the source ended");
            seen.extend(batch.iter().map(describe));
            if !appended {
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(line(0, 2).as_bytes()).unwrap();
                appended = true;
            }
        }
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(
            &seen[..4],
            [
                "assigned 0 from None",
                "record 0/0",
                "assigned 1 from Some(0)",
                "record 1/0"
            ]
        );
        let pos = |s: &str| seen.iter().position(|x| x == s).unwrap_or(usize::MAX);
        assert!(pos("record 0/2") < pos("idle 0"), "{seen:?}");
        assert!(pos("idle 1") < usize::MAX, "{seen:?}");
        assert_eq!(seen.iter().filter(|s| s.starts_with("idle")).count(), 2);
    }
}
