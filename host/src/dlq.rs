//! The DLQ topic: a copy on Kafka of the sink's `sluice_dlq` table, in Kafka
//! Connect's dead-letter format (original key, value and headers, plus
//! `__connect.errors.*` headers saying where the record came from and why it
//! was rejected).
//!
//! The sink table is the truth: it commits with the batch's offsets, exactly
//! once. Rows are produced to the topic after that commit and marked
//! `published` once Kafka acknowledged them (an outbox). Rows left unmarked by
//! a crash or an unreachable broker are sent on the next commit or at the next
//! start, so the topic receives every dead letter at least once; a crash
//! between the acknowledgement and the mark can repeat one, identified by its
//! `__connect.errors.topic/partition/offset` headers.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::sink::sql::StoredDeadLetter;

/// Producer for one pipeline's DLQ topic.
pub struct DlqTopic {
    producer: FutureProducer,
    topic: String,
    pipeline: String,
}

impl DlqTopic {
    pub fn new(brokers: &str, topic: &str, pipeline: &str) -> anyhow::Result<DlqTopic> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create()
            .context("creating the DLQ topic producer")?;
        Ok(DlqTopic {
            producer,
            topic: topic.to_string(),
            pipeline: pipeline.to_string(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produce the rows and wait for Kafka's acknowledgements. Returns the ids
    /// acknowledged, and the first error if some were not.
    pub async fn publish(&self, rows: &[StoredDeadLetter]) -> (Vec<i64>, Option<anyhow::Error>) {
        let mut pending = Vec::with_capacity(rows.len());
        let mut error = None;
        for r in rows {
            let headers = connect_headers(r, &self.pipeline);
            let mut record = FutureRecord::<str, str>::to(&self.topic).headers(headers);
            if let Some(k) = r.key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = r.value.as_deref() {
                record = record.payload(v);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => pending.push((r.id, delivery)),
                Err((e, _)) => {
                    error.get_or_insert_with(|| anyhow::anyhow!("queueing a dead letter: {e}"));
                    break;
                }
            }
        }
        let mut delivered = Vec::with_capacity(pending.len());
        for (id, delivery) in pending {
            match tokio::time::timeout(Duration::from_secs(60), delivery).await {
                Ok(Ok(Ok(_))) => delivered.push(id),
                Ok(Ok(Err((e, _)))) => {
                    error.get_or_insert_with(|| anyhow::anyhow!("producing a dead letter: {e}"));
                }
                Ok(Err(_)) | Err(_) => {
                    error.get_or_insert_with(|| {
                        anyhow::anyhow!("no acknowledgement for a dead letter")
                    });
                }
            }
        }
        (delivered, error)
    }
}

/// Kafka Connect's error headers (`errors.deadletterqueue.context.headers.enable`),
/// after the record's own headers.
fn connect_headers(r: &StoredDeadLetter, pipeline: &str) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(r.headers.len() + 9);
    for (k, v) in &r.headers {
        h = h.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let partition = r.partition.to_string();
    let offset = r.offset.to_string();
    let class = format!("sluice.{}.Rejected", r.stage);
    let failing = r.plugin.as_deref().unwrap_or(&r.stage);
    for (k, v) in [
        ("__connect.errors.topic", r.topic.as_str()),
        ("__connect.errors.partition", &partition),
        ("__connect.errors.offset", &offset),
        ("__connect.errors.connector.name", pipeline),
        ("__connect.errors.task.id", "0"),
        ("__connect.errors.stage", r.stage.as_str()),
        ("__connect.errors.class.name", failing),
        ("__connect.errors.exception.class.name", &class),
        ("__connect.errors.exception.message", r.reason.as_str()),
    ] {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    h
}
