//! SQL sinks: SQLite (the embedded default), PostgreSQL and MySQL/MariaDB,
//! through one commit routine. Each batch commits in one transaction: the
//! rows, the dead letters, the decoder's facts and the source offsets
//! together, so a re-run or a crash at any instant never applies an event
//! twice or loses one.
//!
//! Writes are grouped per table into multi-row upserts and deletes. If one
//! of them meets a row-level error (constraint, value out of range…), the
//! whole batch is rolled back and written again event by event, each in a
//! savepoint, so only the offending events are dead-lettered.
//!
//! Tables are created from the plugin's declared sink table, before the
//! transaction (MySQL commits DDL implicitly); new columns are added. Values
//! are always bound, identifiers always quoted. Logical types are kept:
//! decimals as NUMERIC/DECIMAL (text in SQLite), instants as TIMESTAMPTZ
//! (PostgreSQL) or their UTC DATETIME(6) (MySQL) or
//! `YYYY-MM-DDTHH:MM:SS.ffffffZ` text (SQLite); `sluice_columns` records
//! each column's logical type.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::AnyConnection;
use sqlx::{Connection as _, Row as _};

use super::ddl_lock;
use super::dialect::{power_of_two_at_most, Dialect};
use super::{EventWrites, SinkBatch, SinkReport};
use crate::decode::temporal;
use crate::model::{
    Column, ColumnType, DeadLetter, Learned, RecordId, SinkTable, SinkWrite, Stage, Value,
};

/// Why a table cannot be written (its events are dead-lettered), or why the
/// sink itself failed (the batch rolls back and the run stops).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The data cannot go into this sink (bad key, type, name): the event is
    /// dead-lettered and the pipeline goes on.
    #[error("{0}")]
    Rejected(String),
    /// The sink itself failed (I/O, connection, permissions): nothing is
    /// committed, so a restart re-reads the batch.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An open SQL sink for one pipeline.
pub struct SqlSink {
    conn: AnyConnection,
    dialect: Dialect,
    pipeline: String,
    tables: HashMap<String, TableState>,
    sql: HashMap<Arc<SinkTable>, TableSql>,
    meta: MetaSql,
}

/// What the sink knows of an existing table.
#[derive(Debug, Clone)]
struct TableState {
    columns: Vec<String>,
    key: Vec<String>,
}

/// Bookkeeping statements in this dialect.
struct MetaSql {
    dlq: String,
    /// The dialect's current-time expression.
    now: &'static str,
    learned: String,
    catalog: String,
}

impl MetaSql {
    fn new(d: Dialect) -> MetaSql {
        let now = match d {
            Dialect::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            Dialect::Postgres => "now()",
            Dialect::MySql { .. } => "UTC_TIMESTAMP(6)",
        };
        let upsert = |table: &str, cols: &[&str], key: usize, update: bool, last: &str| {
            let quoted: Vec<String> = cols.iter().map(|c| d.quote(c)).collect();
            let mut values = vec!["?"; cols.len()];
            if !last.is_empty() {
                *values.last_mut().expect("columns") = last;
            }
            let tail = if update {
                d.upsert_clause(&quoted[..key], &quoted[key..])
            } else {
                d.upsert_clause(&quoted[..key], &[])
            };
            d.sql(&format!(
                "INSERT INTO {table} ({}) VALUES ({}){tail}",
                quoted.join(", "),
                values.join(", ")
            ))
            .into_owned()
        };
        MetaSql {
            dlq: d
                .sql(&format!(
                    "INSERT INTO sluice_dlq (pipeline, topic, kafka_partition, kafka_offset, record_key, record_value, record_headers, stage, plugin, reason, failed_at)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now})"
                ))
                .into_owned(),
            now,
            learned: upsert(
                "sluice_decoder_state",
                &["pipeline", "topic", "kind", "name", "value"],
                4,
                true,
                "",
            ),
            catalog: upsert(
                "sluice_columns",
                &["table_name", "column_name", "logical_type"],
                2,
                false,
                "",
            ),
        }
    }
}

impl SqlSink {
    /// Connect (creating a SQLite file if needed) and create the bookkeeping tables.
    pub async fn open(url: &str, shown: &str, pipeline: &str) -> anyhow::Result<SqlSink> {
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(url)
            .await
            .with_context(|| format!("connecting to the sink {shown}"))?;
        let dialect = match conn.backend_name() {
            "SQLite" => Dialect::Sqlite,
            "PostgreSQL" => Dialect::Postgres,
            "MySQL" => {
                let version: String = sqlx::query_scalar("SELECT VERSION()")
                    .fetch_one(&mut conn)
                    .await?;
                let collation = if version.contains("MariaDB") {
                    "utf8mb4_nopad_bin"
                } else if version.starts_with("5.") {
                    "utf8mb4_bin"
                } else {
                    "utf8mb4_0900_bin"
                };
                Dialect::MySql { collation }
            }
            other => anyhow::bail!("sink {shown}: unsupported database `{other}`"),
        };
        let session: &[&str] = match dialect {
            // The busy timeout first: switching to WAL takes the file's
            // lock, which another host starting at the same moment may hold.
            Dialect::Sqlite => &[
                "PRAGMA busy_timeout = 10000",
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
            ],
            Dialect::Postgres => &["SET TIME ZONE 'UTC'"],
            Dialect::MySql { .. } => &[
                "SET SESSION time_zone = '+00:00'",
                // Strict: a value the column cannot hold is an error, never a silent change.
                "SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO')",
            ],
        };
        for s in session {
            // Switching an SQLite file to WAL needs its exclusive lock and
            // answers SQLITE_BUSY at once, without the busy handler, while
            // another host opens the same file: a lock conflict is retried.
            let started = std::time::Instant::now();
            loop {
                match sqlx::query(s).execute(&mut conn).await {
                    Ok(_) => break,
                    Err(e)
                        if dialect.is_transient(&e)
                            && started.elapsed() < std::time::Duration::from_secs(10) =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Err(e) => return Err(e).with_context(|| format!("sink {shown}: {s}")),
                }
            }
        }
        ddl_lock::locked_ddl(&mut conn, dialect, dialect.meta_ddl())
            .await
            .with_context(|| format!("sink {shown}: creating Sluice's bookkeeping tables"))?;
        tracing::info!(sink = %shown, database = dialect.name(), "sink ready");
        Ok(SqlSink {
            conn,
            dialect,
            pipeline: pipeline.to_string(),
            tables: HashMap::new(),
            sql: HashMap::new(),
            meta: MetaSql::new(dialect),
        })
    }

    /// The checkpoint: next offset per (topic, partition) for this pipeline.
    pub async fn load_offsets(&mut self) -> anyhow::Result<HashMap<(String, i32), i64>> {
        let sql = self.dialect.sql(
            "SELECT topic, kafka_partition, next_offset FROM sluice_offsets WHERE pipeline = ?",
        );
        let rows = sqlx::query(&sql)
            .bind(&self.pipeline)
            .fetch_all(&mut self.conn)
            .await
            .context("reading sluice_offsets")?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    (r.try_get::<String, _>(0)?, r.try_get::<i32, _>(1)?),
                    r.try_get::<i64, _>(2)?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("reading sluice_offsets")
    }

    /// What the decoder learned in committed batches of this pipeline.
    pub async fn load_learned(&mut self) -> anyhow::Result<Vec<Learned>> {
        let sql = self
            .dialect
            .sql("SELECT topic, kind, name, value FROM sluice_decoder_state WHERE pipeline = ?");
        let rows = sqlx::query(&sql)
            .bind(&self.pipeline)
            .fetch_all(&mut self.conn)
            .await
            .context("reading sluice_decoder_state")?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (topic, kind, name) = (text(&r, 0)?, text(&r, 1)?, text(&r, 2)?);
            let value = text(&r, 3)?;
            out.push(match kind.as_str() {
                "text_column" => Learned::TextColumn {
                    topic,
                    column: name,
                },
                "key" => Learned::Key {
                    topic,
                    columns: serde_json::from_str(&value)
                        .with_context(|| format!("sluice_decoder_state: bad key {value}"))?,
                },
                other => anyhow::bail!("sluice_decoder_state: unknown kind `{other}`"),
            });
        }
        Ok(out)
    }

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

    /// Row counts of the tables Sluice created, for the exit summary.
    pub async fn table_counts(&mut self) -> anyhow::Result<Vec<(String, i64)>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT table_name FROM sluice_columns ORDER BY table_name",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = Vec::new();
        for n in names {
            let sql = format!("SELECT count(*) FROM {}", self.dialect.quote(&n));
            // A table dropped since is simply not counted.
            if let Ok(count) = sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&mut self.conn)
                .await
            {
                out.push((n, count));
            }
        }
        Ok(out)
    }

    /// Apply a batch atomically: writes, dead letters, decoder facts, offsets.
    ///
    /// The batch's partitions are locked in `sluice_offsets` first, and
    /// records below a partition's committed offset are dropped: another
    /// consumer of this pipeline took the partition in a rebalance and
    /// committed them while this batch was in flight. Offsets only move
    /// forward. So however partitions move between hosts, each record is
    /// applied once.
    pub async fn commit(&mut self, batch: SinkBatch) -> anyhow::Result<SinkReport> {
        // Tables first, outside the transaction (DDL commits implicitly in
        // MySQL), so the table cache stays true whatever happens next.
        let broken = self.prepare_tables(&batch.events).await?;
        let SinkBatch {
            mut events,
            mut dead,
            offsets,
            learned,
            ..
        } = batch;
        let mut report = SinkReport::default();
        let mut attempt = 0;
        loop {
            let result = self
                .try_commit(
                    &mut events,
                    &mut dead,
                    &offsets,
                    &learned,
                    &broken,
                    &mut report,
                )
                .await;
            match result {
                // A deadlock with another host of the pipeline (two hosts
                // writing the same rows in different orders) or a lock wait
                // that timed out: the database rolled the transaction back.
                Err(e) if attempt < 5 && self.transient(&e) => {
                    attempt += 1;
                    tracing::warn!(
                        attempt,
                        "sink transaction aborted by the database ({e:#}); trying the batch again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                other => return other.map(|()| report),
            }
        }
    }

    /// Whether an error aborted only this transaction and a retry may pass.
    fn transient(&self, e: &anyhow::Error) -> bool {
        e.chain()
            .filter_map(|c| c.downcast_ref::<sqlx::Error>())
            .any(|e| self.dialect.is_transient(e))
    }

    /// One attempt at the batch's transaction. `events` and `dead` are
    /// updated in place (records another consumer committed dropped, events
    /// the sink refuses moved to `dead`), so a retry starts from there.
    async fn try_commit(
        &mut self,
        events: &mut Vec<EventWrites>,
        dead: &mut Vec<DeadLetter>,
        offsets: &[(Arc<str>, i32, i64)],
        learned: &[Learned],
        broken: &HashMap<TableId, String>,
        report: &mut SinkReport,
    ) -> anyhow::Result<()> {
        let d = self.dialect;
        report.writes = 0;
        report.offsets.clear();
        let SqlSink {
            conn,
            sql,
            meta,
            pipeline,
            ..
        } = self;
        let mut tx = conn.begin().await.context("BEGIN")?;
        let mut stored = claim_offsets(&mut tx, d, meta, pipeline, offsets).await?;
        report.stale += drop_committed(&stored, events, dead);
        for ev in std::mem::take(events) {
            match precheck(d, &ev, broken) {
                None => events.push(ev),
                Some(reason) => reject(dead, report, ev, reason),
            }
        }
        match write_grouped(&mut tx, d, sql, events).await {
            Ok(n) => report.writes += n,
            Err(e) if d.retry_event_by_event(&e) => {
                tracing::debug!("a grouped write failed ({e}); writing the batch event by event");
                tx.rollback().await.context("ROLLBACK")?;
                tx = conn.begin().await.context("BEGIN")?;
                // The rollback released the offset locks: take them again.
                stored = claim_offsets(&mut tx, d, meta, pipeline, offsets).await?;
                report.stale += drop_committed(&stored, events, dead);
                let mut i = 0;
                while i < events.len() {
                    match write_event(&mut tx, d, sql, &events[i]).await {
                        Ok(n) => {
                            report.writes += n;
                            i += 1;
                        }
                        Err(SinkError::Rejected(reason)) => {
                            let ev = events.remove(i);
                            reject(dead, report, ev, reason)
                        }
                        Err(SinkError::Database(e)) => {
                            return Err(anyhow::Error::new(e).context("writing to the sink"))
                        }
                    }
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context("writing to the sink")),
        }

        for dl in dead.iter() {
            sqlx::query(&meta.dlq)
                .bind(pipeline.as_str())
                .bind(&*dl.record.id.topic)
                .bind(dl.record.id.partition)
                .bind(dl.record.id.offset)
                .bind(dl.record.key.as_deref())
                .bind(dl.record.value.as_deref())
                .bind(encode_headers(&dl.record.headers))
                .bind(dl.stage.as_str())
                .bind(dl.plugin.as_deref())
                .bind(dl.reason.as_str())
                .execute(&mut *tx)
                .await
                .context("writing sluice_dlq")?;
        }
        if !offsets.is_empty() {
            let sql = offsets_insert_sql(d, meta.now, offsets.len(), true);
            let mut q = sqlx::query(&sql);
            for (topic, partition, next) in offsets {
                // Never backwards: a consumer that lost the partition may be behind.
                let next =
                    committed_next(&stored, topic, *partition).map_or(*next, |s| s.max(*next));
                q = q
                    .bind(pipeline.as_str())
                    .bind(&**topic)
                    .bind(*partition)
                    .bind(next);
                report.offsets.push((topic.clone(), *partition, next));
            }
            q.execute(&mut *tx)
                .await
                .context("writing sluice_offsets")?;
        }
        for fact in learned {
            let (topic, kind, name, value) = match fact {
                Learned::TextColumn { topic, column } => {
                    (topic, "text_column", column.as_str(), String::new())
                }
                Learned::Key { topic, columns } => {
                    (topic, "key", "", serde_json::to_string(columns)?)
                }
            };
            sqlx::query(&meta.learned)
                .bind(pipeline.as_str())
                .bind(topic.as_str())
                .bind(kind)
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await
                .context("writing sluice_decoder_state")?;
        }
        tx.commit().await.context("COMMIT")?;
        Ok(())
    }

    /// Create or extend every table the batch writes to. Returns the tables
    /// that cannot take the plugin's rows, with the reason.
    async fn prepare_tables(
        &mut self,
        events: &[EventWrites],
    ) -> anyhow::Result<HashMap<TableId, String>> {
        let mut broken = HashMap::new();
        let mut checked: HashSet<TableId> = HashSet::new();
        for ev in events {
            for w in &ev.writes {
                let table = w.table();
                let ptr = table_id(table);
                if !checked.insert(ptr) {
                    continue;
                }
                match self.ensure_table(table).await {
                    Ok(()) => {}
                    Err(SinkError::Rejected(why)) => {
                        tracing::warn!(table = %table.name, "sink table refused: {why}");
                        broken.insert(ptr, why);
                    }
                    Err(SinkError::Database(e)) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("preparing sink table `{}`", table.name)))
                    }
                }
            }
        }
        Ok(broken)
    }

    /// Create the table or add missing columns.
    async fn ensure_table(&mut self, table: &SinkTable) -> Result<(), SinkError> {
        let d = self.dialect;
        let rejected = |why: String| Err(SinkError::Rejected(why));
        if table.key.is_empty() {
            return rejected(format!(
                "sink table `{}` has no primary key; upserts need one",
                table.name
            ));
        }
        if table.name.starts_with("sluice_") {
            return rejected(format!(
                "sink table name `{}` is reserved for Sluice's bookkeeping",
                table.name
            ));
        }
        for name in std::iter::once(&table.name).chain(table.columns.iter().map(|c| &c.name)) {
            if let Some(why) = d.check_identifier(name) {
                return rejected(format!("sink table `{}`: {why}", table.name));
            }
        }
        let key_names: Vec<String> = table
            .key
            .iter()
            .map(|&k| table.columns[k as usize].name.clone())
            .collect();
        let mut types = Vec::with_capacity(table.columns.len());
        for (i, c) in table.columns.iter().enumerate() {
            match d.column_type(c, table.key.contains(&(i as u32))) {
                Ok(t) => types.push(t),
                Err(why) => return rejected(format!("sink table `{}`: {why}", table.name)),
            }
        }
        if !self.tables.contains_key(&table.name) {
            if let Some(state) = read_table(&mut self.conn, d, &table.name).await? {
                self.tables.insert(table.name.clone(), state);
            }
        }
        let ddl_error = |e: sqlx::Error| {
            if d.is_table_error(&e) {
                SinkError::Rejected(format!("sink table `{}`: {e}", table.name))
            } else {
                SinkError::Database(e)
            }
        };
        let quoted_table = d.quote(&table.name);
        match self.tables.get_mut(&table.name) {
            Some(state) => {
                if state.key != key_names {
                    return rejected(format!(
                        "sink table `{}` has primary key ({}) but the plugin declares ({})",
                        table.name,
                        state.key.join(", "),
                        key_names.join(", ")
                    ));
                }
                for (c, ty) in table.columns.iter().zip(&types) {
                    if state.columns.iter().any(|n| n == &c.name) {
                        continue;
                    }
                    let alter = format!(
                        "ALTER TABLE {quoted_table} ADD COLUMN {} {ty}",
                        d.quote(&c.name)
                    );
                    let added = ddl_lock::locked_ddl(&mut self.conn, d, &[&alter]).await;
                    if let Err(e) = added {
                        // Another host of the pipeline may have added it since
                        // this one looked: then all is well.
                        let now = read_table(&mut self.conn, d, &table.name).await?;
                        if !now.is_some_and(|t| t.columns.iter().any(|n| n == &c.name)) {
                            return Err(ddl_error(e));
                        }
                    }
                    catalog(&mut self.conn, &self.meta, &table.name, c).await?;
                    tracing::info!(table = %table.name, column = %c.name, "sink column added");
                    state.columns.push(c.name.clone());
                }
                Ok(())
            }
            None => {
                let defs: Vec<String> = table
                    .columns
                    .iter()
                    .zip(&types)
                    .enumerate()
                    .map(|(i, (c, ty))| {
                        let not_null = if table.key.contains(&(i as u32)) {
                            " NOT NULL"
                        } else {
                            ""
                        };
                        format!("{} {ty}{not_null}", d.quote(&c.name))
                    })
                    .collect();
                let ddl = format!(
                    "CREATE TABLE IF NOT EXISTS {quoted_table} ({}, PRIMARY KEY ({})){}",
                    defs.join(", "),
                    key_names
                        .iter()
                        .map(|k| d.quote(k))
                        .collect::<Vec<_>>()
                        .join(", "),
                    d.table_options()
                );
                if let Err(e) = ddl_lock::locked_ddl(&mut self.conn, d, &[&ddl]).await {
                    // Another host of the pipeline may have created it at the
                    // same moment: check it as an existing table.
                    return match read_table(&mut self.conn, d, &table.name).await? {
                        Some(state) => {
                            self.tables.insert(table.name.clone(), state);
                            Box::pin(self.ensure_table(table)).await
                        }
                        None => Err(ddl_error(e)),
                    };
                }
                for c in &table.columns {
                    catalog(&mut self.conn, &self.meta, &table.name, c).await?;
                }
                tracing::info!(table = %table.name, "sink table created");
                self.tables.insert(
                    table.name.clone(),
                    TableState {
                        columns: table.columns.iter().map(|c| c.name.clone()).collect(),
                        key: key_names,
                    },
                );
                Ok(())
            }
        }
    }
}

/// A text column. MySQL reports TEXT columns as BLOBs and sqlx's `Any`
/// driver then refuses them as strings, so bytes are accepted as UTF-8.
fn opt_text(r: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    match r.try_get::<Option<String>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => r
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map(|b| {
                String::from_utf8(b).map_err(|e| sqlx::Error::ColumnDecode {
                    index: i.to_string(),
                    source: Box::new(e),
                })
            })
            .transpose(),
    }
}

fn text(r: &sqlx::any::AnyRow, i: usize) -> Result<String, sqlx::Error> {
    opt_text(r, i)?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: i.to_string(),
        source: "unexpected NULL".into(),
    })
}

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

/// Kafka headers as JSON text: `[["name", "base64" | null], …]`.
fn encode_headers(headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
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

/// One declaration of a sink table within a batch (its address: the
/// batch's writes share their declarations), as a plain number so the
/// commit future stays `Send`.
type TableId = usize;

fn table_id(table: &Arc<SinkTable>) -> TableId {
    Arc::as_ptr(table) as TableId
}

/// Why an event cannot be written, found without asking the database.
fn precheck(d: Dialect, ev: &EventWrites, broken: &HashMap<TableId, String>) -> Option<String> {
    for w in &ev.writes {
        let table = w.table();
        if let Some(why) = broken.get(&table_id(table)) {
            return Some(why.clone());
        }
        for (v, c) in bound(table, w) {
            if let Some(why) = d.unstorable(v, c) {
                return Some(format!("writing to `{}`: {why}", table.name));
            }
        }
    }
    None
}

fn reject(dead: &mut Vec<DeadLetter>, report: &mut SinkReport, ev: EventWrites, reason: String) {
    tracing::warn!(topic = %ev.record.id.topic, partition = ev.record.id.partition, offset = ev.record.id.offset, "sink rejected event: {reason}");
    report.dlq_sink += 1;
    dead.push(DeadLetter {
        record: ev.record,
        stage: Stage::Sink,
        plugin: ev.plugins,
        reason,
    });
}

/// The columns of `sluice_offsets`; the first three are its key.
const OFFSET_COLUMNS: [&str; 5] = [
    "pipeline",
    "topic",
    "kafka_partition",
    "next_offset",
    "updated_at",
];

/// `INSERT INTO sluice_offsets` of `rows` rows (pipeline, topic, partition
/// and, if `update`, the next offset bound in that order), which on conflict
/// sets the bound offset (`update`) or leaves the row as it is (a new row
/// starts at 0).
fn offsets_insert_sql(d: Dialect, now: &str, rows: usize, update: bool) -> String {
    let cols = OFFSET_COLUMNS.map(|c| d.quote(c));
    let offset = if update { "?" } else { "0" };
    let values = vec![format!("(?, ?, ?, {offset}, {now})"); rows];
    let set: &[String] = if update { &cols[3..] } else { &[] };
    d.sql(&format!(
        "INSERT INTO sluice_offsets ({}) VALUES {}{}",
        cols.join(", "),
        values.join(", "),
        d.upsert_clause(&cols[..3], set)
    ))
    .into_owned()
}

/// Lock this batch's partitions in `sluice_offsets` and read their committed
/// next offsets: two statements whatever the number of partitions. Rows a
/// partition does not have yet are created at 0 first, so there is a row to
/// lock. Locks are taken in (topic, partition) order, so two hosts cannot
/// deadlock, and held until COMMIT: a consumer that lost a partition in a
/// rebalance waits here for the new owner's batch, then sees its offset.
async fn claim_offsets(
    conn: &mut AnyConnection,
    d: Dialect,
    meta: &MetaSql,
    pipeline: &str,
    offsets: &[(Arc<str>, i32, i64)],
) -> anyhow::Result<Vec<(Arc<str>, i32, i64)>> {
    let mut parts: Vec<(&Arc<str>, i32)> = offsets.iter().map(|(t, p, _)| (t, *p)).collect();
    parts.sort();
    parts.dedup();
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let claim = offsets_insert_sql(d, meta.now, parts.len(), false);
    let mut q = sqlx::query(&claim);
    for (topic, partition) in &parts {
        q = q.bind(pipeline).bind(&***topic).bind(*partition);
    }
    q.execute(&mut *conn)
        .await
        .context("claiming the batch's partitions in sluice_offsets")?;

    let which = vec!["(?, ?)"; parts.len()];
    let lock = d
        .sql(&format!(
            "SELECT topic, kafka_partition, next_offset FROM sluice_offsets
         WHERE pipeline = ? AND (topic, kafka_partition) IN ({}) ORDER BY topic, kafka_partition{}",
            which.join(", "),
            // SQLite: the claim's INSERT already holds the database's write lock.
            if d == Dialect::Sqlite {
                ""
            } else {
                " FOR UPDATE"
            }
        ))
        .into_owned();
    let mut q = sqlx::query(&lock).bind(pipeline);
    for (topic, partition) in &parts {
        q = q.bind(&***topic).bind(*partition);
    }
    let found = q
        .fetch_all(&mut *conn)
        .await
        .context("locking the batch's partitions in sluice_offsets")?;
    let mut stored = Vec::with_capacity(parts.len());
    for r in found {
        let (topic, partition, next): (String, i32, i64) =
            (text(&r, 0)?, r.try_get(1)?, r.try_get(2)?);
        if let Some((t, _)) = parts
            .iter()
            .find(|(t, p)| *p == partition && ***t == *topic)
        {
            stored.push(((*t).clone(), partition, next));
        }
    }
    Ok(stored)
}

/// The committed next offset of a partition, from [`claim_offsets`].
fn committed_next(stored: &[(Arc<str>, i32, i64)], topic: &str, partition: i32) -> Option<i64> {
    stored
        .iter()
        .find(|(t, p, _)| *p == partition && &**t == topic)
        .map(|(_, _, next)| *next)
}

/// Drop the records another consumer already committed; returns how many.
fn drop_committed(
    stored: &[(Arc<str>, i32, i64)],
    events: &mut Vec<EventWrites>,
    dead: &mut Vec<DeadLetter>,
) -> u64 {
    let committed = |id: &RecordId| {
        committed_next(stored, &id.topic, id.partition).is_some_and(|next| id.offset < next)
    };
    let before = events.len() + dead.len();
    events.retain(|ev| !committed(&ev.record.id));
    dead.retain(|dl| !committed(&dl.record.id));
    let dropped = before - events.len() - dead.len();
    if dropped > 0 {
        tracing::info!(
            records = dropped,
            "dropped records another consumer of this pipeline already committed (partition moved in a rebalance)"
        );
    }
    dropped as u64
}

/// The values a write binds, each with its column: the whole row for an
/// upsert, the key for a delete. (On the hot path: allocates nothing.)
fn bound<'a>(
    table: &'a SinkTable,
    w: &'a SinkWrite,
) -> impl Iterator<Item = (&'a Value, &'a Column)> + 'a {
    let (values, key) = match w {
        SinkWrite::Upsert { values, .. } => (values, None),
        SinkWrite::Delete { key, .. } => (key, Some(&table.key)),
    };
    values.iter().enumerate().map(move |(i, v)| {
        let col = match key {
            None => i,
            Some(k) => k[i] as usize,
        };
        (v, &table.columns[col])
    })
}

/// The statements of `table`, created on first use.
fn table_sql<'c>(
    cache: &'c mut HashMap<Arc<SinkTable>, TableSql>,
    d: Dialect,
    table: &Arc<SinkTable>,
) -> &'c mut TableSql {
    cache
        .entry(table.clone())
        .or_insert_with(|| TableSql::new(d, table))
}

/// Multi-row statements of one sink table, built on first use. Row counts are
/// powers of two so a handful of prepared statements serve every batch.
struct TableSql {
    table: Arc<SinkTable>,
    max_rows: usize,
    upserts: HashMap<usize, Arc<str>>,
    deletes: HashMap<usize, Arc<str>>,
}

impl TableSql {
    fn new(d: Dialect, table: &Arc<SinkTable>) -> TableSql {
        TableSql {
            table: table.clone(),
            max_rows: d.max_rows(table.columns.len()),
            upserts: HashMap::new(),
            deletes: HashMap::new(),
        }
    }

    fn statement(&mut self, d: Dialect, upsert: bool, rows: usize) -> Arc<str> {
        let t = &self.table;
        let cache = if upsert {
            &mut self.upserts
        } else {
            &mut self.deletes
        };
        cache
            .entry(rows)
            .or_insert_with(|| {
                if upsert {
                    upsert_sql(d, t, rows)
                } else {
                    delete_sql(d, t, rows)
                }
                .into()
            })
            .clone()
    }
}

fn upsert_sql(d: Dialect, t: &SinkTable, rows: usize) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| d.quote(&c.name)).collect();
    let key: Vec<String> = t
        .key
        .iter()
        .map(|&k| d.quote(&t.columns[k as usize].name))
        .collect();
    let non_key: Vec<String> = (0..t.columns.len())
        .filter(|i| !t.key.contains(&(*i as u32)))
        .map(|i| cols[i].clone())
        .collect();
    let mut n = 0;
    let tuples: Vec<String> = (0..rows)
        .map(|_| {
            let ps: Vec<String> = t
                .columns
                .iter()
                .map(|c| {
                    n += 1;
                    d.placeholder(n, Some(c))
                })
                .collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES {}{}",
        d.quote(&t.name),
        cols.join(", "),
        tuples.join(", "),
        d.upsert_clause(&key, &non_key)
    )
}

fn delete_sql(d: Dialect, t: &SinkTable, rows: usize) -> String {
    let key: Vec<(&Column, String)> = t
        .key
        .iter()
        .map(|&k| {
            let c = &t.columns[k as usize];
            (c, d.quote(&c.name))
        })
        .collect();
    let mut n = 0;
    let mut next = |c: &Column| {
        n += 1;
        d.placeholder(n, Some(c))
    };
    let cond = if let [(c, name)] = key.as_slice() {
        let ps: Vec<String> = (0..rows).map(|_| next(c)).collect();
        format!("{name} IN ({})", ps.join(", "))
    } else {
        (0..rows)
            .map(|_| {
                let parts: Vec<String> = key
                    .iter()
                    .map(|(c, name)| format!("{name} = {}", next(c)))
                    .collect();
                format!("({})", parts.join(" AND "))
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    format!("DELETE FROM {} WHERE {cond}", d.quote(&t.name))
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind_value<'q>(q: AnyQuery<'q>, d: Dialect, v: &'q Value, col: &Column) -> AnyQuery<'q> {
    match v {
        // NULLs carry the column's type, so PostgreSQL can infer nothing wrong.
        Value::Null => match col.ty {
            ColumnType::Int => q.bind(None::<i64>),
            ColumnType::Float => q.bind(None::<f64>),
            ColumnType::Boolean if d != Dialect::Sqlite => q.bind(None::<bool>),
            ColumnType::Boolean => q.bind(None::<i64>),
            ColumnType::Bytes => q.bind(None::<Vec<u8>>),
            _ => q.bind(None::<String>),
        },
        Value::Boolean(b) if d == Dialect::Sqlite => q.bind(*b as i64),
        Value::Boolean(b) => q.bind(*b),
        Value::Int(i) => q.bind(*i),
        Value::Float(f) => q.bind(*f),
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => q.bind(s.as_str()),
        Value::Bytes(b) => q.bind(b.as_slice()),
        // MySQL's DATETIME takes no zone suffix: the UTC wall time is stored.
        Value::Timestamp(us) if matches!(d, Dialect::MySql { .. }) => {
            q.bind(temporal::format_local(*us))
        }
        Value::Timestamp(us) => q.bind(temporal::format_timestamp(*us)),
        Value::LocalTimestamp(us) => q.bind(temporal::format_local(*us)),
        Value::Date(days) => q.bind(temporal::format_date(*days)),
        Value::Time(us) => q.bind(temporal::format_time(*us)),
    }
}

/// The key of a write as bytes, to keep two writes of one key out of one
/// multi-row statement.
fn key_bytes(table: &SinkTable, w: &SinkWrite, out: &mut Vec<u8>) {
    out.clear();
    let mut push = |v: &Value| match v {
        Value::Null => out.push(0),
        Value::Boolean(b) => out.extend([1, *b as u8]),
        Value::Int(i) => {
            out.push(2);
            out.extend(i.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(3);
            out.extend(f.to_bits().to_le_bytes());
        }
        Value::Decimal(s) | Value::Text(s) | Value::Json(s) => {
            out.push(4);
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(5);
            out.extend((b.len() as u64).to_le_bytes());
            out.extend(b);
        }
        Value::Timestamp(x) | Value::LocalTimestamp(x) | Value::Time(x) => {
            out.push(6);
            out.extend(x.to_le_bytes());
        }
        Value::Date(x) => {
            out.push(7);
            out.extend(x.to_le_bytes());
        }
    };
    match w {
        SinkWrite::Upsert { values, .. } => {
            table.key.iter().for_each(|&k| push(&values[k as usize]))
        }
        SinkWrite::Delete { key, .. } => key.iter().for_each(push),
    }
}

/// The fast path: every table's writes in order, grouped into multi-row
/// upserts and deletes. Writes are grouped by table name (different names
/// never share a row, so their relative order does not matter); within a
/// name a run ends where the kind or the declaration changes (a column added
/// mid-batch, a second plugin) or a key repeats, so every row sees its
/// writes in batch order.
async fn write_grouped(
    conn: &mut AnyConnection,
    d: Dialect,
    cache: &mut HashMap<Arc<SinkTable>, TableSql>,
    events: &[EventWrites],
) -> Result<u64, sqlx::Error> {
    let mut order: Vec<Vec<&SinkWrite>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for w in events.iter().flat_map(|ev| &ev.writes) {
        let i = *index.entry(w.table().name.as_str()).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[i].push(w);
    }
    let mut written = 0;
    let mut key = Vec::new();
    for writes in order {
        let mut start = 0;
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for (i, w) in writes.iter().enumerate() {
            key_bytes(w.table(), w, &mut key);
            let (first, table) = (writes[start], w.table());
            let changed = i > start
                && (is_upsert(first) != is_upsert(w)
                    || !(Arc::ptr_eq(first.table(), table) || **first.table() == **table));
            let full = i - start == table_sql(cache, d, first.table()).max_rows;
            if changed || full || seen.contains(&key) {
                let ts = table_sql(cache, d, first.table());
                execute_run(conn, d, ts, &writes[start..i]).await?;
                start = i;
                seen.clear();
            }
            seen.insert(key.clone());
        }
        let ts = table_sql(cache, d, writes[start].table());
        execute_run(conn, d, ts, &writes[start..]).await?;
        written += writes.len() as u64;
    }
    Ok(written)
}

fn is_upsert(w: &SinkWrite) -> bool {
    matches!(w, SinkWrite::Upsert { .. })
}

/// Write a run of same-kind writes to one table in power-of-two chunks.
async fn execute_run(
    conn: &mut AnyConnection,
    d: Dialect,
    ts: &mut TableSql,
    mut run: &[&SinkWrite],
) -> Result<(), sqlx::Error> {
    while let Some(first) = run.first() {
        let rows = power_of_two_at_most(run.len());
        let sql = ts.statement(d, is_upsert(first), rows);
        let mut q = sqlx::query(&sql);
        for w in &run[..rows] {
            for (v, c) in bound(&ts.table, w) {
                q = bind_value(q, d, v, c);
            }
        }
        q.execute(&mut *conn).await?;
        run = &run[rows..];
    }
    Ok(())
}

/// The slow path: one event in a savepoint, one row per statement, so a
/// row error names this event alone and undoes only its writes.
async fn write_event(
    conn: &mut AnyConnection,
    d: Dialect,
    cache: &mut HashMap<Arc<SinkTable>, TableSql>,
    ev: &EventWrites,
) -> Result<u64, SinkError> {
    sqlx::query(Dialect::SAVEPOINT).execute(&mut *conn).await?;
    for w in &ev.writes {
        let table = w.table();
        let ts = table_sql(cache, d, table);
        if let Err(e) = execute_run(conn, d, ts, &[w]).await {
            if !d.is_row_error(&e) {
                return Err(SinkError::Database(e));
            }
            sqlx::query(Dialect::ROLLBACK_TO)
                .execute(&mut *conn)
                .await?;
            sqlx::query(Dialect::RELEASE).execute(&mut *conn).await?;
            return Err(SinkError::Rejected(format!(
                "writing to `{}`: {e}",
                table.name
            )));
        }
    }
    sqlx::query(Dialect::RELEASE).execute(&mut *conn).await?;
    Ok(ev.writes.len() as u64)
}

async fn catalog(
    conn: &mut AnyConnection,
    meta: &MetaSql,
    table: &str,
    col: &Column,
) -> Result<(), sqlx::Error> {
    sqlx::query(&meta.catalog)
        .bind(table)
        .bind(col.name.as_str())
        .bind(col.ty.as_str())
        .execute(conn)
        .await
        .map(|_| ())
}

async fn read_table(
    conn: &mut AnyConnection,
    d: Dialect,
    name: &str,
) -> Result<Option<TableState>, sqlx::Error> {
    let (columns, key) = match d {
        Dialect::Sqlite => {
            let rows = sqlx::query(&format!("PRAGMA table_info({})", d.quote(name)))
                .fetch_all(&mut *conn)
                .await?;
            let mut columns = Vec::new();
            let mut key: Vec<(i64, String)> = Vec::new();
            for r in rows {
                let col: String = r.try_get("name")?;
                let pk: i64 = r.try_get("pk")?;
                if pk > 0 {
                    key.push((pk, col.clone()));
                }
                columns.push(col);
            }
            key.sort();
            (columns, key.into_iter().map(|(_, c)| c).collect())
        }
        Dialect::Postgres | Dialect::MySql { .. } => {
            let (schema, text) = match d {
                Dialect::Postgres => ("current_schema()", "::text"),
                _ => ("DATABASE()", ""),
            };
            let columns: Vec<String> = sqlx::query_scalar(&d.sql(&format!(
                "SELECT column_name{text} FROM information_schema.columns
                 WHERE table_schema = {schema} AND table_name = ? ORDER BY ordinal_position"
            )))
            .bind(name)
            .fetch_all(&mut *conn)
            .await?;
            let key: Vec<String> = sqlx::query_scalar(&d.sql(&format!(
                "SELECT k.column_name{text} FROM information_schema.table_constraints c
                 JOIN information_schema.key_column_usage k
                   ON k.constraint_schema = c.constraint_schema AND k.constraint_name = c.constraint_name
                  AND k.table_schema = c.table_schema AND k.table_name = c.table_name
                 WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = {schema} AND c.table_name = ?
                 ORDER BY k.ordinal_position"
            )))
            .bind(name)
            .fetch_all(&mut *conn)
            .await?;
            (columns, key)
        }
    };
    Ok((!columns.is_empty()).then_some(TableState { columns, key }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RawRecord;

    fn table(columns: &[&str]) -> Arc<SinkTable> {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
            nullable: name != "id",
            decimal: None,
        };
        let mut cols = vec![col("id", ColumnType::Int)];
        cols.extend(columns.iter().map(|c| col(c, ColumnType::Text)));
        Arc::new(SinkTable {
            name: "t".into(),
            columns: cols,
            key: vec![0],
        })
    }

    fn upsert(t: &Arc<SinkTable>, partition: i32, offset: i64, values: &[&str]) -> EventWrites {
        write(t, partition, offset, offset, values)
    }

    fn write(
        t: &Arc<SinkTable>,
        partition: i32,
        offset: i64,
        id: i64,
        values: &[&str],
    ) -> EventWrites {
        let id = Value::Int(id);
        EventWrites {
            record: RawRecord {
                id: RecordId {
                    topic: "topic".into(),
                    partition,
                    offset,
                },
                key: None,
                value: Some(String::new()),
                headers: Vec::new(),
            },
            plugins: None,
            writes: vec![SinkWrite::Upsert {
                table: t.clone(),
                values: std::iter::once(id)
                    .chain(values.iter().map(|v| Value::Text(v.to_string())))
                    .collect(),
            }],
        }
    }

    fn batch(events: Vec<EventWrites>) -> SinkBatch {
        let mut next: HashMap<i32, i64> = HashMap::new();
        for ev in &events {
            let n = next.entry(ev.record.id.partition).or_insert(0);
            *n = (*n).max(ev.record.id.offset + 1);
        }
        SinkBatch {
            records: events.len() as u64,
            offsets: next
                .into_iter()
                .map(|(p, n)| ("topic".into(), p, n))
                .collect(),
            events,
            ..Default::default()
        }
    }

    async fn open(dir: &tempfile::TempDir) -> SqlSink {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        SqlSink::open(&url, "test", "p").await.unwrap()
    }

    async fn rows(sink: &mut SqlSink) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT id, v FROM t ORDER BY id")
            .fetch_all(&mut sink.conn)
            .await
            .unwrap()
    }

    /// A host that lost a partition in a rebalance while a batch was in
    /// flight commits it after the new owner: only what the new owner has
    /// not committed is applied, and the offset never goes back.
    #[tokio::test]
    async fn records_another_consumer_committed_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut owner, mut old) = (open(&dir).await, open(&dir).await);
        let t = table(&["v"]);
        let r = owner
            .commit(batch((0..10).map(|o| upsert(&t, 0, o, &["new"])).collect()))
            .await
            .unwrap();
        assert_eq!((r.writes, r.stale), (10, 0));
        let r = old
            .commit(batch((5..15).map(|o| upsert(&t, 0, o, &["old"])).collect()))
            .await
            .unwrap();
        assert_eq!((r.writes, r.stale), (5, 5));
        assert_eq!(r.offsets, vec![("topic".into(), 0, 15)]);
        let r = owner
            .commit(batch((3..8).map(|o| upsert(&t, 0, o, &["late"])).collect()))
            .await
            .unwrap();
        assert_eq!((r.writes, r.stale), (0, 5));
        assert_eq!(r.offsets, vec![("topic".into(), 0, 15)], "never backwards");
        let want: Vec<(i64, String)> = (0..15)
            .map(|i| (i, if i < 10 { "new" } else { "old" }.to_string()))
            .collect();
        assert_eq!(rows(&mut owner).await, want);
        assert_eq!(
            owner.load_offsets().await.unwrap(),
            HashMap::from([(("topic".to_string(), 0), 15)])
        );
    }

    /// Writes to one table under two declarations (a column added
    /// mid-batch) still reach each row in batch order.
    #[tokio::test]
    async fn one_table_under_two_declarations_keeps_batch_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = open(&dir).await;
        let (v1, v2) = (table(&["v"]), table(&["v", "extra"]));
        let r = sink
            .commit(batch(vec![
                write(&v2, 1, 0, 1, &["x", "e"]),
                write(&v1, 0, 0, 2, &["old"]),
                write(&v2, 0, 1, 2, &["new", "e"]),
                write(&v1, 2, 0, 3, &["only"]),
            ]))
            .await
            .unwrap();
        assert_eq!(r.writes, 4);
        let want = [(1, "x"), (2, "new"), (3, "only")].map(|(i, v)| (i, v.to_string()));
        assert_eq!(rows(&mut sink).await, want.to_vec());
    }
}
