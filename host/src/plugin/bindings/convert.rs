//! Conversions between the host's model and a WIT version's generated
//! types. The generated types of each version are distinct Rust types with
//! the same shapes, so the conversions are written once, as a macro that
//! each version module expands next to its `bindgen!` output (which must be
//! in scope as `wit`, with `Batch`/`BatchResult` from its `plugin` export,
//! and a `change_record` function for the one record that differs).

macro_rules! model_conversions {
    () => {
        fn column_type(t: model::ColumnType) -> wit::ColumnType {
            use model::ColumnType as M;
            use wit::ColumnType as W;
            match t {
                M::Unknown => W::Unknown,
                M::Boolean => W::Boolean,
                M::Int => W::Int,
                M::Float => W::Float,
                M::Decimal => W::Decimal,
                M::Text => W::Text,
                M::Bytes => W::Bytes,
                M::Timestamp => W::Timestamp,
                M::LocalTimestamp => W::LocalTimestamp,
                M::Date => W::Date,
                M::Time => W::Time,
                M::Json => W::Json,
            }
        }

        fn model_column_type(t: wit::ColumnType) -> model::ColumnType {
            use model::ColumnType as M;
            use wit::ColumnType as W;
            match t {
                W::Unknown => M::Unknown,
                W::Boolean => M::Boolean,
                W::Int => M::Int,
                W::Float => M::Float,
                W::Decimal => M::Decimal,
                W::Text => M::Text,
                W::Bytes => M::Bytes,
                W::Timestamp => M::Timestamp,
                W::LocalTimestamp => M::LocalTimestamp,
                W::Date => M::Date,
                W::Time => M::Time,
                W::Json => M::Json,
            }
        }

        fn column(c: &model::Column) -> wit::Column {
            wit::Column {
                name: c.name.clone(),
                ty: column_type(c.ty),
                nullable: c.nullable,
                decimal: c.decimal.map(|d| wit::DecimalParams {
                    precision: d.precision,
                    scale: d.scale,
                }),
            }
        }

        fn model_column(c: wit::Column) -> model::Column {
            model::Column {
                name: c.name,
                ty: model_column_type(c.ty),
                nullable: c.nullable,
                decimal: c.decimal.map(|d| model::DecimalParams {
                    precision: d.precision,
                    scale: d.scale,
                }),
            }
        }

        fn value(v: &model::Value) -> wit::Value {
            use model::Value as M;
            use wit::Value as W;
            match v {
                M::Null => W::Null,
                M::Boolean(b) => W::Boolean(*b),
                M::Int(i) => W::Int(*i),
                M::Float(f) => W::Float(*f),
                M::Decimal(s) => W::Decimal(s.clone()),
                M::Text(s) => W::Text(s.clone()),
                M::Bytes(b) => W::Bytes(b.clone()),
                M::Timestamp(t) => W::Timestamp(*t),
                M::LocalTimestamp(t) => W::LocalTimestamp(*t),
                M::Date(d) => W::Date(*d),
                M::Time(t) => W::Time(*t),
                M::Json(s) => W::Json(s.clone()),
            }
        }

        fn model_value(v: wit::Value) -> model::Value {
            use model::Value as M;
            use wit::Value as W;
            match v {
                W::Null => M::Null,
                W::Boolean(b) => M::Boolean(b),
                W::Int(i) => M::Int(i),
                W::Float(f) => M::Float(f),
                W::Decimal(s) => M::Decimal(s),
                W::Text(s) => M::Text(s),
                W::Bytes(b) => M::Bytes(b),
                W::Timestamp(t) => M::Timestamp(t),
                W::LocalTimestamp(t) => M::LocalTimestamp(t),
                W::Date(d) => M::Date(d),
                W::Time(t) => M::Time(t),
                W::Json(s) => M::Json(s),
            }
        }

        fn op(o: model::Op) -> wit::Op {
            match o {
                model::Op::Create => wit::Op::Create,
                model::Op::Update => wit::Op::Update,
                model::Op::Delete => wit::Op::Delete,
                model::Op::Read => wit::Op::Read,
                model::Op::Truncate => wit::Op::Truncate,
            }
        }

        /// Build a WIT batch; each distinct table descriptor is sent once.
        pub(super) fn to_batch(events: &[(&model::ChangeEvent, &model::RecordId)]) -> Batch {
            let mut tables: Vec<&std::sync::Arc<model::TableDesc>> = Vec::new();
            let mut changes = Vec::with_capacity(events.len());
            for (ev, id) in events {
                let idx = match tables
                    .iter()
                    .position(|t| std::sync::Arc::ptr_eq(t, &ev.table))
                {
                    Some(i) => i,
                    None => {
                        tables.push(&ev.table);
                        tables.len() - 1
                    }
                };
                let row = |r: &Option<Vec<model::Value>>| {
                    r.as_ref().map(|vs| vs.iter().map(value).collect())
                };
                changes.push(change_record(
                    ev,
                    id,
                    idx as u32,
                    row(&ev.before),
                    row(&ev.after),
                ));
            }
            Batch {
                tables: tables.into_iter().map(|t| table(t)).collect(),
                changes,
            }
        }

        /// A source table descriptor.
        fn table(t: &model::TableDesc) -> wit::Table {
            wit::Table {
                topic: t.topic.clone(),
                name: t.name.clone(),
                namespace: t.namespace.clone(),
                columns: t.columns.iter().map(column).collect(),
                key: t.key.clone(),
            }
        }

        /// Convert a plugin's answer, checking every index it gives.
        pub(super) fn from_result(
            result: BatchResult,
            expected: usize,
        ) -> Result<Vec<ChangeOutcome>, String> {
            if result.results.len() != expected {
                return Err(format!(
                    "plugin returned {} results for {expected} changes",
                    result.results.len()
                ));
            }
            let tables: Vec<std::sync::Arc<model::SinkTable>> = result
                .tables
                .into_iter()
                .map(|t| {
                    std::sync::Arc::new(model::SinkTable {
                        name: t.name,
                        columns: t.columns.into_iter().map(model_column).collect(),
                        key: t.key,
                        rewritten: false,
                    })
                })
                .collect();
            for t in &tables {
                if t.name.is_empty() {
                    return Err("plugin declared a sink table with an empty name".into());
                }
                if let Some(k) = t.key.iter().find(|&&k| k as usize >= t.columns.len()) {
                    return Err(format!(
                        "sink table `{}`: key index {k} out of range",
                        t.name
                    ));
                }
            }
            Ok(result
                .results
                .into_iter()
                .map(|r| {
                    let outputs = r?;
                    outputs
                        .into_iter()
                        .map(|o| {
                            let (row, is_upsert) = match o {
                                wit::Output::Upsert(r) => (r, true),
                                wit::Output::Delete(r) => (r, false),
                            };
                            let table = tables
                                .get(row.table as usize)
                                .ok_or_else(|| {
                                    format!(
                                        "output names sink table #{} which was not declared",
                                        row.table
                                    )
                                })?
                                .clone();
                            let values: Vec<model::Value> =
                                row.values.into_iter().map(model_value).collect();
                            let want = if is_upsert {
                                table.columns.len()
                            } else {
                                table.key.len()
                            };
                            if values.len() != want {
                                return Err(format!(
                                    "{} into `{}` has {} values, the table declares {want}",
                                    if is_upsert { "upsert" } else { "delete" },
                                    table.name,
                                    values.len()
                                ));
                            }
                            Ok(if is_upsert {
                                model::SinkWrite::Upsert { table, values }
                            } else {
                                model::SinkWrite::Delete { table, key: values }
                            })
                        })
                        .collect()
                })
                .collect())
        }

        /// Map the guest's log level to tracing's.
        pub(super) fn log_level(l: wit::LogLevel) -> tracing::Level {
            match l {
                wit::LogLevel::Trace => tracing::Level::TRACE,
                wit::LogLevel::Debug => tracing::Level::DEBUG,
                wit::LogLevel::Info => tracing::Level::INFO,
                wit::LogLevel::Warn => tracing::Level::WARN,
                wit::LogLevel::Error => tracing::Level::ERROR,
            }
        }
    };
}
