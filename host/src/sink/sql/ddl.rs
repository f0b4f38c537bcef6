//! Sink tables: created from the plugins' declarations before the batch's
//! transaction (MySQL commits DDL implicitly), extended by new columns,
//! checked against what another host created first; `sluice_columns` keeps
//! each column's logical type.

use super::*;

/// What the sink knows of an existing table.
#[derive(Debug, Clone)]
pub(super) struct TableState {
    pub(super) columns: Vec<String>,
    pub(super) key: Vec<String>,
}

impl SqlSink {
    /// Create or extend every table the batch writes to. Returns the tables
    /// that cannot take the plugin's rows, with the reason.
    pub(super) async fn prepare_tables(
        &mut self,
        events: &[EventWrites],
    ) -> anyhow::Result<HashMap<TableId, String>> {
        let mut broken = HashMap::new();
        let mut checked: HashSet<TableId> = HashSet::new();
        for ev in events {
            let joined = ev.joins.iter().filter(|j| j.op.writes_output());
            let outputs = ev
                .ops
                .iter()
                .map(|i| &i.output)
                .chain(joined.map(|j| &j.op.table));
            for table in ev.writes.iter().map(|w| w.table()).chain(outputs) {
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
    pub(super) async fn ensure_table(&mut self, table: &SinkTable) -> Result<(), SinkError> {
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
                    d.table_options(table.rewritten, self.table_fillfactor)
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

pub(super) async fn catalog(
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

pub(super) async fn read_table(
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
