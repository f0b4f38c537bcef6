//! SQLite sink (the embedded default). Each batch commits in one transaction:
//! the rows, the dead letters and the source offsets together, so a re-run or a
//! crash at any instant never applies an event twice or loses one.
//!
//! Tables are created from the plugin's declared sink table (and the first
//! row's values for columns of unknown type); new columns are added. Values are
//! always bound, identifiers always quoted.
//!
//! Storage of logical types (SQLite has few): decimals as exact text,
//! instants as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, local date-times without the `Z`,
//! dates as `YYYY-MM-DD`, times as `HH:MM:SS.ffffff`, JSON as text, booleans as
//! 0/1. `sluice_columns` records each column's logical type.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Row as _, SqliteConnection};

use super::{SinkBatch, SinkReport};
use crate::decode::temporal;
use crate::model::{ColumnType, DeadLetter, Learned, SinkTable, SinkWrite, Stage, Value};

/// Why a table or a row cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The data cannot go into this sink (bad key, constraint, type): the
    /// event is dead-lettered and the pipeline goes on.
    #[error("{0}")]
    Rejected(String),
    /// The sink itself failed (I/O, full disk, lock): the batch rolls back
    /// and the run stops; nothing is committed, so a restart re-reads it.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// SQLite primary result codes that concern one row's data: TOOBIG,
/// CONSTRAINT, MISMATCH, RANGE. Everything else is the database's own trouble.
fn is_row_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 18 | 19 | 20 | 25)),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

fn classify(e: sqlx::Error, context: impl FnOnce() -> String) -> SinkError {
    if is_row_error(&e) {
        SinkError::Rejected(format!("{}: {e}", context()))
    } else {
        SinkError::Database(e)
    }
}

/// A value SQLite cannot hold faithfully.
fn unstorable(values: &[Value]) -> Option<String> {
    values.iter().find_map(|v| match v {
        Value::Float(f) if f.is_nan() => {
            Some("NaN cannot be stored in SQLite (it would become NULL)".to_string())
        }
        _ => None,
    })
}

/// An open SQLite sink for one pipeline.
pub struct SqliteSink {
    conn: SqliteConnection,
    pipeline: String,
    tables: HashMap<String, TableState>,
    sql: HashMap<Arc<SinkTable>, Statements>,
}

/// What the sink knows of an existing table.
#[derive(Debug, Clone)]
struct TableState {
    columns: Vec<String>,
    key: Vec<String>,
}

#[derive(Clone)]
struct Statements {
    upsert: Arc<str>,
    delete: Arc<str>,
}

pub fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn decl_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Unknown => "",
        ColumnType::Boolean | ColumnType::Int => "INTEGER",
        ColumnType::Float => "REAL",
        ColumnType::Bytes => "BLOB",
        ColumnType::Decimal
        | ColumnType::Text
        | ColumnType::Timestamp
        | ColumnType::LocalTimestamp
        | ColumnType::Date
        | ColumnType::Time
        | ColumnType::Json => "TEXT",
    }
}

const META: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS sluice_offsets (
        pipeline TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
        next_offset INTEGER NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (pipeline, topic, partition))",
    "CREATE TABLE IF NOT EXISTS sluice_dlq (
        id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL,
        topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
        key TEXT, value TEXT, stage TEXT NOT NULL, plugin TEXT, reason TEXT NOT NULL,
        failed_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sluice_decoder_state (
        pipeline TEXT NOT NULL, topic TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
        value TEXT NOT NULL, PRIMARY KEY (pipeline, topic, kind, name))",
    "CREATE TABLE IF NOT EXISTS sluice_columns (
        table_name TEXT NOT NULL, column_name TEXT NOT NULL, logical_type TEXT NOT NULL,
        PRIMARY KEY (table_name, column_name))",
];

impl SqliteSink {
    /// Open (creating if needed) the database and the bookkeeping tables.
    pub async fn open(url: &str, pipeline: &str) -> anyhow::Result<SqliteSink> {
        let opts = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("sink URL {url}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let mut conn = SqliteConnection::connect_with(&opts)
            .await
            .with_context(|| format!("opening SQLite sink {url}"))?;
        for ddl in META {
            sqlx::query(ddl).execute(&mut conn).await?;
        }
        Ok(SqliteSink {
            conn,
            pipeline: pipeline.to_string(),
            tables: HashMap::new(),
            sql: HashMap::new(),
        })
    }

    /// The checkpoint: next offset per (topic, partition) for this pipeline.
    pub async fn load_offsets(&mut self) -> anyhow::Result<HashMap<(String, i32), i64>> {
        let rows = sqlx::query(
            "SELECT topic, partition, next_offset FROM sluice_offsets WHERE pipeline = ?",
        )
        .bind(&self.pipeline)
        .fetch_all(&mut self.conn)
        .await?;
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
        let rows = sqlx::query(
            "SELECT topic, kind, name, value FROM sluice_decoder_state WHERE pipeline = ?",
        )
        .bind(&self.pipeline)
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (topic, kind, name, value): (String, String, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
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

    /// Row counts of the user tables, for the exit summary.
    pub async fn table_counts(&mut self) -> anyhow::Result<Vec<(String, i64)>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(&mut self.conn)
        .await?;
        let mut out = Vec::new();
        for n in names {
            let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", quote(&n)))
                .fetch_one(&mut self.conn)
                .await?;
            out.push((n, count));
        }
        Ok(out)
    }

    /// Apply a batch atomically: writes, dead letters, offsets.
    pub async fn commit(&mut self, batch: SinkBatch) -> anyhow::Result<SinkReport> {
        let mut report = SinkReport::default();
        let mut dead: Vec<DeadLetter> = batch.dead;
        let mut tx = self.conn.begin().await.context("BEGIN")?;

        // Tables first, outside any per-event savepoint, so the cache stays true.
        // A table the data cannot go into rejects its events; a failing
        // database fails the batch (rolled back when `tx` drops).
        let mut broken: HashMap<*const SinkTable, String> = HashMap::new();
        let mut checked: std::collections::HashSet<*const SinkTable> = Default::default();
        for ev in &batch.events {
            for w in &ev.writes {
                let table = w.table();
                let ptr = Arc::as_ptr(table);
                if !checked.insert(ptr) {
                    continue;
                }
                match ensure_table(&mut tx, &mut self.tables, table).await {
                    Ok(()) => {}
                    Err(SinkError::Rejected(why)) => {
                        broken.insert(ptr, why);
                    }
                    Err(SinkError::Database(e)) => {
                        return Err(anyhow::Error::new(e)
                            .context(format!("preparing sink table `{}`", table.name)))
                    }
                }
            }
        }

        for ev in batch.events {
            let multi = ev.writes.len() > 1;
            if multi {
                sqlx::query("SAVEPOINT ev").execute(&mut *tx).await?;
            }
            let mut failed: Option<String> = None;
            for w in &ev.writes {
                let table = w.table();
                if let Some(e) = broken.get(&Arc::as_ptr(table)) {
                    failed = Some(e.clone());
                    break;
                }
                let stmts = self
                    .sql
                    .entry(table.clone())
                    .or_insert_with(|| statements(table))
                    .clone();
                let values = match w {
                    SinkWrite::Upsert { values, .. } => values,
                    SinkWrite::Delete { key, .. } => key,
                };
                if let Some(why) = unstorable(values) {
                    failed = Some(format!("writing to `{}`: {why}", table.name));
                    break;
                }
                let sql = match w {
                    SinkWrite::Upsert { .. } => &stmts.upsert,
                    SinkWrite::Delete { .. } => &stmts.delete,
                };
                if let Err(e) = bind_all(sqlx::query(sql), values).execute(&mut *tx).await {
                    match classify(e, || format!("writing to `{}`", table.name)) {
                        SinkError::Rejected(why) => {
                            failed = Some(why);
                            break;
                        }
                        SinkError::Database(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("writing to sink table `{}`", table.name)))
                        }
                    }
                }
            }
            match failed {
                None => {
                    report.writes += ev.writes.len() as u64;
                    if multi {
                        sqlx::query("RELEASE ev").execute(&mut *tx).await?;
                    }
                }
                Some(reason) => {
                    if multi {
                        sqlx::query("ROLLBACK TO ev").execute(&mut *tx).await?;
                        sqlx::query("RELEASE ev").execute(&mut *tx).await?;
                    }
                    tracing::warn!(topic = %ev.record.id.topic, partition = ev.record.id.partition, offset = ev.record.id.offset, "sink rejected event: {reason}");
                    report.dlq_sink += 1;
                    dead.push(DeadLetter {
                        record: ev.record,
                        stage: Stage::Sink,
                        plugin: ev.plugins,
                        reason,
                    });
                }
            }
        }

        let now = chrono::Utc::now().to_rfc3339();
        for d in &dead {
            sqlx::query(
                "INSERT INTO sluice_dlq (pipeline, topic, partition, offset, key, value, stage, plugin, reason, failed_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&self.pipeline)
            .bind(&*d.record.id.topic)
            .bind(d.record.id.partition)
            .bind(d.record.id.offset)
            .bind(d.record.key.as_deref())
            .bind(d.record.value.as_deref())
            .bind(d.stage.as_str())
            .bind(d.plugin.as_deref())
            .bind(&d.reason)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        for (topic, partition, next) in &batch.offsets {
            sqlx::query(
                "INSERT INTO sluice_offsets (pipeline, topic, partition, next_offset, updated_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (pipeline, topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = excluded.updated_at",
            )
            .bind(&self.pipeline)
            .bind(&**topic)
            .bind(*partition)
            .bind(*next)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        for fact in &batch.learned {
            let (topic, kind, name, value) = match fact {
                Learned::TextColumn { topic, column } => {
                    (topic, "text_column", column.as_str(), String::new())
                }
                Learned::Key { topic, columns } => {
                    (topic, "key", "", serde_json::to_string(columns)?)
                }
            };
            sqlx::query(
                "INSERT INTO sluice_decoder_state (pipeline, topic, kind, name, value) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (pipeline, topic, kind, name) DO UPDATE SET value = excluded.value",
            )
            .bind(&self.pipeline)
            .bind(topic)
            .bind(kind)
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await.context("COMMIT")?;
        Ok(report)
    }
}

fn statements(t: &SinkTable) -> Statements {
    let cols: Vec<String> = t.columns.iter().map(|c| quote(&c.name)).collect();
    let key: Vec<String> = t
        .key
        .iter()
        .map(|&k| quote(&t.columns[k as usize].name))
        .collect();
    let non_key: Vec<String> = t
        .columns
        .iter()
        .enumerate()
        .filter(|(i, _)| !t.key.contains(&(*i as u32)))
        .map(|(_, c)| format!("{0} = excluded.{0}", quote(&c.name)))
        .collect();
    let table = quote(&t.name);
    let placeholders = vec!["?"; cols.len()].join(", ");
    let upsert = if key.is_empty() {
        format!(
            "INSERT INTO {table} ({}) VALUES ({placeholders})",
            cols.join(", ")
        )
    } else if non_key.is_empty() {
        format!(
            "INSERT INTO {table} ({}) VALUES ({placeholders}) ON CONFLICT ({}) DO NOTHING",
            cols.join(", "),
            key.join(", ")
        )
    } else {
        format!(
            "INSERT INTO {table} ({}) VALUES ({placeholders}) ON CONFLICT ({}) DO UPDATE SET {}",
            cols.join(", "),
            key.join(", "),
            non_key.join(", ")
        )
    };
    let delete = format!(
        "DELETE FROM {table} WHERE {}",
        key.iter()
            .map(|k| format!("{k} = ?"))
            .collect::<Vec<_>>()
            .join(" AND ")
    );
    Statements {
        upsert: upsert.into(),
        delete: delete.into(),
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn bind_all<'q>(mut q: Query<'q>, values: &'q [Value]) -> Query<'q> {
    for v in values {
        q = match v {
            Value::Null => q.bind(None::<String>),
            Value::Boolean(b) => q.bind(*b as i64),
            Value::Int(i) => q.bind(*i),
            Value::Float(f) => q.bind(*f),
            Value::Decimal(s) | Value::Text(s) | Value::Json(s) => q.bind(s.as_str()),
            Value::Bytes(b) => q.bind(b.as_slice()),
            Value::Timestamp(us) => q.bind(temporal::format_timestamp(*us)),
            Value::LocalTimestamp(us) => q.bind(temporal::format_local(*us)),
            Value::Date(d) => q.bind(temporal::format_date(*d)),
            Value::Time(t) => q.bind(temporal::format_time(*t)),
        };
    }
    q
}

/// Create the table or add missing columns; `Err` explains why the table
/// cannot take this plugin's rows (every event writing to it is dead-lettered).
async fn ensure_table(
    conn: &mut SqliteConnection,
    known: &mut HashMap<String, TableState>,
    table: &SinkTable,
) -> Result<(), SinkError> {
    if table.key.is_empty() {
        return Err(SinkError::Rejected(format!(
            "sink table `{}` has no primary key; upserts need one",
            table.name
        )));
    }
    if table.name.starts_with("sluice_") {
        return Err(SinkError::Rejected(format!(
            "sink table name `{}` is reserved for Sluice's bookkeeping",
            table.name
        )));
    }
    let key_names: Vec<String> = table
        .key
        .iter()
        .map(|&k| table.columns[k as usize].name.clone())
        .collect();
    if !known.contains_key(&table.name) {
        if let Some(state) = read_table(conn, &table.name).await? {
            known.insert(table.name.clone(), state);
        }
    }
    match known.get_mut(&table.name) {
        Some(state) => {
            if state.key != key_names {
                return Err(SinkError::Rejected(format!(
                    "sink table `{}` has primary key ({}) but the plugin declares ({})",
                    table.name,
                    state.key.join(", "),
                    key_names.join(", ")
                )));
            }
            for c in &table.columns {
                if state.columns.iter().any(|n| n == &c.name) {
                    continue;
                }
                let ty = c.ty;
                sqlx::query(&format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quote(&table.name),
                    quote(&c.name),
                    decl_type(ty)
                ))
                .execute(&mut *conn)
                .await?;
                catalog(conn, &table.name, &c.name, ty).await?;
                tracing::info!(table = %table.name, column = %c.name, "sink column added");
                state.columns.push(c.name.clone());
            }
            Ok(())
        }
        None => {
            let mut defs = Vec::new();
            for (i, c) in table.columns.iter().enumerate() {
                let ty = c.ty;
                let not_null = if table.key.contains(&(i as u32)) {
                    " NOT NULL"
                } else {
                    ""
                };
                defs.push(format!("{} {}{not_null}", quote(&c.name), decl_type(ty)));
                catalog(conn, &table.name, &c.name, ty).await?;
            }
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))",
                quote(&table.name),
                defs.join(", "),
                key_names
                    .iter()
                    .map(|k| quote(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            sqlx::query(&ddl).execute(&mut *conn).await?;
            tracing::info!(table = %table.name, "sink table created");
            known.insert(
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

async fn catalog(
    conn: &mut SqliteConnection,
    table: &str,
    column: &str,
    ty: ColumnType,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sluice_columns (table_name, column_name, logical_type) VALUES (?, ?, ?)
         ON CONFLICT (table_name, column_name) DO NOTHING",
    )
    .bind(table)
    .bind(column)
    .bind(ty.as_str())
    .execute(conn)
    .await
    .map(|_| ())
}

async fn read_table(
    conn: &mut SqliteConnection,
    name: &str,
) -> Result<Option<TableState>, sqlx::Error> {
    let rows = sqlx::query(&format!("PRAGMA table_info({})", quote(name)))
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
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
    Ok(Some(TableState {
        columns,
        key: key.into_iter().map(|(_, c)| c).collect(),
    }))
}
