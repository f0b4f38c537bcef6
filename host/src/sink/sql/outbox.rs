//! `sluice_dlq` as the DLQ topic's outbox: the rows not yet on Kafka, their
//! marking once Kafka acknowledged them, and the header encoding they share
//! with the commit that writes them.

use super::*;

/// A row of `sluice_dlq`, as the DLQ topic needs it.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub stage: String,
    pub plugin: Option<String>,
    pub reason: String,
}

/// Dead letters into `sluice_dlq`, in the batch's transaction (the DLQ
/// topic publisher drains them after the commit).
pub(super) async fn write_dead_letters(
    conn: &mut AnyConnection,
    sql: &str,
    pipeline: &str,
    dead: impl Iterator<Item = &DeadLetter>,
) -> anyhow::Result<()> {
    for dl in dead {
        sqlx::query(sql)
            .bind(pipeline)
            .bind(&*dl.record.id.topic)
            .bind(dl.record.id.partition)
            .bind(dl.record.id.offset)
            .bind(dl.record.key.as_deref())
            .bind(dl.record.value_text().map(String::from))
            .bind(encode_headers(&dl.record.headers))
            .bind(dl.stage.as_str())
            .bind(dl.plugin.as_deref())
            .bind(dl.reason.as_str())
            .execute(&mut *conn)
            .await
            .context("writing sluice_dlq")?;
    }
    Ok(())
}

/// Kafka headers as JSON text: `[["name", "base64" | null], …]`.
pub(super) fn encode_headers(headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
    use base64::Engine as _;
    if headers.is_empty() {
        return None;
    }
    let list: Vec<(&str, Option<String>)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.as_ref()
                    .map(|v| base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    serde_json::to_string(&list).ok()
}

fn decode_headers(text: Option<&str>) -> anyhow::Result<Vec<(String, Option<Vec<u8>>)>> {
    use base64::Engine as _;
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let list: Vec<(String, Option<String>)> =
        serde_json::from_str(text).context("record_headers is not a header list")?;
    list.into_iter()
        .map(|(k, v)| {
            let v = v
                .map(|v| base64::engine::general_purpose::STANDARD.decode(v))
                .transpose()
                .context("record_headers: a value is not base64")?;
            Ok((k, v))
        })
        .collect()
}

impl SqlSink {
    /// How many dead letters are not yet on the DLQ topic (for the summary
    /// when a run ends with Kafka refusing them).
    pub async fn unpublished_count(&mut self) -> anyhow::Result<i64> {
        let sql = self
            .dialect
            .sql("SELECT COUNT(*) FROM sluice_dlq WHERE pipeline = ? AND NOT published");
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(&self.pipeline)
            .fetch_one(&mut self.conn)
            .await
            .context("counting unpublished dead letters in sluice_dlq")?;
        Ok(n)
    }

    /// Dead letters not yet copied to the DLQ topic, oldest first.
    pub async fn unpublished_dead_letters(
        &mut self,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredDeadLetter>> {
        let sql = self.dialect.sql(
            "SELECT id, topic, kafka_partition, kafka_offset, record_key, record_value, record_headers, stage, plugin, reason
             FROM sluice_dlq WHERE pipeline = ? AND NOT published ORDER BY id LIMIT ?",
        );
        let rows = sqlx::query(&sql)
            .bind(&self.pipeline)
            .bind(limit)
            .fetch_all(&mut self.conn)
            .await
            .context("reading sluice_dlq")?;
        rows.into_iter()
            .map(|r| {
                let headers = opt_text(&r, 6)?;
                Ok(StoredDeadLetter {
                    id: r.try_get(0)?,
                    topic: text(&r, 1)?,
                    partition: r.try_get(2)?,
                    offset: r.try_get(3)?,
                    key: opt_text(&r, 4)?,
                    value: opt_text(&r, 5)?,
                    headers: decode_headers(headers.as_deref())?,
                    stage: text(&r, 7)?,
                    plugin: opt_text(&r, 8)?,
                    reason: text(&r, 9)?,
                })
            })
            .collect::<anyhow::Result<_>>()
            .context("reading sluice_dlq")
    }

    /// Record that these dead letters are on the DLQ topic.
    pub async fn mark_published(&mut self, ids: &[i64]) -> anyhow::Result<()> {
        for chunk in ids.chunks(500) {
            let text = format!(
                "UPDATE sluice_dlq SET published = TRUE WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let sql = self.dialect.sql(&text);
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut self.conn)
                .await
                .context("marking dead letters published")?;
        }
        Ok(())
    }
}
