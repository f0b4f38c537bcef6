//! SQL sinks: SQLite (the embedded default), PostgreSQL and MySQL/MariaDB,
//! through one commit routine. Each batch commits in one transaction: the
//! rows, the dead letters, the decoder's facts and the source offsets
//! together, so a re-run or a crash at any instant never applies an event
//! twice or loses one.
//!
//! Writes are consolidated per table and key (the last write wins) and
//! written in bulk: PostgreSQL binds one array per column (`bulk`), the
//! others use multi-row upserts and deletes. If one of them meets a
//! row-level error (constraint, value out of range…), the
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
//!
//! This file holds the sink and its commit; its parts live beside it:
//! `offsets` (claiming partitions, the fence), `ddl` (sink tables),
//! `rows` (consolidated and event-by-event writes), `bulk` (PostgreSQL's
//! array-bound statements for rows and state), `outbox` (`sluice_dlq` for
//! the DLQ topic), `state` (aggregations' state), `keyed` (plugins with
//! keyed state, run in the transaction), `join` and `joins` (joins' state
//! and their part of the commit), `derived` (writing what keyed plugins
//! and joins made in the transaction), `turn` (whose state is cached).

mod bulk;
mod ddl;
mod derived;
mod join;
mod joins;
mod keyed;
mod lookups;
mod offsets;
mod outbox;
mod rows;
mod state;
mod state_ids;
mod tables;
mod turn;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::AnyConnection;
use sqlx::{Connection as _, Row as _};

use super::ddl_lock;
use super::dialect::{power_of_two_at_most, Dialect};
use super::{EventWrites, SinkBatch, SinkReport};
use ddl::TableState;
use offsets::{claim_offsets, drop_committed, write_offsets};
pub use outbox::StoredDeadLetter;
use rows::{bound, write_event, write_grouped, TableSql};

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
    /// Aggregations' state, cached between commits.
    states: state::OperatorStates,
    /// Joins' state, cached between commits.
    joins: joins::JoinStates,
    /// The pipeline's turn for stateful commits.
    turn: turn::StateTurn,
    /// Instances of plugins with keyed state.
    keyed: keyed::KeyedPlugins,
    /// Tables plugins look up, and the instances of those plugins.
    lookups: lookups::LookupTables,
    /// The stored tables joins and lookups read.
    store: tables::StoredTables,
    /// Tables keyed plugins or joins wrote that the sink refused, and why.
    refused: HashMap<SinkTable, String>,
    /// Write only the last change per key of a batch (`rows::write_grouped`).
    consolidate: bool,
    /// PostgreSQL page fill of the plugins' tables made from now on.
    table_fillfactor: Option<u8>,
}

/// Keyed plugins, joins or the aggregations joins feed wrote tables the
/// sink has not prepared: the attempt is rolled back, the tables made (DDL
/// runs outside transactions) and the batch tried again.
#[derive(Debug, thiserror::Error)]
#[error("the transaction writes {} table(s) not prepared yet", .0.len())]
struct NeedTables(Vec<SinkTable>);

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
                // Operator state and wide tables outgrow the default 2 MB
                // page cache; statement journals stay off the disk.
                "PRAGMA cache_size = -65536",
                "PRAGMA temp_store = MEMORY",
            ],
            Dialect::Postgres => &[
                "SET TIME ZONE 'UTC'",
                // Each statement is planned with its values: a generic plan,
                // cached while a state table was still small, keeps filtering
                // keys row by row instead of looking them up in the index once
                // the table has grown (200 ms per state read at 15k rows).
                "SET plan_cache_mode = force_custom_plan",
                // Every statement of this session reads by key, but while a
                // state table grows faster than autovacuum analyzes it, the
                // planner can take a key lookup by an array of keys for a
                // scan of the whole table (measured: 33 s for 5000 keys over
                // 140k rows, 42 ms by the index). Index paths only.
                "SET enable_seqscan = off",
            ],
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
        ddl_lock::locked_ddl_then(&mut conn, dialect, dialect.meta_ddl(), async |c| {
            state_ids::migrate(c, dialect).await
        })
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
            states: state::OperatorStates::default(),
            joins: joins::JoinStates::default(),
            turn: turn::StateTurn::default(),
            keyed: keyed::KeyedPlugins::default(),
            lookups: lookups::LookupTables::default(),
            store: tables::StoredTables::default(),
            refused: HashMap::new(),
            consolidate: true,
            table_fillfactor: None,
        })
    }

    /// Whether a batch writes only the last change of each key (the default)
    /// or every change in order (for triggers on the sink tables that must
    /// see each change; slower).
    pub fn set_consolidate(&mut self, on: bool) {
        self.consolidate = on;
    }

    /// PostgreSQL: how full new rows fill the pages of the plugins' tables
    /// made from now on (`[tables] fillfactor`). False: the sink is not
    /// PostgreSQL, and nothing changes.
    pub fn set_table_fillfactor(&mut self, fillfactor: u8) -> bool {
        let applies = matches!(self.dialect, Dialect::Postgres);
        if applies {
            self.table_fillfactor = Some(fillfactor);
        }
        applies
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
            signals,
            ..
        } = batch;
        let mut report = SinkReport::default();
        let mut attempt = 0;
        let mut table_rounds = 0;
        let mut stale_rounds = 0;
        loop {
            let result = self
                .try_commit(
                    &mut events,
                    &mut dead,
                    BatchFacts {
                        offsets: &offsets,
                        learned: &learned,
                        signals: &signals,
                    },
                    &broken,
                    &mut report,
                )
                .await;
            let need_tables = result
                .as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<NeedTables>())
                .map(|n| n.0.clone());
            match result {
                Err(_) if table_rounds < 3 && need_tables.is_some() => {
                    // the attempt applied state in memory and rolled back
                    self.forget_cached_state();
                    table_rounds += 1;
                    for table in need_tables.unwrap_or_default() {
                        match self.ensure_table(&table).await {
                            Ok(()) => {}
                            Err(SinkError::Rejected(why)) => {
                                tracing::warn!(table = %table.name, "sink table refused: {why}");
                                self.refused.insert(table, why);
                            }
                            Err(SinkError::Database(e)) => {
                                return Err(anyhow::Error::new(e)
                                    .context(format!("preparing sink table `{}`", table.name)))
                            }
                        }
                    }
                }
                // An operator's cache took a state row for new that the
                // sink held: with the caches dropped, the retry reads it.
                Err(e)
                    if stale_rounds < 2 && e.chain().any(|c| c.is::<state::CacheDisagrees>()) =>
                {
                    tracing::warn!("{e:#}; trying the batch again with the state read afresh");
                    self.forget_cached_state();
                    stale_rounds += 1;
                }
                // A deadlock with another host of the pipeline (two hosts
                // writing the same rows in different orders) or a lock wait
                // that timed out: the database rolled the transaction back.
                Err(e) if attempt < 5 && self.transient(&e) => {
                    self.forget_cached_state();
                    attempt += 1;
                    tracing::warn!(
                        attempt,
                        "sink transaction aborted by the database ({e:#}); trying the batch again"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
                }
                Err(e) => {
                    self.forget_cached_state();
                    return Err(e);
                }
                Ok(()) => {
                    self.turn.committed();
                    return Ok(report);
                }
            }
        }
    }

    /// After a failed attempt: what operators applied in memory is not in
    /// the database, and the state turn this host took did not commit.
    fn forget_cached_state(&mut self) {
        self.states.invalidate();
        self.joins.invalidate();
        self.store.invalidate();
        self.turn.invalidate();
    }

    /// (aggregation or join, state rows, bytes) cached by this sink.
    pub fn state_sizes(&self) -> Vec<(String, usize, usize)> {
        let mut sizes = self.states.sizes();
        sizes.extend(self.joins.sizes());
        sizes.extend(self.store.sizes());
        sizes
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
        facts: BatchFacts<'_>,
        broken: &HashMap<TableId, String>,
        report: &mut SinkReport,
    ) -> anyhow::Result<()> {
        let BatchFacts {
            offsets,
            learned,
            signals,
        } = facts;
        let d = self.dialect;
        report.writes = 0;
        report.duplicates = 0;
        report.late_applied = 0;
        report.late_dead_lettered = 0;
        report.row_by_row = false;
        report.offsets.clear();
        let SqlSink {
            conn,
            sql,
            meta,
            pipeline,
            states,
            joins,
            turn,
            keyed,
            lookups,
            store,
            refused,
            tables,
            consolidate,
            ..
        } = self;
        let consolidate = *consolidate;
        let mut tx = conn.begin().await.context("BEGIN")?;
        let mut stored = claim_offsets(&mut tx, d, meta, pipeline, offsets).await?;
        report.stale += drop_committed(&stored, events, dead);
        // Rebuilt only when a write is refused (a second buffer of the
        // batch's events otherwise).
        if events.iter().any(|ev| precheck(d, ev, broken).is_some()) {
            for ev in std::mem::take(events) {
                match precheck(d, &ev, broken) {
                    None => events.push(ev),
                    Some(reason) => reject(dead, report, ev, reason),
                }
            }
        }
        let writes = events
            .iter()
            .flat_map(|ev| ev.writes.iter().map(|w| (w, ev.created)))
            .collect();
        match write_grouped(&mut tx, d, sql, consolidate, writes).await {
            Ok(n) => report.writes += n,
            Err(e) if d.retry_event_by_event(&e) => {
                tracing::debug!("a bulk write failed ({e}); writing the batch event by event");
                report.row_by_row = true;
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

        // Keyed plugins, then joins: over the events that commit, before
        // aggregations (which joins may feed). Joins and aggregations share
        // the pipeline's state turn: taken once, before anything reads
        // state — on MySQL/MariaDB the transaction's first plain read fixes
        // its REPEATABLE READ snapshot, which must not predate the turn.
        let idle = signals
            .iter()
            .any(|s| matches!(s, crate::source::SourceSignal::Idle { .. }));
        let joined = events.iter().any(|ev| !ev.joins.is_empty()) || (idle && joins.any_interval());
        let aggregated = events.iter().any(|ev| !ev.ops.is_empty()) || (idle && states.any());
        let looked_up = events
            .iter()
            .any(|ev| !ev.lookups.is_empty() || !ev.tables.is_empty());
        if (joined || aggregated || looked_up) && !turn.take(&mut tx, d, pipeline).await? {
            states.invalidate();
            joins.invalidate();
            store.invalidate();
        }
        let mut derived = derived::DerivedOutputs::default();
        if events.iter().any(|ev| !ev.keyed.is_empty()) {
            derived.extend(keyed.apply(&mut tx, d, pipeline, events).await?);
        }
        // Joins read the stored tables as the batch found them, then the
        // table pass applies the batch's changes (plugins with lookups run
        // between them).
        let mut fed = Vec::new();
        if joined {
            let run = joins
                .apply(&mut tx, d, pipeline, events, signals, store)
                .await?;
            derived.extend(run.outputs);
            fed = run.feeds;
            report.late_applied += run.late_applied;
            report.late_dead_lettered += run.late_dead_lettered;
        }
        if looked_up {
            derived.extend(lookups.apply(&mut tx, d, pipeline, events, store).await?);
        }
        let fed_tables = fed.iter().map(|(_, i)| &*i.output);
        let missing = derived::unprepared(&derived, fed_tables, refused, tables);
        if !missing.is_empty() {
            tx.rollback().await.context("ROLLBACK")?;
            return Err(NeedTables(missing).into());
        }
        let derived_out =
            derived::write_outputs(&mut tx, d, sql, consolidate, refused, derived).await?;
        report.writes += derived_out.writes;
        report.duplicates += derived_out.duplicates;
        report.row_by_row |= derived_out.row_by_row;
        report.dlq_plugin = derived_out.refused_at(Stage::Plugin);

        // Aggregations last: they see exactly the events that commit.
        let mut op_dead = Vec::new();
        if aggregated || !fed.is_empty() {
            let ops = states
                .apply(
                    &mut tx,
                    d,
                    pipeline,
                    state::BatchInputs { events, fed: &fed },
                    signals,
                    &mut op_dead,
                )
                .await?;
            report.late_applied += ops.late_applied;
            report.late_dead_lettered += ops.late_dead_lettered;
            report.writes += write_grouped(
                &mut tx,
                d,
                sql,
                consolidate,
                ops.outputs.iter().map(|(w, new)| (w, *new)).collect(),
            )
            .await
            .context("writing aggregation results")?;
            report.duplicates += ops.duplicates;
        }
        report.dlq_aggregate = op_dead.len() as u64 + derived_out.refused_at(Stage::Aggregate);
        let all_dead = dead.iter().chain(&op_dead).chain(&derived_out.dead);
        outbox::write_dead_letters(&mut tx, &meta.dlq, pipeline, all_dead).await?;
        report.offsets = write_offsets(&mut tx, d, meta.now, pipeline, offsets, &stored).await?;
        write_learned(&mut tx, &meta.learned, pipeline, learned).await?;
        tx.commit().await.context("COMMIT")?;
        report.dlq_sink += derived_out.sink_rejects;
        Ok(())
    }
}

/// Decoder facts the batch taught, committed with its offsets.
async fn write_learned(
    conn: &mut AnyConnection,
    sql: &str,
    pipeline: &str,
    learned: &[Learned],
) -> anyhow::Result<()> {
    for fact in learned {
        let (topic, kind, name, value) = match fact {
            Learned::TextColumn { topic, column } => {
                (topic, "text_column", column.as_str(), String::new())
            }
            Learned::Key { topic, columns } => (topic, "key", "", serde_json::to_string(columns)?),
        };
        sqlx::query(sql)
            .bind(pipeline)
            .bind(topic.as_str())
            .bind(kind)
            .bind(name)
            .bind(value)
            .execute(&mut *conn)
            .await
            .context("writing sluice_decoder_state")?;
    }
    Ok(())
}

/// A dead letter for writes the sink cannot take.
fn sink_dead_letter(ev: EventWrites, reason: String) -> DeadLetter {
    tracing::warn!(topic = %ev.record.id.topic, partition = ev.record.id.partition, offset = ev.record.id.offset, "sink rejected event: {reason}");
    DeadLetter {
        record: ev.record,
        stage: Stage::Sink,
        plugin: ev.plugins,
        reason,
    }
}

/// What a batch commits besides its events, unchanged across attempts.
#[derive(Clone, Copy)]
struct BatchFacts<'a> {
    offsets: &'a [(Arc<str>, i32, i64)],
    learned: &'a [Learned],
    signals: &'a [crate::source::SourceSignal],
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

/// One declaration of a sink table within a batch (its address: the
/// batch's writes share their declarations), as a plain number so the
/// commit future stays `Send`.
type TableId = usize;

fn table_id(table: &Arc<SinkTable>) -> TableId {
    Arc::as_ptr(table) as TableId
}

/// Why an event cannot be written, found without asking the database.
fn precheck(d: Dialect, ev: &EventWrites, broken: &HashMap<TableId, String>) -> Option<String> {
    if let Some(why) = ev.ops.iter().find_map(|i| broken.get(&table_id(&i.output))) {
        return Some(why.clone());
    }
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
    report.dlq_sink += 1;
    dead.push(sink_dead_letter(ev, reason));
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
            rewritten: false,
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
                headers: Default::default(),
                schema: None,
            },
            plugins: None,
            ops: Vec::new(),
            keyed: Vec::new(),
            joins: Vec::new(),
            lookups: Vec::new(),
            tables: Vec::new(),
            created: false,
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

    /// A sink whose state an earlier version stored by name (the
    /// `sluice_state` table) is moved to numbered rows when it opens: every
    /// row readable as before, through the state reads and the view, and
    /// written on from there; opening again moves nothing twice.
    #[tokio::test]
    async fn state_stored_by_name_is_moved_to_numbered_rows_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
        sqlx::any::install_default_drivers();
        let mut old = AnyConnection::connect(&url).await.unwrap();
        for sql in [
            "CREATE TABLE sluice_state (
                pipeline TEXT NOT NULL, operator TEXT NOT NULL, kind TEXT NOT NULL, k BLOB NOT NULL,
                v BLOB NOT NULL, expires INTEGER, PRIMARY KEY (pipeline, operator, kind, k)) WITHOUT ROWID",
            "INSERT INTO sluice_state VALUES
                ('p', 'a/out', 'r', X'01', X'0a', NULL), ('p', 'a/out', 'r', X'02', X'0b', NULL),
                ('p', 'a/out', 'g', X'01', X'0c', 7), ('q', 'a/out', 'r', X'01', X'0d', NULL)",
        ] {
            sqlx::query(sql).execute(&mut old).await.unwrap();
        }
        drop(old);
        let everything = "SELECT pipeline, operator, kind, hex(k), hex(v), expires FROM sluice_state ORDER BY 1, 2, 3, 4";
        let want: Vec<(String, String, String, String, String, Option<i64>)> = [
            ("p", "a/out", "g", "01", "0C", Some(7)),
            ("p", "a/out", "r", "01", "0A", None),
            ("p", "a/out", "r", "02", "0B", None),
            ("q", "a/out", "r", "01", "0D", None),
        ]
        .map(|(p, o, k, key, v, e)| (p.into(), o.into(), k.into(), key.into(), v.into(), e))
        .to_vec();
        for _ in 0..2 {
            let mut sink = open(&dir).await;
            let got: Vec<(String, String, String, String, String, Option<i64>)> =
                sqlx::query_as(everything)
                    .fetch_all(&mut sink.conn)
                    .await
                    .unwrap();
            assert_eq!(got, want);
            let kind: String =
                sqlx::query_scalar("SELECT type FROM sqlite_master WHERE name = 'sluice_state'")
                    .fetch_one(&mut sink.conn)
                    .await
                    .unwrap();
            assert_eq!(kind, "view");
            let read = state::read_state(
                &mut sink.conn,
                Dialect::Sqlite,
                "p",
                "a/out",
                "r",
                &[vec![1], vec![3]],
            )
            .await
            .unwrap();
            assert_eq!(read, vec![(vec![1], Some(vec![0x0a])), (vec![3], None)]);
            let expired =
                state::read_expired(&mut sink.conn, Dialect::Sqlite, "p", "a/out", "g", 7)
                    .await
                    .unwrap();
            assert_eq!(expired, vec![(vec![1], vec![0x0c])]);
        }
        // Written on: an upsert of a new kind, a delete of an old row.
        let mut sink = open(&dir).await;
        let writes = [
            crate::operators::aggregate::StateWrite {
                kind: "w",
                key: vec![9],
                value: Some(vec![0x0e]),
                expires: None,
                fresh: false,
            },
            crate::operators::aggregate::StateWrite {
                kind: "r",
                key: vec![2],
                value: None,
                expires: None,
                fresh: false,
            },
        ];
        state::write_state(&mut sink.conn, Dialect::Sqlite, "p", "a/out", &writes)
            .await
            .unwrap();
        let got: Vec<(String, String)> = sqlx::query_as(
            "SELECT kind, hex(k) FROM sluice_state WHERE pipeline = 'p' ORDER BY 1, 2",
        )
        .fetch_all(&mut sink.conn)
        .await
        .unwrap();
        let want = [("g", "01"), ("r", "01"), ("w", "09")].map(|(a, b)| (a.into(), b.into()));
        assert_eq!(got, want.to_vec());
    }
}
