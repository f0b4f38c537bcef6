//! Row writes: a batch's writes consolidated per table and key, then
//! written in bulk (PostgreSQL: `bulk.rs`; the others: multi-row upserts and
//! deletes, statements cached per declaration and size), and the
//! event-by-event writes in savepoints when a bulk write meets a row error.

use super::bulk;
use super::*;

/// The values a write binds, each with its column: the whole row for an
/// upsert, the key for a delete. (On the hot path: allocates nothing.)
pub(super) fn bound<'a>(
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
pub(super) fn table_sql<'c>(
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
pub(super) struct TableSql {
    table: Arc<SinkTable>,
    max_rows: usize,
    upserts: HashMap<usize, Arc<str>>,
    deletes: HashMap<usize, Arc<str>>,
    /// PostgreSQL's bulk upsert and delete (`bulk.rs`), made on first use;
    /// `None` inside when a column has no type to make an array of.
    bulk_upsert: Option<Option<Arc<str>>>,
    bulk_delete: Option<Option<Arc<str>>>,
    /// PostgreSQL's bulk insert without `ON CONFLICT` (`write_upserts`).
    bulk_insert: Option<Option<Arc<str>>>,
    /// Commits left before `write_upserts` tries new rows as plain inserts
    /// again, after one of them was not new (re-delivered creates).
    insert_pause: u32,
}

impl TableSql {
    fn new(d: Dialect, table: &Arc<SinkTable>) -> TableSql {
        TableSql {
            table: table.clone(),
            max_rows: d.max_rows(table.columns.len()),
            upserts: HashMap::new(),
            deletes: HashMap::new(),
            bulk_upsert: None,
            bulk_delete: None,
            bulk_insert: None,
            insert_pause: 0,
        }
    }

    /// PostgreSQL's bulk statement of this kind, if the table has one.
    fn bulk(&mut self, upsert: bool) -> Option<Arc<str>> {
        let t = &self.table;
        let slot = if upsert {
            &mut self.bulk_upsert
        } else {
            &mut self.bulk_delete
        };
        slot.get_or_insert_with(|| {
            if upsert {
                bulk::upsert_sql(t)
            } else {
                bulk::delete_sql(t)
            }
            .map(Arc::from)
        })
        .clone()
    }

    /// PostgreSQL's bulk insert of rows taken for new, if the table has one.
    fn bulk_insert(&mut self) -> Option<Arc<str>> {
        let t = &self.table;
        self.bulk_insert
            .get_or_insert_with(|| bulk::insert_sql(t).map(Arc::from))
            .clone()
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

pub(super) fn upsert_sql(d: Dialect, t: &SinkTable, rows: usize) -> String {
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

pub(super) fn delete_sql(d: Dialect, t: &SinkTable, rows: usize) -> String {
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

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub(super) fn bind_value<'q>(
    q: AnyQuery<'q>,
    d: Dialect,
    v: &'q Value,
    col: &Column,
) -> AnyQuery<'q> {
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
pub(super) fn key_bytes(table: &SinkTable, w: &SinkWrite, out: &mut Vec<u8>) {
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

/// The fast path: each table's writes of the batch, consolidated to the
/// last write per key (an upsert carries the whole row, so the last one
/// wins; a delete after an upsert leaves just the delete), then deletes and
/// upserts in bulk: PostgreSQL by `unnest` of one array per column
/// (`bulk.rs`), the others by multi-row statements. Keys are unique after
/// consolidation, so the order of writes no longer matters. A table written
/// under two declarations in one batch (a column added mid-batch, a second
/// plugin) keeps its writes in batch order instead (`write_in_order`), as
/// does every table when `consolidate` is off.
pub(super) async fn write_grouped(
    conn: &mut AnyConnection,
    d: Dialect,
    cache: &mut HashMap<Arc<SinkTable>, TableSql>,
    consolidate: bool,
    writes: Vec<(&SinkWrite, bool)>,
) -> Result<u64, sqlx::Error> {
    let mut order: Vec<Vec<(&SinkWrite, bool)>> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (w, created) in writes {
        let i = *index.entry(w.table().name.as_str()).or_insert_with(|| {
            order.push(Vec::new());
            order.len() - 1
        });
        order[i].push((w, created));
    }
    let mut written = 0;
    for writes in order {
        written += writes.len() as u64;
        let first = writes[0].0.table();
        let one_declaration = writes
            .iter()
            .all(|(w, _)| Arc::ptr_eq(w.table(), first) || **w.table() == **first);
        if !(consolidate && one_declaration) {
            let writes: Vec<&SinkWrite> = writes.iter().map(|(w, _)| *w).collect();
            write_in_order(conn, d, cache, &writes).await?;
            continue;
        }
        let (upserts, deletes): (Vec<_>, Vec<_>) = last_per_key(&writes)
            .into_iter()
            .partition(|(w, _)| is_upsert(w));
        let deletes: Vec<&SinkWrite> = deletes.into_iter().map(|(w, _)| w).collect();
        let ts = table_sql(cache, d, first);
        write_unique(conn, d, ts, &deletes).await?;
        write_upserts(conn, d, ts, upserts).await?;
    }
    Ok(written)
}

/// The last write of each key, in the order of those last writes, each
/// with whether the key's first write in the batch came from a change that
/// created its row (the row is then most likely new to the sink).
fn last_per_key<'w>(writes: &[(&'w SinkWrite, bool)]) -> Vec<(&'w SinkWrite, bool)> {
    let keys: Vec<Vec<u8>> = writes
        .iter()
        .map(|(w, _)| {
            let mut key = Vec::new();
            key_bytes(w.table(), w, &mut key);
            key
        })
        .collect();
    // (first, last) index per key
    let mut ends: HashMap<&[u8], (usize, usize), foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(keys.len(), Default::default());
    for (i, k) in keys.iter().enumerate() {
        ends.entry(&k[..]).or_insert((i, i)).1 = i;
    }
    keys.iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let (first, last) = ends.get(&k[..])?;
            (*last == i).then(|| (writes[i].0, writes[*first].1))
        })
        .collect()
}

/// Consolidated upserts of one table, one per key. PostgreSQL inserts the
/// rows taken for new (their key's first change created its row) without
/// `ON CONFLICT`, which skips the speculative insertion (a third less work
/// for PostgreSQL, measured here), in a savepoint: should one of them not
/// be new after all (creates re-delivered by a restarted connector, a sink
/// that already held the row), the insert is undone and they are upserted
/// with the others, and the table's new rows are upserted for a while.
async fn write_upserts(
    conn: &mut AnyConnection,
    d: Dialect,
    ts: &mut TableSql,
    rows: Vec<(&SinkWrite, bool)>,
) -> Result<(), sqlx::Error> {
    let insert = match d {
        Dialect::Postgres if ts.insert_pause == 0 => ts.bulk_insert(),
        _ => None,
    };
    ts.insert_pause = ts.insert_pause.saturating_sub(1);
    let Some(insert) = insert.filter(|_| rows.iter().any(|(_, new)| *new)) else {
        let rows: Vec<&SinkWrite> = rows.into_iter().map(|(w, _)| w).collect();
        return write_unique(conn, d, ts, &rows).await;
    };
    let (new, known): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(_, new)| *new);
    let new: Vec<&SinkWrite> = new.into_iter().map(|(w, _)| w).collect();
    let mut known: Vec<&SinkWrite> = known.into_iter().map(|(w, _)| w).collect();
    sqlx::query(NEW_ROWS_SAVEPOINT[0])
        .execute(&mut *conn)
        .await?;
    let mut inserted = Ok(());
    for chunk in new.chunks(bulk::BULK_ROWS) {
        inserted = bulk::bind_arrays(sqlx::query(&insert), &ts.table, chunk)
            .execute(&mut *conn)
            .await
            .map(|_| ());
        if inserted.is_err() {
            break;
        }
    }
    match inserted {
        Ok(()) => {}
        Err(e) if Dialect::is_unique_violation(&e) => {
            tracing::debug!(table = %ts.table.name, "a row taken for new was in the sink ({e}); upserting");
            sqlx::query(NEW_ROWS_SAVEPOINT[1])
                .execute(&mut *conn)
                .await?;
            ts.insert_pause = INSERT_PAUSE;
            known.extend(new);
        }
        Err(e) => return Err(e),
    }
    sqlx::query(NEW_ROWS_SAVEPOINT[2])
        .execute(&mut *conn)
        .await?;
    write_unique(conn, d, ts, &known).await
}

/// Savepoint, rollback to it, release: around `write_upserts`'s inserts.
const NEW_ROWS_SAVEPOINT: [&str; 3] = [
    "SAVEPOINT sluice_new",
    "ROLLBACK TO SAVEPOINT sluice_new",
    "RELEASE SAVEPOINT sluice_new",
];

/// Commits of a table without plain inserts after one hit a row.
const INSERT_PAUSE: u32 = 64;

/// Writes of one kind to one table, one per key: in bulk.
async fn write_unique(
    conn: &mut AnyConnection,
    d: Dialect,
    ts: &mut TableSql,
    rows: &[&SinkWrite],
) -> Result<(), sqlx::Error> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    if d == Dialect::Postgres {
        if let Some(sql) = ts.bulk(is_upsert(first)) {
            for chunk in rows.chunks(bulk::BULK_ROWS) {
                bulk::bind_arrays(sqlx::query(&sql), &ts.table, chunk)
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(());
        }
    }
    execute_run(conn, d, ts, rows).await
}

/// A table's writes in batch order, grouped into multi-row statements: a
/// run ends where the kind or the declaration changes or a key repeats, so
/// every row sees its writes in batch order.
async fn write_in_order(
    conn: &mut AnyConnection,
    d: Dialect,
    cache: &mut HashMap<Arc<SinkTable>, TableSql>,
    writes: &[&SinkWrite],
) -> Result<(), sqlx::Error> {
    let mut key = Vec::new();
    let mut start = 0;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for (i, w) in writes.iter().enumerate() {
        key_bytes(w.table(), w, &mut key);
        let (first, table) = (writes[start], w.table());
        let changed = i > start
            && (is_upsert(first) != is_upsert(w)
                || !(Arc::ptr_eq(first.table(), table) || **first.table() == **table));
        // (`execute_run` cuts a long run into statements that fit.)
        if changed || seen.contains(&key) {
            let ts = table_sql(cache, d, first.table());
            execute_run(conn, d, ts, &writes[start..i]).await?;
            start = i;
            seen.clear();
        }
        seen.insert(key.clone());
    }
    let ts = table_sql(cache, d, writes[start].table());
    execute_run(conn, d, ts, &writes[start..]).await
}

pub(super) fn is_upsert(w: &SinkWrite) -> bool {
    matches!(w, SinkWrite::Upsert { .. })
}

/// Write a run of same-kind writes to one table in power-of-two chunks of
/// at most the table's `max_rows`, so no statement binds more parameters
/// than the database allows, however long the run.
pub(super) async fn execute_run(
    conn: &mut AnyConnection,
    d: Dialect,
    ts: &mut TableSql,
    mut run: &[&SinkWrite],
) -> Result<(), sqlx::Error> {
    while let Some(first) = run.first() {
        let rows = power_of_two_at_most(run.len().min(ts.max_rows));
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
pub(super) async fn write_event(
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
