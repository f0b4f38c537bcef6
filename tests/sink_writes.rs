//! The sink's write paths against the real databases: a batch's writes are
//! consolidated per key and written in bulk (PostgreSQL: one `unnest`
//! statement per table and kind; MariaDB and SQLite: multi-row statements),
//! which must leave exactly what applying the writes one by one leaves.
//! The truth is computed here, by applying the same writes to a map in
//! order; and every value type with awkward text (quotes, backslashes,
//! braces, the word NULL, empty strings, bytes) must land unchanged.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use sluice::model::{
    Column, ColumnType, DecimalParams, RawRecord, RecordId, SinkTable, SinkWrite, Value,
};
use sluice::sink::sql::SqlSink;
use sluice::sink::{EventWrites, SinkBatch};
use sqlx::{AnyConnection, Connection as _, Executor as _, Row as _};

const PG: &str = "postgres://sluice:sluice@localhost:5432";
const MY: &str = "mysql://sluice:sluice@127.0.0.1:3306";

fn col(name: &str, ty: ColumnType) -> Column {
    Column {
        name: name.into(),
        ty,
        nullable: true,
        decimal: (ty == ColumnType::Decimal).then_some(DecimalParams {
            precision: Some(12),
            scale: Some(3),
        }),
    }
}

/// A table keyed by (`a`, `b`), so deletes match on two columns.
fn pairs() -> Arc<SinkTable> {
    let mut a = col("a", ColumnType::Int);
    let mut b = col("b", ColumnType::Text);
    a.nullable = false;
    b.nullable = false;
    Arc::new(SinkTable {
        name: "pairs".into(),
        columns: vec![a, b, col("v", ColumnType::Int)],
        key: vec![0, 1],
        rewritten: false,
    })
}

fn event(offset: i64, writes: Vec<SinkWrite>) -> EventWrites {
    EventWrites::written(
        RawRecord {
            id: RecordId {
                topic: "topic".into(),
                partition: 0,
                offset,
            },
            key: None,
            value: Some(String::new()),
            headers: Default::default(),
            schema: None,
        },
        None,
        writes,
    )
}

fn batch(events: Vec<EventWrites>) -> SinkBatch {
    let next = events.last().map_or(0, |e| e.record.id.offset + 1);
    SinkBatch {
        records: events.len() as u64,
        offsets: vec![("topic".into(), 0, next)],
        events,
        ..Default::default()
    }
}

/// A small deterministic generator (no test may depend on luck).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

async fn fresh(kind: &str, label: &str, dir: &tempfile::TempDir) -> (String, Option<String>) {
    let name = unique(&format!("sluice_{label}_"));
    match kind {
        "sqlite" => (
            format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()),
            None,
        ),
        "postgres" => {
            sqlx::any::install_default_drivers();
            let mut c = AnyConnection::connect(&format!("{PG}/postgres"))
                .await
                .unwrap();
            c.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            (format!("{PG}/{name}"), Some(name))
        }
        _ => {
            sqlx::any::install_default_drivers();
            let mut c = AnyConnection::connect(&format!("{MY}/mysql"))
                .await
                .unwrap();
            c.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .unwrap();
            (format!("{MY}/{name}"), Some(name))
        }
    }
}

/// A PostgreSQL table's storage options (`{fillfactor=50}`), if any.
async fn reloptions(c: &mut AnyConnection, table: &str) -> Option<String> {
    sqlx::query_scalar("SELECT reloptions::text FROM pg_class WHERE relname = $1")
        .bind(table)
        .fetch_one(c)
        .await
        .unwrap()
}

async fn drop_db(kind: &str, name: Option<String>) {
    let Some(name) = name else { return };
    let admin = if kind == "postgres" {
        format!("{PG}/postgres")
    } else {
        format!("{MY}/mysql")
    };
    let mut c = AnyConnection::connect(&admin).await.unwrap();
    let _ = c
        .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
        .await;
}

/// Random upserts and deletes over a few keys, in batches of random size,
/// keys repeating within a batch: the sink ends where applying them one by
/// one ends. Upserts of changes that created their row are inserted without
/// ON CONFLICT on PostgreSQL; where that claim is wrong, upserted after all.
async fn consolidated_writes_equal_writes_applied_in_order(kind: &str) {
    if kind != "sqlite" && !stack_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = fresh(kind, "consolidate", &dir).await;
    let mut sink = SqlSink::open(&url, kind, "p").await.unwrap();
    let t = pairs();
    let mut want: BTreeMap<(i64, String), i64> = BTreeMap::new();
    let mut rng = Lcg(42);
    let mut offset = 0;
    let mut written = 0;
    for round in 0..40 {
        let size = 1 + rng.next(if round % 3 == 0 { 400 } else { 12 });
        let mut events = Vec::new();
        for _ in 0..size {
            let key = (
                rng.next(7) as i64,
                ["x", "y", "z"][rng.next(3) as usize].to_string(),
            );
            // The change created its row when the key was absent (true
            // creates, inserted without ON CONFLICT on PostgreSQL); in the
            // last rounds every upsert claims it did (re-delivered creates:
            // the insert hits the row and they are upserted instead).
            let created = round >= 30 || !want.contains_key(&key);
            let w = if rng.next(3) == 0 {
                want.remove(&key);
                SinkWrite::Delete {
                    table: t.clone(),
                    key: vec![Value::Int(key.0), Value::Text(key.1.clone())],
                }
            } else {
                let v = offset;
                want.insert(key.clone(), v);
                SinkWrite::Upsert {
                    table: t.clone(),
                    values: vec![Value::Int(key.0), Value::Text(key.1.clone()), Value::Int(v)],
                }
            };
            let mut ev = event(offset, vec![w]);
            ev.created = created;
            events.push(ev);
            offset += 1;
        }
        written += events.len() as u64;
        let report = sink.commit(batch(events)).await.unwrap();
        assert_eq!(report.writes, size, "{kind}: writes reported");
        assert!(!report.row_by_row, "{kind}: the bulk write failed");
    }
    assert_eq!(written, offset as u64);
    let mut c = AnyConnection::connect(&url).await.unwrap();
    let got: BTreeMap<(i64, String), i64> = sqlx::query("SELECT a, b, v FROM pairs")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let b = r
                .try_get::<String, _>(1)
                .or_else(|_| {
                    r.try_get::<Vec<u8>, _>(1)
                        .map(|b| String::from_utf8(b).unwrap())
                })
                .unwrap();
            ((r.try_get(0).unwrap(), b), r.try_get(2).unwrap())
        })
        .collect();
    assert!(
        !want.is_empty() && want.len() < 21,
        "the test needs a mix: {want:?}"
    );
    assert_eq!(got, want, "{kind}");
    drop(c);
    drop(sink);
    drop_db(kind, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidated_writes_equal_writes_applied_in_order_sqlite() {
    consolidated_writes_equal_writes_applied_in_order("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidated_writes_equal_writes_applied_in_order_postgres() {
    consolidated_writes_equal_writes_applied_in_order("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidated_writes_equal_writes_applied_in_order_mariadb() {
    consolidated_writes_equal_writes_applied_in_order("mariadb").await;
}

/// A batch of more distinct keys than one statement may bind (40,000 rows
/// of three columns, then deletes of two-column keys): every database's
/// parameter limit (SQLite 32,766, MariaDB and PostgreSQL 65,535) is
/// passed, so the writes must be cut into statements that fit.
async fn a_batch_of_many_keys_is_written_in_statements_that_fit(kind: &str) {
    if kind != "sqlite" && !stack_ready() {
        return;
    }
    const N: i64 = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = fresh(kind, "many", &dir).await;
    let mut sink = SqlSink::open(&url, kind, "p").await.unwrap();
    let t = pairs();
    let key = |i: i64| (i, format!("k{}", i % 13));
    let upserts = (0..N)
        .map(|i| {
            let (a, b) = key(i);
            let values = vec![Value::Int(a), Value::Text(b), Value::Int(i * 7)];
            event(
                i,
                vec![SinkWrite::Upsert {
                    table: t.clone(),
                    values,
                }],
            )
        })
        .collect();
    let report = sink.commit(batch(upserts)).await.unwrap();
    assert!(!report.row_by_row, "{kind}: the bulk upsert failed");
    // Delete every odd key in one batch.
    let deletes = (0..N)
        .filter(|i| i % 2 == 1)
        .map(|i| {
            let (a, b) = key(i);
            let key = vec![Value::Int(a), Value::Text(b)];
            event(
                N + i,
                vec![SinkWrite::Delete {
                    table: t.clone(),
                    key,
                }],
            )
        })
        .collect();
    let report = sink.commit(batch(deletes)).await.unwrap();
    assert!(!report.row_by_row, "{kind}: the bulk delete failed");
    let mut c = AnyConnection::connect(&url).await.unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query("SELECT a, v FROM pairs")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get(0).unwrap(), r.try_get(1).unwrap()))
        .collect();
    let evens = (0..N).filter(|i| i % 2 == 0);
    assert_eq!(rows.len() as i64, N / 2, "{kind}: rows left");
    let sum_a: i64 = rows.iter().map(|r| r.0).sum();
    let sum_v: i64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(sum_a, evens.clone().sum::<i64>(), "{kind}: keys left");
    assert_eq!(sum_v, evens.map(|i| i * 7).sum::<i64>(), "{kind}: values");
    drop(c);
    drop(sink);
    drop_db(kind, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_keys_is_written_in_statements_that_fit_sqlite() {
    a_batch_of_many_keys_is_written_in_statements_that_fit("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_keys_is_written_in_statements_that_fit_postgres() {
    a_batch_of_many_keys_is_written_in_statements_that_fit("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_many_keys_is_written_in_statements_that_fit_mariadb() {
    a_batch_of_many_keys_is_written_in_statements_that_fit("mariadb").await;
}

/// `[tables] fillfactor`: PostgreSQL makes the plugins' tables with that
/// page fill (an update then finds room on its row's page); other sinks
/// say it does not apply and make their tables as always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_fillfactor_makes_postgres_tables_with_room_for_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = fresh("sqlite", "ff", &dir).await;
    let mut sink = SqlSink::open(&url, "sqlite", "p").await.unwrap();
    assert!(!sink.set_table_fillfactor(70), "SQLite has no fillfactor");
    if !stack_ready() {
        return;
    }
    let (my_url, my_db) = fresh("mariadb", "ff", &dir).await;
    let mut my_sink = SqlSink::open(&my_url, "mariadb", "p").await.unwrap();
    assert!(
        !my_sink.set_table_fillfactor(70),
        "MariaDB has no fillfactor"
    );
    drop(my_sink);
    drop_db("mariadb", my_db).await;
    let (url, db) = fresh("postgres", "ff", &dir).await;
    let mut sink = SqlSink::open(&url, "postgres", "p").await.unwrap();
    assert!(sink.set_table_fillfactor(70));
    let t = pairs();
    let upsert = |offset: i64, v: i64| {
        event(
            offset,
            vec![SinkWrite::Upsert {
                table: t.clone(),
                values: vec![Value::Int(1), Value::Text("k".into()), Value::Int(v)],
            }],
        )
    };
    sink.commit(batch(vec![upsert(0, 1)])).await.unwrap();
    sink.commit(batch(vec![upsert(1, 2)])).await.unwrap();
    let mut c = AnyConnection::connect(&url).await.unwrap();
    assert_eq!(
        reloptions(&mut c, "pairs").await.as_deref(),
        Some("{fillfactor=70}")
    );
    let v: i64 = sqlx::query_scalar("SELECT v FROM pairs")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 2);
    drop(c);
    drop(sink);
    drop_db("postgres", db).await;
}

/// Every value type through PostgreSQL's bulk path, with the texts an
/// array literal must escape, read back as PostgreSQL renders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bulk_writes_keep_every_value() {
    if !stack_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = fresh("postgres", "values", &dir).await;
    let mut sink = SqlSink::open(&url, "values", "p").await.unwrap();
    let mut id = col("id", ColumnType::Int);
    id.nullable = false;
    let t = Arc::new(SinkTable {
        name: "vals".into(),
        columns: vec![
            id,
            col("t", ColumnType::Text),
            col("b", ColumnType::Boolean),
            col("f", ColumnType::Float),
            col("d", ColumnType::Decimal),
            col("by", ColumnType::Bytes),
            col("ts", ColumnType::Timestamp),
            col("lt", ColumnType::LocalTimestamp),
            col("dt", ColumnType::Date),
            col("tm", ColumnType::Time),
            col("j", ColumnType::Json),
        ],
        key: vec![0],
        rewritten: false,
    });
    let row = |i: i64, t_: Value, b, f, d: &str, by: &[u8], j: &str| SinkWrite::Upsert {
        table: t.clone(),
        values: vec![
            Value::Int(i),
            t_,
            Value::Boolean(b),
            Value::Float(f),
            Value::Decimal(d.into()),
            Value::Bytes(by.to_vec()),
            Value::Timestamp(1_707_615_000_123_456),
            Value::LocalTimestamp(1_707_615_000_000_001),
            Value::Date(19_764),
            Value::Time(3_723_000_004),
            Value::Json(j.into()),
        ],
    };
    let text = |s: &str| Value::Text(s.into());
    let awkward = r#"a "quoted" \back\slash\, {brace}, NULL"#;
    let nulls = SinkWrite::Upsert {
        table: t.clone(),
        values: std::iter::once(Value::Int(3))
            .chain(std::iter::repeat_n(Value::Null, 10))
            .collect(),
    };
    let events = vec![
        event(0, vec![row(1, text("first"), true, 1.0, "1", b"x", "{}")]),
        event(
            1,
            vec![row(
                2,
                text("NULL"),
                false,
                -0.5,
                "-12.345",
                &[0, 1, 255, b'\\', b'"'],
                r#"{"k": "v\"q"}"#,
            )],
        ),
        event(2, vec![nulls]),
        event(
            3,
            vec![row(
                1,
                text(awkward),
                true,
                1e-7,
                "0.001",
                b"",
                r#"["a", null]"#,
            )],
        ),
        event(
            4,
            vec![SinkWrite::Delete {
                table: t.clone(),
                key: vec![Value::Int(2)],
            }],
        ),
        event(
            5,
            vec![row(
                2,
                text(""),
                false,
                1.5e300,
                "123456789.123",
                b"{,}",
                "null",
            )],
        ),
        event(6, vec![row(4, text("żółw 🐢"), true, 0.0, "0", b"z", "1")]),
        event(
            7,
            vec![SinkWrite::Delete {
                table: t.clone(),
                key: vec![Value::Int(4)],
            }],
        ),
        event(
            8,
            vec![row(
                5,
                text("  spaces  "),
                false,
                -2.25,
                "-0.5",
                &[0, 1, 255, b'\\', b'"', b' '],
                r#"{"k": "v\"q"}"#,
            )],
        ),
    ];
    let report = sink.commit(batch(events)).await.unwrap();
    assert!(
        !report.row_by_row,
        "the bulk write failed: written row by row"
    );
    let mut c = AnyConnection::connect(&url).await.unwrap();
    let got: Vec<Vec<Option<String>>> = sqlx::query(
        "SELECT id::text, t, b::text, f::text, d::text, encode(by, 'hex'), \
         to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
         to_char(lt, 'YYYY-MM-DD HH24:MI:SS.US'), dt::text, tm::text, j::text \
         FROM vals ORDER BY id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (0..11)
            .map(|i| r.try_get::<Option<String>, _>(i).unwrap())
            .collect()
    })
    .collect();
    let s = |v: &str| Some(v.to_string());
    let common = |ts: bool| {
        if ts {
            vec![
                s("2024-02-11 01:30:00.123456"),
                s("2024-02-11 01:30:00.000001"),
                s("2024-02-11"),
                s("01:02:03.000004"),
            ]
        } else {
            vec![None; 4]
        }
    };
    let want = vec![
        [
            vec![s("1"), s(awkward), s("true"), s("1e-07"), s("0.001"), s("")],
            common(true),
            vec![s(r#"["a", null]"#)],
        ]
        .concat(),
        [
            vec![
                s("2"),
                s(""),
                s("false"),
                s("1.5e+300"),
                s("123456789.123"),
                s("7b2c7d"),
            ],
            common(true),
            vec![s("null")],
        ]
        .concat(),
        [
            vec![s("3"), None, None, None, None, None],
            common(false),
            vec![None],
        ]
        .concat(),
        [
            vec![
                s("5"),
                s("  spaces  "),
                s("false"),
                s("-2.25"),
                s("-0.500"),
                s("0001ff5c2220"),
            ],
            common(true),
            vec![s(r#"{"k": "v\"q"}"#)],
        ]
        .concat(),
    ];
    assert_eq!(got, want);

    // A second batch over existing rows: the conflict path and a delete by key.
    let events = vec![
        event(
            9,
            vec![row(3, text("now set"), true, 2.0, "2", &[0xab], "[]")],
        ),
        event(
            10,
            vec![SinkWrite::Delete {
                table: t.clone(),
                key: vec![Value::Int(5)],
            }],
        ),
    ];
    let report = sink.commit(batch(events)).await.unwrap();
    assert!(
        !report.row_by_row,
        "the bulk write failed: written row by row"
    );
    let ids: Vec<(i64, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, t, encode(by, 'hex') FROM vals ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        ids,
        vec![
            (1, s(awkward), s("")),
            (2, s(""), s("7b2c7d")),
            (3, s("now set"), s("ab"))
        ]
    );
    // a plugin's own table is made with PostgreSQL's default page fill
    assert_eq!(reloptions(&mut c, "vals").await, None);
    drop(c);
    drop(sink);
    drop_db("postgres", db).await;
}

/// An aggregation's state rows its cache knows the sink lacks, and the
/// output rows of those groups, are inserted without `ON CONFLICT`
/// (PostgreSQL). Should the cache be wrong — here a state row put in
/// behind its back — the insert hits that row and the commit is tried
/// again with the state read afresh: it commits, and the result counts
/// what it read. An output row in the way is upserted over instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_row_the_cache_took_for_new_is_read_and_the_commit_retried() {
    use sluice::model::{SourceOrder, TableDesc};
    use sluice::operators::aggregate::{output_table, AggregationOp, InputChange, OperatorInput};
    use sluice::operators::spec::*;
    use sluice::operators::Projection;
    if !stack_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, db) = fresh("postgres", "fresh_state", &dir).await;
    let mut sink = SqlSink::open(&url, "fresh_state", "p").await.unwrap();
    // (the plugins' tables' fill does not reach an aggregation's, below)
    assert!(sink.set_table_fillfactor(90));
    let spec = AggregationSpec {
        source: "orders".into(),
        output: "orders_daily".into(),
        group_by: vec!["customer_id".into()],
        window: WindowSpec::Tumbling {
            size: 86_400_000_000,
            offset: 0,
        },
        window_columns: ("window_start".into(), "window_end".into()),
        event_time: EventTimeSpec::Column("placed_at".into()),
        measures: vec![
            MeasureSpec {
                name: "orders".into(),
                function: AggregateFn::CountRows,
                column: None,
                output_type: None,
            },
            MeasureSpec {
                name: "amount_sum".into(),
                function: AggregateFn::Sum,
                column: Some("amount".into()),
                output_type: None,
            },
        ],
        out_of_orderness: 0,
        allowed_lateness: 0,
        emit: EmitMode::Update,
        late: LatePolicy::Apply,
        semantics: Semantics::Changelog,
    };
    let op = Arc::new(AggregationOp {
        id: "p/orders_daily".into(),
        plugin: "p".into(),
        index: 0,
        spec: spec.clone(),
        code: None,
    });
    let projection = |customer: i64, amount: i64| Projection {
        group: vec![Value::Int(customer)],
        event_time: Some(Value::Timestamp(3_600_000_000)),
        args: vec![Value::Null, Value::Int(amount)],
    };
    let source = TableDesc {
        topic: "topic".into(),
        name: "orders".into(),
        namespace: "public".into(),
        columns: vec![
            col("customer_id", ColumnType::Int),
            col("amount", ColumnType::Int),
        ],
        key: vec![],
    };
    let output = Arc::new(output_table(&spec, &source, Some(&projection(7, 1))));
    // order `id` at source position = offset: placed for `amount` by
    // customer 7 (8 from id 3 on), or deleted
    let change = |offset: i64, id: u8, amount: Option<i64>| {
        let customer = if id < 3 { 7 } else { 8 };
        let mut ev = event(offset, Vec::new());
        ev.ops.push(OperatorInput {
            op: op.clone(),
            output: output.clone(),
            row_key: vec![b'o', id],
            order: Some(SourceOrder([offset as u64, 0, 0])),
            change: match amount {
                Some(a) => InputChange::Row(Some(projection(customer, a))),
                None => InputChange::Delete,
            },
            commit_time_ms: None,
            partition: vec![0],
        });
        batch(vec![ev])
    };
    sink.commit(change(0, 1, Some(5))).await.unwrap();
    sink.commit(change(1, 1, None)).await.unwrap();
    // Order 2's state row appears behind the cache's back: order 1's (a
    // deleted row at position 1), so reading it changes no count.
    let mut c = AnyConnection::connect(&url).await.unwrap();
    let copied = sqlx::query(
        "INSERT INTO sluice_state_rows (sid, k, v, expires) \
         SELECT sid, $1, v, expires FROM sluice_state_rows WHERE k = $2",
    )
    .bind(vec![b'o', 2])
    .bind(vec![b'o', 1])
    .execute(&mut c)
    .await
    .unwrap();
    assert_eq!(copied.rows_affected(), 1);
    sink.commit(change(2, 2, Some(3)))
        .await
        .expect("the commit was not tried again with the state read afresh");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT customer_id::text, orders::text, amount_sum::text FROM orders_daily",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(rows, [("7".into(), "1".into(), "3".into())]);
    // The same for a group's output row: customer 8's row put in behind
    // the cache's back, so the row of a group the cache knows is new hits
    // it; the table's new rows are upserted instead, over it.
    sqlx::query(
        "INSERT INTO orders_daily (customer_id, window_start, window_end, orders, amount_sum) \
         SELECT 8, window_start, window_end, 99, 99 FROM orders_daily",
    )
    .execute(&mut c)
    .await
    .unwrap();
    sink.commit(change(3, 3, Some(4)))
        .await
        .expect("an output row taken for new was not upserted after all");
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT customer_id::text, orders::text, amount_sum::text FROM orders_daily \
         ORDER BY customer_id",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("7".into(), "1".into(), "3".into()),
            ("8".into(), "1".into(), "4".into())
        ]
    );
    // an aggregation's rows are rewritten in place: pages left half free,
    // whatever `[tables] fillfactor` says
    assert_eq!(
        reloptions(&mut c, "orders_daily").await.as_deref(),
        Some("{fillfactor=50}")
    );
    drop(c);
    drop(sink);
    drop_db("postgres", db).await;
}
