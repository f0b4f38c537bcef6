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
use crate::model::{ColumnType, DeadLetter, SinkTable, SinkWrite, Stage, Value};

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
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    (r.get::<String, _>(0), r.get::<i32, _>(1)),
                    r.get::<i64, _>(2),
                )
            })
            .collect())
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
        let mut broken: HashMap<*const SinkTable, String> = HashMap::new();
        for ev in &batch.events {
            for w in &ev.writes {
                let (table, values) = match w {
                    SinkWrite::Upsert { table, values } => (table, Some(values.as_slice())),
                    SinkWrite::Delete { table, .. } => (table, None),
                };
                let ptr = Arc::as_ptr(table);
                if broken.contains_key(&ptr) {
                    continue;
                }
                if let Err(e) = ensure_table(&mut tx, &mut self.tables, table, values).await {
                    broken.insert(ptr, e);
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
                let table = match w {
                    SinkWrite::Upsert { table, .. } | SinkWrite::Delete { table, .. } => table,
                };
                if let Some(e) = broken.get(&Arc::as_ptr(table)) {
                    failed = Some(e.clone());
                    break;
                }
                let stmts = self
                    .sql
                    .entry(table.clone())
                    .or_insert_with(|| statements(table))
                    .clone();
                let res = match w {
                    SinkWrite::Upsert { values, .. } => {
                        bind_all(sqlx::query(&stmts.upsert), values)
                            .execute(&mut *tx)
                            .await
                    }
                    SinkWrite::Delete { key, .. } => {
                        bind_all(sqlx::query(&stmts.delete), key)
                            .execute(&mut *tx)
                            .await
                    }
                };
                if let Err(e) = res {
                    failed = Some(format!("writing to `{}`: {e}", table.name));
                    break;
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
    first_row: Option<&[Value]>,
) -> Result<(), String> {
    if table.key.is_empty() {
        return Err(format!(
            "sink table `{}` has no primary key; upserts need one",
            table.name
        ));
    }
    if table.name.starts_with("sluice_") {
        return Err(format!(
            "sink table name `{}` is reserved for Sluice's bookkeeping",
            table.name
        ));
    }
    let key_names: Vec<String> = table
        .key
        .iter()
        .map(|&k| table.columns[k as usize].name.clone())
        .collect();
    if !known.contains_key(&table.name) {
        if let Some(state) = read_table(conn, &table.name)
            .await
            .map_err(|e| e.to_string())?
        {
            known.insert(table.name.clone(), state);
        }
    }
    let sql_err = |e: sqlx::Error| format!("sink table `{}`: {e}", table.name);
    match known.get_mut(&table.name) {
        Some(state) => {
            if state.key != key_names {
                return Err(format!(
                    "sink table `{}` has primary key ({}) but the plugin declares ({})",
                    table.name,
                    state.key.join(", "),
                    key_names.join(", ")
                ));
            }
            for (i, c) in table.columns.iter().enumerate() {
                if state.columns.iter().any(|n| n == &c.name) {
                    continue;
                }
                let ty = column_type(c.ty, first_row.and_then(|r| r.get(i)));
                sqlx::query(&format!(
                    "ALTER TABLE {} ADD COLUMN {} {}",
                    quote(&table.name),
                    quote(&c.name),
                    decl_type(ty)
                ))
                .execute(&mut *conn)
                .await
                .map_err(sql_err)?;
                catalog(conn, &table.name, &c.name, ty)
                    .await
                    .map_err(sql_err)?;
                tracing::info!(table = %table.name, column = %c.name, "sink column added");
                state.columns.push(c.name.clone());
            }
            Ok(())
        }
        None => {
            let mut defs = Vec::new();
            for (i, c) in table.columns.iter().enumerate() {
                let ty = column_type(c.ty, first_row.and_then(|r| r.get(i)));
                let not_null = if table.key.contains(&(i as u32)) {
                    " NOT NULL"
                } else {
                    ""
                };
                defs.push(format!("{} {}{not_null}", quote(&c.name), decl_type(ty)));
                catalog(conn, &table.name, &c.name, ty)
                    .await
                    .map_err(sql_err)?;
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
            sqlx::query(&ddl)
                .execute(&mut *conn)
                .await
                .map_err(sql_err)?;
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

/// The declared type, or the first row's value type when the source had none.
fn column_type(declared: ColumnType, first: Option<&Value>) -> ColumnType {
    match (declared, first) {
        (ColumnType::Unknown, Some(v)) => v.natural_type(),
        (t, _) => t,
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
