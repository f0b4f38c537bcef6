//! End-to-end against the real dev stack: a workload on the source database
//! (PostgreSQL or MariaDB), Debezium into Kafka, Sluice with `mirror` into a
//! fresh PostgreSQL or MariaDB database. The truth is the source database
//! itself: after catch-up, every captured table must read the same on both
//! sides (compared by query, values rendered canonically on each side).
//!
//! The tests share the source databases and their topics, so they take a
//! lock and run one at a time.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sqlx::{AnyConnection, Connection as _, Executor as _, Row as _};

static SOURCE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PG: &str = "postgres://sluice:sluice@localhost:5432";
const MY: &str = "mysql://sluice:sluice@127.0.0.1:3306";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Db {
    Pg,
    My,
}

impl Db {
    fn url(self, database: &str) -> String {
        match self {
            Db::Pg => format!("{PG}/{database}"),
            Db::My => format!("{MY}/{database}"),
        }
    }

    /// Topics Debezium writes the seed tables to.
    fn topics(self) -> &'static str {
        match self {
            Db::Pg => r"^pgserver1\.public\.(customers|orders)$",
            Db::My => r"^dbserver1\.inventory\.(customers|orders)$",
        }
    }

    fn topic(self, table: &str) -> String {
        match self {
            Db::Pg => format!("pgserver1.public.{table}"),
            Db::My => format!("dbserver1.inventory.{table}"),
        }
    }
}

async fn connect(db: Db, database: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let mut c = AnyConnection::connect(&db.url(database))
        .await
        .unwrap_or_else(|e| panic!("connecting to {database} on {db:?}: {e}"));
    let tz = match db {
        Db::Pg => "SET TIME ZONE 'UTC'",
        Db::My => "SET time_zone = '+00:00'",
    };
    c.execute(tz).await.unwrap();
    c
}

/// A fresh, empty sink database; dropped again when the test passes.
struct SinkDb {
    db: Db,
    name: String,
}

impl SinkDb {
    async fn create(db: Db, label: &str) -> SinkDb {
        let name = unique(&format!("sluice_{label}_"));
        let admin = match db {
            Db::Pg => "postgres",
            Db::My => "mysql",
        };
        let mut c = connect(db, admin).await;
        c.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        SinkDb { db, name }
    }

    fn url(&self) -> String {
        self.db.url(&self.name)
    }

    async fn drop_it(self) {
        let admin = match self.db {
            Db::Pg => "postgres",
            Db::My => "mysql",
        };
        let mut c = connect(self.db, admin).await;
        let _ = c
            .execute(format!("DROP DATABASE IF EXISTS {}", self.name).as_str())
            .await;
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bool,
    Decimal,
    /// TIMESTAMPTZ / MariaDB TIMESTAMP: compared in UTC.
    Instant,
    Local,
}

const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "customers",
        &[
            ("id", Kind::Int),
            ("name", Kind::Text),
            ("email", Kind::Text),
            ("segment", Kind::Text),
            ("vip", Kind::Bool),
            ("created_at", Kind::Instant),
        ],
    ),
    (
        "orders",
        &[
            ("order_id", Kind::Int),
            ("customer_id", Kind::Int),
            ("amount", Kind::Decimal),
            ("status", Kind::Text),
            ("placed_at", Kind::Local),
            ("note", Kind::Text),
        ],
    ),
];

/// One column rendered as text the same way on both databases.
fn canonical(db: Db, col: &str, kind: Kind) -> String {
    match (db, kind) {
        (Db::Pg, Kind::Int | Kind::Decimal | Kind::Text) => format!("{col}::text"),
        (Db::Pg, Kind::Bool) => {
            format!("CASE WHEN {col} IS NULL THEN NULL WHEN {col} THEN 'true' ELSE 'false' END")
        }
        (Db::Pg, Kind::Instant) => {
            format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        }
        (Db::Pg, Kind::Local) => format!("to_char({col}, 'YYYY-MM-DD HH24:MI:SS.US')"),
        (Db::My, Kind::Int | Kind::Decimal | Kind::Text) => format!("CAST({col} AS CHAR)"),
        (Db::My, Kind::Bool) => {
            format!(
                "CASE WHEN {col} IS NULL THEN NULL WHEN {col} <> 0 THEN 'true' ELSE 'false' END"
            )
        }
        (Db::My, Kind::Instant | Kind::Local) => {
            format!("DATE_FORMAT({col}, '%Y-%m-%d %H:%i:%s.%f')")
        }
    }
}

type Rows = BTreeMap<String, Vec<Vec<Option<String>>>>;

/// The error of reading a table that Sluice has not created yet (PostgreSQL:
/// "does not exist", MariaDB: "doesn't exist"); any other error is real.
fn missing_table(e: &sqlx::Error) -> bool {
    e.to_string().contains("exist")
}

/// Every captured table, rows ordered by key, values canonical.
async fn snapshot(db: Db, database: &str) -> Rows {
    let mut c = connect(db, database).await;
    let mut out = Rows::new();
    for (table, cols) in TABLES {
        let exprs: Vec<String> = cols.iter().map(|(n, k)| canonical(db, n, *k)).collect();
        let sql = format!(
            // qualified: PostgreSQL would sort by the text output column `id`
            "SELECT {} FROM {table} ORDER BY {table}.{}",
            exprs.join(", "),
            cols[0].0
        );
        // a table Sluice has not created yet reads as empty; any other
        // error fails the test (it must not read as "equal")
        let rows: Vec<sqlx::any::AnyRow> = match sqlx::query(&sql).fetch_all(&mut c).await {
            Ok(rows) => rows,
            Err(e) if missing_table(&e) => Vec::new(),
            Err(e) => panic!("{db:?} {database}: {sql}: {e}"),
        };
        out.insert(
            table.to_string(),
            rows.iter()
                .map(|r| (0..cols.len()).map(|i| text(r, i)).collect())
                .collect(),
        );
    }
    out
}

fn source_db(_db: Db) -> &'static str {
    "inventory"
}

/// A scripted workload: inserts (unicode, NULLs, sub-second instants,
/// decimals), updates, deletes and primary-key changes on both tables.
/// Ids start above everything already there, so runs never collide.
async fn workload(db: Db, customers: i64) -> i64 {
    let mut c = connect(db, source_db(db)).await;
    let base: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM customers")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
        .max(
            sqlx::query("SELECT COALESCE(MAX(order_id), 0) FROM orders")
                .fetch_one(&mut c)
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap(),
        )
        + 1000;
    let n = customers;
    let segments = ["smb", "enterprise", "retail"];
    let rows: Vec<String> = (1..=n)
        .map(|i| {
            let email = if i % 3 == 0 {
                "NULL".to_string()
            } else {
                format!("'c{i}@example.com'")
            };
            format!(
                "({}, 'Kunde {i} Zoë ✓', {email}, '{}', {}, '2024-05-{:02} {:02}:{:02}:07.{:06}')",
                base + i,
                segments[(i % 3) as usize],
                if i % 2 == 0 { "true" } else { "false" },
                1 + i % 28,
                i % 24,
                i % 60,
                (i * 7919) % 1_000_000
            )
        })
        .collect();
    c.execute(
        format!(
            "INSERT INTO customers (id, name, email, segment, vip, created_at) VALUES {}",
            rows.join(", ")
        )
        .as_str(),
    )
    .await
    .unwrap();
    let rows: Vec<String> = (1..=2 * n)
        .map(|i| {
            let note = if i % 4 == 0 { "'gift ✓'" } else { "NULL" };
            format!(
                "({}, {}, {}.{:02}, 'NEW', '2025-01-{:02} 10:{:02}:00.{:06}', {note})",
                base + i,
                base + 1 + i % n,
                (i * 37) % 100_000,
                i % 100,
                1 + i % 28,
                i % 60,
                (i * 104_729) % 1_000_000
            )
        })
        .collect();
    c.execute(
        format!(
            "INSERT INTO orders (order_id, customer_id, amount, status, placed_at, note) VALUES {}",
            rows.join(", ")
        )
        .as_str(),
    )
    .await
    .unwrap();
    let (lo, hi_c, hi_o) = (base + 1, base + n, base + 2 * n);
    for stmt in [
        format!("UPDATE customers SET vip = NOT vip, email = concat('changed', id, '@example.com') WHERE id BETWEEN {lo} AND {hi_c} AND id % 4 = 1"),
        format!("UPDATE orders SET status = 'PAID', amount = amount + 0.01 WHERE order_id BETWEEN {lo} AND {hi_o} AND order_id % 3 = 0"),
        format!("UPDATE orders SET note = NULL WHERE order_id BETWEEN {lo} AND {hi_o} AND order_id % 8 = 0"),
        format!("DELETE FROM orders WHERE order_id BETWEEN {lo} AND {hi_o} AND order_id % 5 = 0"),
        format!("DELETE FROM customers WHERE id = {}", base + 2),
        // primary-key changes: Debezium sends a delete of the old key and a create of the new
        format!("UPDATE customers SET id = {} WHERE id = {}", base + 10 * n, base + 3),
        format!("UPDATE orders SET order_id = {} WHERE order_id = {}", base + 10 * n, base + 1),
        // and the row changes again under its new key
        format!("UPDATE customers SET segment = 'moved' WHERE id = {}", base + 10 * n),
    ] {
        c.execute(stmt.as_str()).await.unwrap();
    }
    // One row changed twice in one transaction (two changes, one commit),
    // and moved to another day and customer: aggregates must see both.
    // (an order the statements above left in place)
    let twice = (base + 3..).find(|i| i % 5 != 0).unwrap_or(base + 3);
    let mut tx = c.begin().await.unwrap();
    tx.execute(
        format!(
            "UPDATE orders SET amount = amount + 1, customer_id = {} WHERE order_id = {twice}",
            base + 3
        )
        .as_str(),
    )
    .await
    .unwrap();
    tx.execute(format!("UPDATE orders SET amount = amount + 2, placed_at = '2025-02-11 09:30:00' WHERE order_id = {twice}").as_str())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    base
}

fn mirror() -> Scratch {
    Scratch::new(&[("mirror", "mirror")])
}

/// `mirror`, `orders_by_customer`, `order_history`, `orders_with_customer`
/// and `revenue_by_segment` in one pipeline: the mirrored tables are
/// audited write by write, the aggregates and joins compared with the
/// source's GROUP BYs and joins, the keyed history with the orders topic's
/// events.
fn mirror_and_aggregates() -> Scratch {
    Scratch::new(&[
        ("mirror", "mirror"),
        ("orders_by_customer", "orders_by_customer"),
        ("order_history", "order_history"),
        ("orders_with_customer", "orders_with_customer"),
        ("revenue_by_segment", "revenue_by_segment"),
    ])
}

const AGGREGATES: [(&str, &[&str]); 3] = [
    ("orders_by_customer_daily", &["window_start", "customer_id"]),
    ("orders_by_customer_7d", &["window_start", "customer_id"]),
    ("orders_sessions", &["customer_id", "session_start"]),
];

/// `orders_by_customer`'s tables in the sink equal the GROUP BYs of the
/// source's `orders` (computed by `common::reference`, not by Sluice).
async fn assert_aggregates_equal_source(source: Db, sink: &SinkDb) {
    let mut src = connect(source, source_db(source)).await;
    let sql = match source {
        Db::Pg => "SELECT customer_id, to_char(placed_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), amount::text FROM orders",
        Db::My => "SELECT customer_id, DATE_FORMAT(placed_at, '%Y-%m-%dT%H:%i:%s.%f'), CAST(amount AS CHAR) FROM orders",
    };
    let orders: Vec<serde_json::Value> = sqlx::query(sql)
        .fetch_all(&mut src)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::json!({"customer_id": r.try_get::<i64, _>(0).unwrap(),
                "placed_at": text(r, 1), "amount": text(r, 2)})
        })
        .collect();
    let mut c = connect(sink.db, &sink.name).await;
    let time = |col: &str| match sink.db {
        Db::Pg => format!("to_char({col}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
        Db::My => format!("DATE_FORMAT({col}, '%Y-%m-%dT%H:%i:%s.%f')"),
    };
    let dec = |col: &str| match sink.db {
        Db::Pg => format!("{col}::text"),
        Db::My => format!("CAST({col} AS CHAR)"),
    };
    for (table, key) in AGGREGATES {
        let want = match table {
            "orders_by_customer_daily" => common::reference::daily_rows(&orders),
            "orders_by_customer_7d" => common::reference::weekly_rows(&orders),
            _ => common::reference::session_rows(&orders),
        };
        let (bounds, measures) = match table {
            "orders_by_customer_daily" => (
                ["window_start", "window_end"],
                vec!["amount_sum", "amount_min", "amount_max"],
            ),
            "orders_by_customer_7d" => (["window_start", "window_end"], vec!["amount_sum"]),
            _ => (["session_start", "session_end"], vec!["amount_sum"]),
        };
        let count = "orders";
        let mut cols = vec![
            format!("{} AS {}", time(bounds[0]), bounds[0]),
            format!("{} AS {}", time(bounds[1]), bounds[1]),
            "customer_id".to_string(),
            count.to_string(),
        ];
        cols.extend(measures.iter().map(|m| format!("{} AS {m}", dec(m))));
        let rows = sqlx::query(&format!("SELECT {} FROM {table}", cols.join(", ")))
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("reading {table}: {e}"));
        let got: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                m.insert(bounds[0].into(), text(r, 0).into());
                m.insert(bounds[1].into(), text(r, 1).into());
                m.insert("customer_id".into(), r.try_get::<i64, _>(2).unwrap().into());
                m.insert(count.into(), r.try_get::<i64, _>(3).unwrap().into());
                for (i, name) in measures.iter().enumerate() {
                    m.insert((*name).into(), text(r, 4 + i).into());
                }
                m
            })
            .collect();
        let d = diff_rows(table, &got, &want, key);
        assert!(
            d.is_empty(),
            "{table}: {} rows in the sink, {} from the source's GROUP BY; differences: {:#?}",
            got.len(),
            want.len(),
            &d[..d.len().min(20)]
        );
    }
}

/// The joins in the sink equal the same joins computed by the source
/// database: `orders_with_customer` (a left join) and
/// `revenue_by_segment_daily` (a GROUP BY of an inner join).
async fn assert_joins_equal_source(source: Db, sink: &SinkDb) {
    let time = |db: Db, col: &str| match db {
        Db::Pg => format!("to_char({col}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
        Db::My => format!("DATE_FORMAT({col}, '%Y-%m-%dT%H:%i:%s.%f')"),
    };
    let dec = |db: Db, col: &str| match db {
        Db::Pg => format!("{col}::text"),
        Db::My => format!("CAST({col} AS CHAR)"),
    };
    let day = match source {
        Db::Pg => "date_trunc('day', o.placed_at)".to_string(),
        Db::My => "CAST(DATE(o.placed_at) AS DATETIME(6))".to_string(),
    };
    let left = |db: Db, from: &str| {
        format!(
            "SELECT order_id, customer_id, {}, status, {}, customer_name, customer_segment FROM {from}",
            dec(db, "amount"),
            time(db, "placed_at")
        )
    };
    let source_left =
        "(SELECT o.order_id, o.customer_id, o.amount, o.status, o.placed_at, c.name AS customer_name, c.segment AS customer_segment \
         FROM orders o LEFT JOIN customers c ON c.id = o.customer_id) j";
    let revenue = |db: Db, from: &str| {
        format!(
            "SELECT {}, segment, orders, {} FROM {from}",
            time(db, "window_start"),
            dec(db, "amount_sum")
        )
    };
    let source_revenue = format!(
        "(SELECT {day} AS window_start, c.segment, count(*) AS orders, sum(o.amount) AS amount_sum \
         FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY {day}, c.segment) j"
    );
    let left_row = |r: &sqlx::any::AnyRow| {
        let mut m = serde_json::Map::new();
        m.insert("order_id".into(), r.try_get::<i64, _>(0).unwrap().into());
        m.insert("customer_id".into(), r.try_get::<i64, _>(1).unwrap().into());
        for (i, c) in [
            (2, "amount"),
            (3, "status"),
            (4, "placed_at"),
            (5, "customer_name"),
            (6, "customer_segment"),
        ] {
            m.insert(c.into(), text(r, i).into());
        }
        m
    };
    let revenue_row = |r: &sqlx::any::AnyRow| {
        let mut m = serde_json::Map::new();
        m.insert("window_start".into(), text(r, 0).into());
        m.insert("segment".into(), text(r, 1).into());
        m.insert("orders".into(), r.try_get::<i64, _>(2).unwrap().into());
        m.insert("amount_sum".into(), text(r, 3).into());
        m
    };
    let mut src = connect(source, source_db(source)).await;
    let mut snk = connect(sink.db, &sink.name).await;
    for (table, key, want_sql, got_sql, row) in [
        (
            "orders_with_customer",
            &["order_id"][..],
            left(source, source_left),
            left(sink.db, "orders_with_customer"),
            &left_row as &dyn Fn(&sqlx::any::AnyRow) -> serde_json::Map<String, serde_json::Value>,
        ),
        (
            "revenue_by_segment_daily",
            &["window_start", "segment"][..],
            revenue(source, &source_revenue),
            revenue(sink.db, "revenue_by_segment_daily"),
            &revenue_row,
        ),
    ] {
        let want: Vec<serde_json::Value> = sqlx::query(&want_sql)
            .fetch_all(&mut src)
            .await
            .unwrap_or_else(|e| panic!("{want_sql}: {e}"))
            .iter()
            .map(|r| serde_json::Value::Object(row(r)))
            .collect();
        let got: Vec<serde_json::Map<String, serde_json::Value>> = sqlx::query(&got_sql)
            .fetch_all(&mut snk)
            .await
            .unwrap_or_else(|e| panic!("{got_sql}: {e}"))
            .iter()
            .map(row)
            .collect();
        assert!(!want.is_empty(), "{table}: the source's join is empty");
        let d = diff_rows(table, &got, &want, key);
        assert!(
            d.is_empty(),
            "{table}: {} rows in the sink, {} from the source's join; differences: {:#?}",
            got.len(),
            want.len(),
            &d[..d.len().min(20)]
        );
    }
}

/// `order_history` (keyed state) in the sink equals the history computed
/// from every event of the source's orders topic (but the poison records
/// tests put there, which are dead-lettered).
async fn assert_history_equals_topic(source: Db, sink: &SinkDb) {
    let stream: Vec<serde_json::Value> = kcat_consume(&source.topic("orders"), None, None)
        .iter()
        .filter(|l| !l.contains(POISON_MARK))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = common::reference::order_history_rows(&stream);
    let mut c = connect(sink.db, &sink.name).await;
    let rows = sqlx::query(
        "SELECT order_id, first_status, status, status_changes, versions FROM order_history",
    )
    .fetch_all(&mut c)
    .await
    .unwrap_or_else(|e| panic!("reading order_history: {e}"));
    let got: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            m.insert("order_id".into(), r.try_get::<i64, _>(0).unwrap().into());
            m.insert("first_status".into(), text(r, 1).into());
            m.insert("status".into(), text(r, 2).into());
            m.insert(
                "status_changes".into(),
                r.try_get::<i64, _>(3).unwrap().into(),
            );
            m.insert("versions".into(), r.try_get::<i64, _>(4).unwrap().into());
            m
        })
        .collect();
    let d = diff_rows("order_history", &got, &want, &["order_id"]);
    assert!(
        d.is_empty(),
        "order_history: {} rows in the sink, {} from the topic's events; differences: {:#?}",
        got.len(),
        want.len(),
        &d[..d.len().min(20)]
    );
}

/// `sluice run` from Kafka into `sink_url`, under pipeline `name`.
fn sluice_kafka(s: &Scratch, topics: &str, name: &str, sink_url: &str) -> Command {
    let mut c = sluice();
    c.args(["run", "--source", &format!("kafka://{BROKERS}")])
        .args(["--topics", topics, "--name", name, "--sink", sink_url])
        .arg("--plugins")
        .arg(s.path("plugins"));
    // runs into an audited sink write every change (see `audited_sink`)
    if s.path(AUDITED).exists() {
        c.arg(s.path(AUDITED));
    }
    c
}

/// The pipeline file of runs into an audited sink: every change is
/// written (no consolidation per key within a batch), so the audit can
/// count one row write per change event.
const AUDITED: &str = "audited.toml";

fn run_ok(mut c: Command) -> Output {
    c.arg("--until-caught-up");
    let out = output_within(c, Duration::from_secs(600));
    assert!(
        out.status.success(),
        "sluice failed: {}\n{}",
        out.status,
        stderr(&out)
    );
    out
}

/// Run Sluice until the sink reads like the source (Debezium may still be
/// delivering the workload's last changes), for at most `limit`.
async fn catch_up(source: Db, sink: &SinkDb, s: &Scratch, name: &str, limit: Duration) -> Rows {
    catch_up_with(source, sink, name, limit, || {
        sluice_kafka(s, source.topics(), name, &sink.url())
    })
    .await
}

/// [`catch_up`] with the given command for each run.
async fn catch_up_with(
    source: Db,
    sink: &SinkDb,
    name: &str,
    limit: Duration,
    command: impl Fn() -> Command,
) -> Rows {
    let started = Instant::now();
    let want = snapshot(source, source_db(source)).await;
    assert!(
        TABLES.iter().all(|(t, _)| !want[*t].is_empty()),
        "the source tables read as empty: {want:?}"
    );
    loop {
        let out = run_ok(command());
        let got = snapshot(sink.db, &sink.name).await;
        if got == want {
            return want;
        }
        if started.elapsed() > limit {
            let diff: Vec<String> = TABLES
                .iter()
                .flat_map(|(t, _)| {
                    let (w, g) = (&want[*t], &got[*t]);
                    let missing = w.iter().filter(|r| !g.contains(r)).take(5);
                    let extra = g.iter().filter(|r| !w.contains(r)).take(5);
                    let first = w.iter().zip(g.iter()).find(|(a, b)| a != b);
                    std::iter::once(format!(
                        "{t}: {} rows in the source, {} in the sink; first difference in order: {first:?}",
                        w.len(),
                        g.len()
                    ))
                    .chain(missing
                        .map(move |r| format!("{t}: source has {r:?}"))
                        .chain(extra.map(move |r| format!("{t}: sink has {r:?}"))))
                })
                .collect();
            panic!(
                "{:?} → {:?} ({name}): sink differs from source after {limit:?}:\n{}\nlast run:\n{}",
                source,
                sink.db,
                diff.join("\n"),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Dead letters in the sink other than the poison records the poison test
/// puts into the captured topics on purpose.
async fn unexpected_dead_letters(sink: &SinkDb) -> Vec<String> {
    let mut c = connect(sink.db, &sink.name).await;
    let rows = sqlx::query("SELECT topic, reason, record_value FROM sluice_dlq")
        .fetch_all(&mut c)
        .await
        .unwrap();
    rows.iter()
        .filter(|r| !text(r, 2).unwrap_or_default().contains(POISON_MARK))
        .map(|r| {
            format!(
                "{}: {}",
                text(r, 0).unwrap_or_default(),
                text(r, 1).unwrap_or_default()
            )
        })
        .collect()
}

/// A text column; MySQL's TEXT arrives as bytes through sqlx's Any driver.
fn text(r: &sqlx::any::AnyRow, i: usize) -> Option<String> {
    r.try_get::<Option<String>, _>(i).unwrap_or_else(|_| {
        r.try_get::<Option<Vec<u8>>, _>(i)
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap())
    })
}

const POISON_MARK: &str = "sluice-poison";

/// Put the sink's operator state back into the `sluice_state` table of
/// earlier versions (state by name, that version's DDL), as an upgrade
/// finds it; `stopped_moving` (MariaDB): as a move that stopped right after
/// renaming that table.
async fn downgrade_state_layout(sink: &SinkDb, stopped_moving: bool) {
    let mut c = connect(sink.db, &sink.name).await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM sluice_state")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(before > 0, "no state to move");
    let old_table = match sink.db {
        Db::Pg => {
            // The database's collation, as the first versions made it.
            "CREATE TABLE sluice_state_v0 (
                pipeline TEXT NOT NULL, operator TEXT NOT NULL, kind TEXT NOT NULL, k BYTEA NOT NULL,
                v BYTEA NOT NULL, expires BIGINT, PRIMARY KEY (pipeline, operator, kind, k))
                WITH (fillfactor = 50)"
        }
        Db::My => {
            "CREATE TABLE sluice_state_v0 (
                pipeline VARCHAR(190) NOT NULL, operator VARCHAR(190) NOT NULL, kind VARCHAR(4) NOT NULL,
                k VARBINARY(1024) NOT NULL, v LONGBLOB NOT NULL, expires BIGINT,
                PRIMARY KEY (pipeline, operator, kind, k),
                INDEX sluice_state_expiry (pipeline, operator, kind, expires))
                ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        }
    };
    for sql in [
        old_table,
        "INSERT INTO sluice_state_v0 SELECT pipeline, operator, kind, k, v, expires FROM sluice_state",
        "DROP VIEW sluice_state",
        "DROP TABLE sluice_state_rows",
        "DROP TABLE sluice_state_ids",
        if stopped_moving {
            "ALTER TABLE sluice_state_v0 RENAME TO sluice_state_moving"
        } else {
            "ALTER TABLE sluice_state_v0 RENAME TO sluice_state"
        },
    ] {
        sqlx::query(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let old = if stopped_moving {
        "sluice_state_moving"
    } else {
        "sluice_state"
    };
    let after: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {old}"))
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(after, before);
}

async fn pair(source: Db, sink_db: Db, label: &str) {
    if !stack_ready() {
        return;
    }
    let _lock = SOURCE_LOCK.lock().await;
    let sink = SinkDb::create(sink_db, label).await;
    workload(source, 40).await;
    let s = mirror_and_aggregates();
    let name = unique(label);
    let rows = catch_up(source, &sink, &s, &name, Duration::from_secs(120)).await;
    assert!(rows["customers"].len() >= 40 && rows["orders"].len() >= 60);
    assert_eq!(unexpected_dead_letters(&sink).await, Vec::<String>::new());
    assert_aggregates_equal_source(source, &sink).await;
    assert_joins_equal_source(source, &sink).await;
    assert_history_equals_topic(source, &sink).await;
    if sink_db == Db::Pg {
        // State rows are rewritten batch after batch: their table keeps
        // room on each page for heap-only updates.
        let mut c = connect(sink_db, &sink.name).await;
        let options: String = sqlx::query(
            "SELECT COALESCE(array_to_string(reloptions, ','), '') FROM pg_class \
             WHERE relname = 'sluice_state_rows' AND relnamespace = current_schema()::regnamespace",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
        assert_eq!(options, "fillfactor=50");
    }
    // The state as a Sluice before numbered state rows stored it: the
    // resume below moves it over and must go on from it exactly. Into
    // MariaDB from PostgreSQL: as a move that stopped after renaming it.
    downgrade_state_layout(&sink, label == "pgmy").await;
    // a second workload on top: the same pipeline resumes from its checkpoint
    workload(source, 10).await;
    catch_up(source, &sink, &s, &name, Duration::from_secs(120)).await;
    assert_aggregates_equal_source(source, &sink).await;
    assert_joins_equal_source(source, &sink).await;
    assert_history_equals_topic(source, &sink).await;
    let schema = match sink_db {
        Db::Pg => "current_schema()",
        Db::My => "DATABASE()",
    };
    let mut c = connect(sink_db, &sink.name).await;
    let views: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'sluice_state' \
         AND table_schema = {schema} AND table_type = 'VIEW'"
    ))
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(
        views, 1,
        "the old state table was moved and replaced by the view"
    );
    sink.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres_sink_equals_source() {
    pair(Db::Pg, Db::Pg, "pgpg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_mariadb_sink_equals_source() {
    pair(Db::My, Db::My, "mymy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_mariadb_sink_equals_source() {
    pair(Db::Pg, Db::My, "pgmy").await;
}

/// A whole topic (or one partition) read from the beginning with kcat, one
/// output line per record in kcat's `-f` format, or `-J` JSON if `format` is None.
fn kcat_consume(topic: &str, partition: Option<i32>, format: Option<&str>) -> Vec<String> {
    let mut c = Command::new("kcat");
    c.args([
        "-C",
        "-b",
        BROKERS,
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
        "-q",
    ]);
    if let Some(p) = partition {
        c.args(["-p", &p.to_string()]);
    }
    match format {
        Some(f) => c.args(["-f", f]),
        None => c.arg("-J"),
    };
    let out = c.output().unwrap();
    assert!(out.status.success(), "kcat -C {topic}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Non-tombstone records per topic: each is one sink write for `mirror`.
fn events_in_topic(topic: &str) -> i64 {
    kcat_consume(topic, None, Some("%S\\n"))
        .iter()
        .filter(|l| l.trim() != "-1")
        .count() as i64
}

/// The PostgreSQL workload of the crash test: many small transactions.
/// A workload of at least `rounds` transactions, going on while
/// `more` is set (up to four times as many), so a test that needs the host
/// at work never runs out of changes.
async fn long_workload_while(rounds: i64, more: Arc<AtomicBool>) {
    let mut c = connect(Db::Pg, "inventory").await;
    let base: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1000 FROM customers")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap();
    let obase: i64 = sqlx::query("SELECT COALESCE(MAX(order_id), 0) + 1000 FROM orders")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap();
    for i in 1..=4 * rounds {
        if i > rounds && !more.load(Ordering::Relaxed) {
            break;
        }
        let (id, oid) = (base + i, obase + 2 * i);
        let mut stmts = vec![
            format!("INSERT INTO customers (id, name, email, segment, vip, created_at) VALUES ({id}, 'crash {i} ✓', 'k{i}@example.com', 'smb', false, '2024-06-01 00:00:00.{:06}')", i % 1_000_000),
            format!("INSERT INTO orders (order_id, customer_id, amount, status, placed_at, note) VALUES ({oid}, {id}, {}.{:02}, 'NEW', '2025-02-01 00:00:00.{:06}', NULL), ({}, {id}, 1.00, 'NEW', '2025-02-01 00:00:01', 'x')", i % 9999, i % 100, i % 1_000_000, oid + 1),
            format!("UPDATE orders SET status = 'PAID', amount = amount + 1 WHERE order_id = {oid}"),
        ];
        if i % 4 == 1 {
            // moves between daily windows, sessions and customers
            stmts.push(format!(
                "UPDATE orders SET placed_at = placed_at + interval '{} days', customer_id = {} WHERE order_id = {oid}",
                i % 9,
                id - 1
            ));
        }
        if i % 3 == 0 {
            stmts.push(format!("DELETE FROM orders WHERE order_id = {}", oid + 1));
        }
        if i % 7 == 0 {
            stmts.push(format!(
                "UPDATE customers SET vip = true, email = NULL WHERE id = {}",
                id - 1
            ));
        }
        if i % 5 == 0 {
            // every order of the customer moves to another segment
            stmts.push(format!(
                "UPDATE customers SET segment = 'enterprise' WHERE id = {}",
                id - 1
            ));
        }
        if i % 50 == 0 {
            stmts.push(format!(
                "UPDATE customers SET id = {} WHERE id = {}",
                id + 10_000_000,
                id - 2
            ));
        }
        let mut tx = c.begin().await.unwrap();
        for s in &stmts {
            tx.execute(s.as_str()).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// An audit of every write Sluice makes to the mirrored tables, in the sink
/// itself, independent of Sluice's own counters. Sluice creates the tables.
///
/// - Committed writes, in `audit (tbl, kind, n)`: `upsert` (one per row an
///   INSERT … ON CONFLICT / ON DUPLICATE KEY touched), `delete_row` (rows a
///   DELETE removed) and, on PostgreSQL, `delete_attempt`: the keys every
///   DELETE statement named (a statement trigger counts its placeholders),
///   so a delete applied twice counts twice even though the second finds no
///   row. MariaDB has no statement triggers: there a repeated delete of a
///   gone row stays invisible (its upserts are still counted).
/// - Attempted writes, committed or not, in a side channel a rollback does
///   not undo (a sequence; a MyISAM table): attempts above the committed
///   writes prove that a transaction with writes in it was lost, i.e. that a
///   SIGKILL landed inside an open transaction.
///
/// PostgreSQL: an event trigger adds the row and statement triggers the
/// moment Sluice's `CREATE TABLE` runs (under SIGKILLs and several hosts, as
/// in production). MariaDB has no event triggers: a first pipeline lets
/// Sluice create the tables, they are emptied, then the triggers go in.
async fn audited_sink(sink: &SinkDb, s: &Scratch) {
    std::fs::write(s.path(AUDITED), "[batch]\nconsolidate = false\n").unwrap();
    let ddl: Vec<String> = match sink.db {
        Db::Pg => [
            "CREATE TABLE audit (tbl TEXT NOT NULL, kind TEXT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (tbl, kind))",
            "CREATE SEQUENCE audit_attempts",
            "CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               PERFORM nextval('audit_attempts');
               INSERT INTO audit VALUES (TG_TABLE_NAME, CASE WHEN TG_OP = 'DELETE' THEN 'delete_row' ELSE 'upsert' END, 1)
                 ON CONFLICT (tbl, kind) DO UPDATE SET n = audit.n + 1;
               RETURN NULL;
             END $$",
            r"CREATE FUNCTION audit_delete_statement() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO audit VALUES (TG_TABLE_NAME, 'delete_attempt', regexp_count(current_query(), '\$[0-9]+'))
                 ON CONFLICT (tbl, kind) DO UPDATE SET n = audit.n + EXCLUDED.n;
               RETURN NULL;
             END $$",
            "CREATE FUNCTION audit_new_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
             DECLARE r record;
             BEGIN
               FOR r IN SELECT objid, objid::regclass::text AS t FROM pg_event_trigger_ddl_commands() WHERE object_type = 'table' LOOP
                 IF r.t IN ('customers', 'orders')
                    AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = r.objid AND tgname = 'audit_rows') THEN
                   EXECUTE format('CREATE TRIGGER audit_rows AFTER INSERT OR UPDATE OR DELETE ON %I FOR EACH ROW EXECUTE FUNCTION audit_row()', r.t);
                   EXECUTE format('CREATE TRIGGER audit_deletes AFTER DELETE ON %I FOR EACH STATEMENT EXECUTE FUNCTION audit_delete_statement()', r.t);
                 END IF;
               END LOOP;
             END $$",
            "CREATE EVENT TRIGGER audit_new_tables ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION audit_new_tables()",
        ]
        .map(String::from)
        .to_vec(),
        Db::My => {
            run_ok(sluice_kafka(s, Db::Pg.topics(), &unique("setup"), &sink.url()));
            let mut my = vec![
                "DELETE FROM customers".to_string(),
                "DELETE FROM orders".to_string(),
                // aggregates of the setup pipeline (its state is its own)
                "DROP TABLE IF EXISTS orders_by_customer_daily, orders_by_customer_7d, orders_sessions"
                    .to_string(),
                "CREATE TABLE audit (tbl VARCHAR(64) NOT NULL, kind VARCHAR(16) NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (tbl, kind))".to_string(),
                "CREATE TABLE audit_attempts (n BIGINT NOT NULL) ENGINE=MyISAM".to_string(),
                "INSERT INTO audit_attempts VALUES (0)".to_string(),
            ];
            for (table, _) in TABLES {
                for (event, kind) in [("INSERT", "upsert"), ("UPDATE", "upsert"), ("DELETE", "delete_row")] {
                    my.push(format!(
                        "CREATE TRIGGER audit_{table}_{event} AFTER {event} ON {table} FOR EACH ROW BEGIN \
                         UPDATE audit_attempts SET n = n + 1; \
                         INSERT INTO audit VALUES ('{table}', '{kind}', 1) ON DUPLICATE KEY UPDATE n = n + 1; END"
                    ));
                }
            }
            my
        }
    };
    let mut c = connect(sink.db, &sink.name).await;
    for s in ddl {
        c.execute(s.as_str()).await.unwrap();
    }
}

/// Row writes attempted so far, committed or rolled back (the audit's side channel).
async fn attempted_writes(sink: &SinkDb) -> i64 {
    let sql = match sink.db {
        Db::Pg => "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM audit_attempts",
        Db::My => "SELECT n FROM audit_attempts",
    };
    let mut c = connect(sink.db, &sink.name).await;
    sqlx::query(sql)
        .fetch_one(&mut c)
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

/// Row writes committed so far (upserts and deleted rows).
async fn committed_writes(sink: &SinkDb) -> i64 {
    sum(sink, "n", "audit WHERE kind IN ('upsert', 'delete_row')")
        .await
        .unwrap()
}

/// Wait until a session on the sink database has a transaction open that
/// has written (a batch being committed: PostgreSQL assigns a transaction id
/// at the first write; InnoDB counts the rows modified), for at most `limit`.
async fn wait_for_open_transaction(sink: &SinkDb, limit: Duration) -> bool {
    let sql = match sink.db {
        Db::Pg => format!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_stat_activity WHERE datname = '{}' \
             AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL",
            sink.name
        ),
        Db::My => format!(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.innodb_trx t \
             JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
             WHERE p.db = '{}' AND p.id <> CONNECTION_ID() AND t.trx_rows_modified > 0",
            sink.name
        ),
    };
    let mut c = connect(sink.db, &sink.name).await;
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let open: i64 = sqlx::query(&sql)
            .fetch_one(&mut c)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        if open > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// `SUM(expr)` over `from` as a 64-bit integer (0 when no row matches).
async fn sum(sink: &SinkDb, expr: &str, from: &str) -> Result<i64, sqlx::Error> {
    let ty = match sink.db {
        Db::Pg => "BIGINT",
        Db::My => "SIGNED",
    };
    let mut c = connect(sink.db, &sink.name).await;
    sqlx::query(&format!(
        "SELECT CAST(COALESCE(SUM({expr}), 0) AS {ty}) FROM {from}"
    ))
    .fetch_one(&mut c)
    .await?
    .try_get::<i64, _>(0)
}

/// The audit of an [`audited_sink`]: exactly one write per change event in
/// the captured topics (poison records aside), deletes counted by the keys
/// the DELETE statements named where the database can tell (PostgreSQL), no
/// unexpected dead letters.
async fn assert_each_change_applied_once(sink: &SinkDb, context: &str) {
    for (table, _) in TABLES {
        let upserts = sum(
            sink,
            "n",
            &format!("audit WHERE tbl = '{table}' AND kind = 'upsert'"),
        )
        .await
        .unwrap();
        let deleted = sum(
            sink,
            "n",
            &format!("audit WHERE tbl = '{table}' AND kind = 'delete_row'"),
        )
        .await
        .unwrap();
        let deletes = match sink.db {
            Db::Pg => sum(
                sink,
                "n",
                &format!("audit WHERE tbl = '{table}' AND kind = 'delete_attempt'"),
            )
            .await
            .unwrap(),
            Db::My => deleted,
        };
        let events = events_in_topic(&Db::Pg.topic(table));
        let poison = poison_records(&Db::Pg.topic(table));
        assert_eq!(
            upserts + deletes,
            events - poison,
            "{table}: {upserts} upserts and {deletes} deletes ({deleted} rows deleted) for {events} change events ({poison} poison records); {context}"
        );
        assert_eq!(
            deletes, deleted,
            "{table}: a DELETE named a key that was already gone; {context}"
        );
    }
    assert_eq!(unexpected_dead_letters(sink).await, Vec::<String>::new());
}

/// Every log file in `dir`, in name order, each headed by its name.
fn read_logs(dir: &std::path::Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            format!(
                "--- {}\n{}",
                f.display(),
                std::fs::read_to_string(f).unwrap_or_default()
            )
        })
        .collect()
}

/// Sum of the next offsets a pipeline committed in the sink (0 before its
/// first commit, when there is no `sluice_offsets` yet).
async fn committed_offsets(sink: &SinkDb, name: &str) -> i64 {
    match sum(
        sink,
        "next_offset",
        &format!("sluice_offsets WHERE pipeline = '{name}'"),
    )
    .await
    {
        Ok(n) => n,
        Err(e) if missing_table(&e) => 0,
        Err(e) => panic!("reading sluice_offsets: {e}"),
    }
}

fn kill(child: &mut Child) {
    // SIGKILL: no chance to finish a batch or flush anything.
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_repeats_nothing() {
    crash_test(Db::Pg, 6000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_repeats_nothing_mariadb_sink() {
    crash_test(Db::My, 3000).await;
}

/// The host is killed with SIGKILL at random moments of a PostgreSQL workload
/// of `rounds` transactions, writing into a `sink_db` sink, and restarted each
/// time; then the sink must equal the source with every change applied once.
/// On PostgreSQL, a new pipeline then replays the topics for the throughput.
async fn crash_test(sink_db: Db, rounds: i64) {
    if !stack_ready() {
        return;
    }
    let _lock = SOURCE_LOCK.lock().await;
    let sink = SinkDb::create(sink_db, "crash").await;
    let s = mirror_and_aggregates();
    audited_sink(&sink, &s).await;
    let name = unique("crash");
    let logs = s.path("logs");
    std::fs::create_dir(&logs).unwrap();
    // The workload goes on until enough kills are proven, so the host always
    // has changes to write (a host caught up with an idle source opens no
    // transaction to kill).
    let more = Arc::new(AtomicBool::new(true));
    let work = tokio::spawn(long_workload_while(rounds, more.clone()));
    // pseudo-random kill moments, different on every run, shown on failure
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    // Each kill: after a random time, once the run has committed a batch,
    // at the next moment the sink shows a batch's transaction open. It provably landed inside that
    // transaction when the audit's side channel saw row writes that never
    // committed (attempted minus committed since the previous kill).
    let mut kills: Vec<(u128, bool, i64)> = Vec::new();
    let mut progress = Vec::new();
    let mut running = Duration::ZERO;
    let (mut attempted, mut committed) =
        (attempted_writes(&sink).await, committed_writes(&sink).await);
    let proven = |kills: &[(u128, bool, i64)]| kills.iter().filter(|k| k.2 > 0).count();
    while (!work.is_finished() || proven(&kills) < 3) && kills.len() < 16 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = Duration::from_millis(300 + seed % 2500);
        let log = std::fs::File::create(logs.join(format!("run-{:02}.log", kills.len()))).unwrap();
        let started = Instant::now();
        let mut child = sluice_kafka(&s, Db::Pg.topics(), &name, &sink.url())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let _guard = KillOnPanic(child.id());
        tokio::time::sleep(after).await;
        // At work: this run committed a batch of its own (stateful batches
        // from the topic's start can take longer than the random wait).
        let before = progress.last().copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while committed_offsets(&sink, &name).await <= before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let open = wait_for_open_transaction(&sink, Duration::from_secs(10)).await;
        kill(&mut child);
        running += started.elapsed();
        let (a, c) = (attempted_writes(&sink).await, committed_writes(&sink).await);
        kills.push((after.as_millis(), open, (a - attempted) - (c - committed)));
        (attempted, committed) = (a, c);
        progress.push(committed_offsets(&sink, &name).await);
        if proven(&kills) >= 3 {
            more.store(false, Ordering::Relaxed);
        }
    }
    more.store(false, Ordering::Relaxed);
    let proven = proven(&kills);
    assert!(
        proven >= 3,
        "only {proven} of {} kills provably landed inside an open transaction \
         (ms at work, transaction seen open, row writes lost): {kills:?}\nlogs:\n{}",
        kills.len(),
        read_logs(&logs)
    );
    eprintln!(
        "{proven} of {} kills landed inside an open transaction (ms at work, seen open, row writes rolled back): {kills:?}",
        kills.len()
    );
    work.await.unwrap();
    // The kills must hit a host at work, not one still starting up: the
    // committed offsets moved between most of them.
    let advanced = progress.windows(2).filter(|w| w[1] > w[0]).count()
        + usize::from(progress.first().is_some_and(|&p| p > 0));
    assert!(
        advanced >= 3,
        "the sink advanced in only {advanced} of {} runs (committed offsets after each kill: {progress:?})\nlogs:\n{}",
        kills.len(),
        read_logs(&logs)
    );
    eprintln!("committed offsets after each kill: {progress:?}");
    let started = Instant::now();
    let rows = catch_up(Db::Pg, &sink, &s, &name, Duration::from_secs(180)).await;
    let final_run = started.elapsed();
    assert_each_change_applied_once(
        &sink,
        &format!(
            "kills {kills:?}; logs of the killed runs:\n{}",
            read_logs(&logs)
        ),
    )
    .await;
    assert_aggregates_equal_source(Db::Pg, &sink).await;
    assert_joins_equal_source(Db::Pg, &sink).await;
    assert_history_equals_topic(Db::Pg, &sink).await;
    let total: i64 = TABLES
        .iter()
        .map(|(t, _)| events_in_topic(&Db::Pg.topic(t)))
        .sum();
    eprintln!(
        "crash test into {sink_db:?}: {} kills over {:.1}s of running, {} events, {} rows in the sink; final catch-up {:.1}s",
        kills.len(),
        running.as_secs_f64(),
        total,
        rows.values().map(Vec::len).sum::<usize>(),
        final_run.as_secs_f64()
    );
    sink.drop_it().await;
    if sink_db != Db::Pg {
        return;
    }

    // Throughput on the same topics: a new pipeline replays them whole into
    // a fresh PostgreSQL database (and must again equal the source).
    let fresh = SinkDb::create(Db::Pg, "tput").await;
    let tput = unique("tput");
    let out = run_ok(sluice_kafka(&s, Db::Pg.topics(), &tput, &fresh.url()));
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "crash-test topics replayed by a new pipeline: {}",
        summary.lines().next().unwrap_or("")
    );
    catch_up(Db::Pg, &fresh, &s, &tput, Duration::from_secs(60)).await;
    fresh.drop_it().await;
}

/// Several hosts of one pipeline (one consumer group, one sink) while the
/// group rebalances under a running workload: members join mid-stream, so
/// partitions move between hosts with batches in flight, and one member is
/// killed and restarted. Every change must still be applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_pipeline_through_rebalances_apply_each_change_once() {
    if !stack_ready() {
        return;
    }
    let _lock = SOURCE_LOCK.lock().await;
    let sink = SinkDb::create(Db::Pg, "group").await;
    let s = mirror_and_aggregates();
    audited_sink(&sink, &s).await;

    let name = unique("group");
    let logs = s.path("logs");
    std::fs::create_dir(&logs).unwrap();
    // Every change written (the audit), in long batches.
    std::fs::write(
        s.path(AUDITED),
        "[batch]\nconsolidate = false\nmax_records = 5000\nmax_wait = \"1500ms\"\nlinger = \"1500ms\"\n",
    )
    .unwrap();
    let mut started = 0;
    let mut member = |id: &str| -> Child {
        started += 1;
        let log = std::fs::File::create(logs.join(format!("{started}-{id}.log"))).unwrap();
        // Long batches keep records in flight for a while, so a partition
        // that moves meets a batch the fence must cut.
        sluice_kafka(&s, Db::Pg.topics(), &name, &sink.url())
            .args(["--instance-id", id])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    // The workload goes on until a batch met the fence (or enough members
    // came and went), so the test always has a moving group to prove it on.
    let more = Arc::new(AtomicBool::new(true));
    let work = tokio::spawn(long_workload_while(4000, more.clone()));
    let pause = || tokio::time::sleep(Duration::from_secs(3));
    let fenced_so_far = || {
        read_logs(&logs)
            .matches("another consumer of this pipeline already committed")
            .count()
    };
    let mut members = vec![member("a")];
    pause().await;
    members.push(member("b"));
    pause().await;
    members.push(member("c"));
    pause().await;
    // a static member restarted under its id takes its partitions back
    kill(&mut members[1]);
    // the fourth member started: a, b, c, then b again
    let restarted_log = logs.join("4-b.log");
    members[1] = member("b");
    pause().await;
    assert!(
        wait_for_log(
            &restarted_log,
            "partition assigned",
            Duration::from_secs(10)
        )
        .await,
        "the restarted static member b did not get its partitions back:\n{}",
        read_logs(&logs)
    );
    // More members join while the workload runs: every join moves
    // partitions, each a chance for an in-flight batch to meet the fence.
    for id in ["d", "e", "f", "g", "h", "i"] {
        if id > "e" && fenced_so_far() > 0 {
            break;
        }
        members.push(member(id));
        pause().await;
    }
    more.store(false, Ordering::Relaxed);
    work.await.unwrap();
    pause().await;
    let before_final = committed_offsets(&sink, &name).await;
    for m in &mut members {
        kill(m);
    }
    assert!(before_final > 0, "the members committed nothing");
    // What is left, with one consumer in a new group of the same pipeline
    // (the killed static members hold their partitions until their sessions
    // time out); it starts from the offsets the members committed.
    let group = unique("final");
    catch_up_with(Db::Pg, &sink, &name, Duration::from_secs(180), || {
        let mut c = sluice_kafka(&s, Db::Pg.topics(), &name, &sink.url());
        c.args(["--group", &group]);
        c
    })
    .await;
    let log_text = read_logs(&logs);
    assert_each_change_applied_once(&sink, &format!("member logs:\n{log_text}")).await;
    assert_aggregates_equal_source(Db::Pg, &sink).await;
    assert_joins_equal_source(Db::Pg, &sink).await;
    assert_history_equals_topic(Db::Pg, &sink).await;
    let moved = log_text.matches("partition revoked").count();
    assert!(moved > 0, "no partition moved between members:\n{log_text}");
    // The point of the test: batches in flight when their partition moved
    // were fenced at the sink (and the audit shows nothing applied twice).
    let fenced = log_text
        .matches("another consumer of this pipeline already committed")
        .count();
    assert!(
        fenced > 0,
        "no batch met the fence, so the test proved nothing about it:\n{log_text}"
    );
    eprintln!(
        "{moved} partition revocations; {fenced} batches fenced at the sink; offsets committed by the members: {before_final}"
    );
    sink.drop_it().await;
}

/// One batch for the fence tests: rows `ids` of table `t`, each written by
/// the record at the same offset of `topic`/0.
fn fence_batch(ids: std::ops::Range<i64>, v: &str) -> sluice::sink::SinkBatch {
    use sluice::model::{Column, ColumnType, RawRecord, RecordId, SinkTable, SinkWrite, Value};
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        nullable: name != "id",
        decimal: None,
    };
    let table = std::sync::Arc::new(SinkTable {
        name: "t".into(),
        columns: vec![col("id", ColumnType::Int), col("v", ColumnType::Text)],
        key: vec![0],
        rewritten: false,
    });
    let next = ids.end;
    sluice::sink::SinkBatch {
        records: (ids.end - ids.start) as u64,
        offsets: vec![("topic".into(), 0, next)],
        events: ids
            .map(|i| {
                sluice::sink::EventWrites::written(
                    RawRecord {
                        id: RecordId {
                            topic: "topic".into(),
                            partition: 0,
                            offset: i,
                        },
                        key: None,
                        value: Some(String::new()),
                        headers: Default::default(),
                        schema: None,
                    },
                    None,
                    vec![SinkWrite::Upsert {
                        table: table.clone(),
                        values: vec![Value::Int(i), Value::Text(v.into())],
                    }],
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// The fence on the real database: while the partition's new owner holds
/// its offset row (mid-transaction), a batch from the host that lost the
/// partition waits; once the owner commits, that batch applies only what
/// lies above the owner's offset, and the offset never goes back.
async fn fence(db: Db) {
    if !stack_ready() {
        return;
    }
    let sink_db = SinkDb::create(db, "fence").await;
    let mut old = sluice::sink::sql::SqlSink::open(&sink_db.url(), "fence", "p")
        .await
        .unwrap();
    old.commit(fence_batch(0..10, "first")).await.unwrap();

    // The new owner, mid-batch: it has locked the partition's offset row, as
    // Sluice's commit does first.
    let mut owner = connect(db, &sink_db.name).await;
    owner
        .execute(match db {
            Db::Pg => "SET lock_timeout = '3s'",
            Db::My => "SET SESSION innodb_lock_wait_timeout = 3",
        })
        .await
        .unwrap();
    let mut tx = owner.begin().await.unwrap();
    tx.execute("SELECT next_offset FROM sluice_offsets WHERE pipeline = 'p' AND topic = 'topic' AND kafka_partition = 0 FOR UPDATE")
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move {
        old.commit(fence_batch(5..20, "stale"))
            .await
            .map(|r| (old, r))
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !in_flight.is_finished(),
        "{db:?}: the stale batch committed while the owner held the partition"
    );
    // The stale batch must be waiting before its first write: the owner's
    // rows do not wait for it (they would time out after 3 s).
    tx.execute("INSERT INTO t (id, v) VALUES (10, 'owner'), (11, 'owner'), (12, 'owner'), (13, 'owner'), (14, 'owner')")
        .await
        .unwrap();
    tx.execute("UPDATE sluice_offsets SET next_offset = 15 WHERE pipeline = 'p' AND topic = 'topic' AND kafka_partition = 0")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (mut old, report) = in_flight.await.unwrap().unwrap();
    assert_eq!((report.writes, report.stale), (5, 10), "{db:?}");
    let mut c = connect(db, &sink_db.name).await;
    let rows: Vec<(i64, String)> = sqlx::query("SELECT id, v FROM t ORDER BY id")
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.try_get::<i64, _>(0).unwrap(), text(r, 1).unwrap()))
        .collect();
    let want: Vec<(i64, String)> = (0..20)
        .map(|i| {
            let v = match i {
                0..=9 => "first",
                10..=14 => "owner",
                _ => "stale",
            };
            (i, v.to_string())
        })
        .collect();
    assert_eq!(rows, want, "{db:?}");
    // a batch entirely below the committed offset applies nothing, moves nothing back
    let report = old.commit(fence_batch(3..8, "late")).await.unwrap();
    assert_eq!((report.writes, report.stale), (0, 5), "{db:?}");
    assert_eq!(
        old.load_offsets().await.unwrap(),
        std::collections::HashMap::from([(("topic".to_string(), 0), 20)])
    );
    drop(old);
    sink_db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_fences_a_batch_from_a_host_that_lost_the_partition() {
    fence(Db::Pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_sink_fences_a_batch_from_a_host_that_lost_the_partition() {
    fence(Db::My).await;
}

/// Records in the topic that carry the poison marker (none unless the
/// poison test ran before).
fn poison_records(topic: &str) -> i64 {
    kcat_consume(topic, None, Some("%s\\n"))
        .iter()
        .filter(|l| l.contains(POISON_MARK))
        .count() as i64
}

/// Highest offset in one partition (-1 when empty).
fn last_offset(topic: &str, partition: i32) -> i64 {
    kcat_consume(topic, Some(partition), Some("%o\\n"))
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(-1)
}

/// kcat -J records of a topic, from the beginning.
fn consume_json(topic: &str) -> Vec<serde_json::Value> {
    kcat_consume(topic, None, None)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// kcat -J headers (`["k1","v1","k2","v2",…]`) as pairs.
fn headers(record: &serde_json::Value) -> Vec<(String, String)> {
    let list = record["headers"].as_array().cloned().unwrap_or_default();
    list.chunks(2)
        .map(|kv| {
            (
                kv[0].as_str().unwrap_or("").to_string(),
                kv.get(1).and_then(|v| v.as_str()).unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_record_goes_to_the_dlq_topic_and_later_records_apply() {
    if !stack_ready() {
        return;
    }
    let _lock = SOURCE_LOCK.lock().await;
    let topic = Db::Pg.topic("orders");
    let nonce = unique(POISON_MARK);
    let key = r#"{"order_id":-1}"#;
    let value = format!(r#"{{"payload":{{"op":"c","after":"{nonce}"}}}}"#);
    let mut child = Command::new("kcat")
        .args(["-P", "-b", BROKERS, "-t", &topic, "-p", "0", "-K", "\t"])
        .args(["-H", "origin=poison-test"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{key}\t{value}").unwrap();
    }
    assert!(child.wait().unwrap().success(), "kcat -P");
    let poison_offset = consume_json(&topic)
        .into_iter()
        .find(|r| r["payload"].as_str().is_some_and(|p| p.contains(&nonce)))
        .expect("the poison record is in the topic")["offset"]
        .as_i64()
        .unwrap();

    // Real changes after it, until partition 0 holds some behind the poison.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        workload(Db::Pg, 10).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_offset(&topic, 0) > poison_offset {
            break;
        }
        assert!(Instant::now() < deadline, "no change landed in {topic}/0");
    }

    let sink = SinkDb::create(Db::Pg, "poison").await;
    let s = mirror();
    let name = unique("poison");
    // every real change, before and after the poison, is applied
    catch_up(Db::Pg, &sink, &s, &name, Duration::from_secs(120)).await;
    assert_eq!(unexpected_dead_letters(&sink).await, Vec::<String>::new());

    // the DLQ topic: original key, value and headers, plus Kafka Connect's error headers
    let dlq = consume_json(&format!("{name}.dlq"));
    let ours: Vec<_> = dlq
        .iter()
        .filter(|r| r["payload"].as_str().is_some_and(|p| p.contains(&nonce)))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "the poison record once in {name}.dlq: {dlq:?}"
    );
    let r = ours[0];
    assert_eq!(r["key"].as_str(), Some(key));
    assert_eq!(r["payload"].as_str(), Some(value.as_str()));
    let h = headers(r);
    let get = |k: &str| {
        h.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("header {k} missing: {h:?}"))
    };
    assert_eq!(get("origin"), "poison-test");
    assert_eq!(get("__connect.errors.topic"), topic);
    assert_eq!(get("__connect.errors.partition"), "0");
    assert_eq!(get("__connect.errors.offset"), poison_offset.to_string());
    assert_eq!(get("__connect.errors.stage"), "decode");
    assert_eq!(get("__connect.errors.connector.name"), name);
    let message = get("__connect.errors.exception.message");
    assert!(
        message.contains("row image is not a JSON object"),
        "{message}"
    );

    // the sink's own DLQ table holds it too, marked as published
    let mut c = connect(Db::Pg, &sink.name).await;
    let published: bool = sqlx::query(
        "SELECT published FROM sluice_dlq WHERE topic = $1 AND kafka_partition = 0 AND kafka_offset = $2",
    )
    .bind(&topic)
    .bind(poison_offset)
    .fetch_one(&mut c)
    .await
    .unwrap()
    .try_get(0)
    .unwrap();
    assert!(published);
    sink.drop_it().await;
}

/// A row's primary key as text (`1|2`), the same for sink rows and rows of
/// `pg_expected.json`.
fn key_text(row: &serde_json::Map<String, serde_json::Value>, key: &[&str]) -> String {
    key.iter()
        .map(|k| row[*k].to_string())
        .collect::<Vec<_>>()
        .join("|")
}

/// A sink of any kind for the tests that must hold on all three.
enum AnySink {
    Sql(SinkDb),
    Sqlite(std::path::PathBuf),
}

impl AnySink {
    async fn create(kind: &str, s: &Scratch, label: &str) -> AnySink {
        match kind {
            "postgres" => AnySink::Sql(SinkDb::create(Db::Pg, label).await),
            "mariadb" => AnySink::Sql(SinkDb::create(Db::My, label).await),
            _ => AnySink::Sqlite(s.path(&format!("{label}.db"))),
        }
    }

    fn url(&self) -> String {
        match self {
            AnySink::Sql(db) => db.url(),
            AnySink::Sqlite(path) => format!("sqlite:{}", path.display()),
        }
    }

    /// Each fixture table's primary keys, as sorted text tuples.
    async fn keys(&self, table: &str, key: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = match self {
            AnySink::Sqlite(path) => tokio::task::block_in_place(|| {
                query(path, &format!("SELECT {} FROM {table}", key.join(", ")))
            })
            .iter()
            .map(|r| key_text(r, key))
            .collect(),
            AnySink::Sql(db) => {
                let cols: Vec<String> =
                    key.iter().map(|k| canonical(db.db, k, Kind::Int)).collect();
                let mut c = connect(db.db, &db.name).await;
                sqlx::query(&format!("SELECT {} FROM {table}", cols.join(", ")))
                    .fetch_all(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{table}: {e}"))
                    .iter()
                    .map(|r| {
                        (0..key.len())
                            .map(|i| text(r, i).unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join("|")
                    })
                    .collect()
            }
        };
        keys.sort();
        keys
    }

    async fn drop_it(self) {
        if let AnySink::Sql(db) = self {
            db.drop_it().await;
        }
    }
}

/// Several hosts of one pipeline started at the same instant on a fresh
/// database: all of them start (bookkeeping and sink-table DDL tolerate a
/// concurrent creator), all finish, and the sink holds the source's rows.
async fn hosts_starting_together(kind: &str) {
    if !stack_ready() {
        return;
    }
    const HOSTS: usize = 4;
    for round in 0..3 {
        let s = mirror();
        let sink = AnySink::create(kind, &s, "together").await;
        let name = unique("together");
        let fixture_file = fixture("pg_events.schemas.jsonl");
        let children: Vec<Child> = (0..HOSTS)
            .map(|_| {
                let mut c = sluice();
                c.args([
                    "run",
                    "--name",
                    &name,
                    "--until-caught-up",
                    "--max-batch",
                    "20",
                ])
                .arg("--source")
                .arg(format!("file:{}", fixture_file.display()))
                .args(["--sink", &sink.url()])
                .arg("--plugins")
                .arg(s.path("plugins"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
                c.spawn().unwrap()
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{kind}, round {round}: host {i} of {HOSTS} started together failed: {}\n{}",
                out.status,
                stderr(&out)
            );
        }
        let exp = expected(&fixture("pg_expected.json"));
        for (table, key) in PG_KEYS {
            let mut want: Vec<String> = exp[*table]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| key_text(r.as_object().unwrap(), key))
                .collect();
            want.sort();
            assert_eq!(
                sink.keys(table, key).await,
                want,
                "{kind}, round {round}: {table}"
            );
        }
        sink.drop_it().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_together_on_a_fresh_postgres_sink_all_start() {
    hosts_starting_together("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_together_on_a_fresh_mariadb_sink_all_start() {
    hosts_starting_together("mariadb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_together_on_a_fresh_sqlite_sink_all_start() {
    hosts_starting_together("sqlite").await;
}

/// Wait until `log` contains `needle`, for at most `limit`.
async fn wait_for_log(log: &std::path::Path, needle: &str, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The reported hang: a static member of a fully consumed group is killed
/// and restarted with `--until-caught-up` while other members are live and
/// the group rebalances; the restart is caught up before its first poll and
/// meets its assignment (and a second rebalance) while closing. It must end
/// at once (exit 0, summary printed), every time, whatever the sink.
async fn until_caught_up_after_a_killed_static_member(kind: &str) {
    if !stack_ready() {
        return;
    }
    const TRIES: usize = 6;
    let _lock = SOURCE_LOCK.lock().await;
    let s = mirror();
    let sink = AnySink::create(kind, &s, "restart").await;
    let name = unique("restart");
    let logs = s.path("logs");
    std::fs::create_dir(&logs).unwrap();
    let member = |id: &str, until: bool, log: &std::path::Path| -> Child {
        let mut c = sluice_kafka(&s, Db::Pg.topics(), &name, &sink.url());
        c.args(["--instance-id", id]);
        if until {
            c.arg("--until-caught-up");
        }
        c.stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    // everything consumed, then two live members hold the group
    let mut first = member("x", true, &logs.join("first.log"));
    let done = tokio::task::block_in_place(|| exit_within(&mut first, Duration::from_secs(300)));
    assert!(
        done.is_some_and(|st| st.success()),
        "the first run ended with {done:?} (None: still ran after 300 s):\n{}",
        std::fs::read_to_string(logs.join("first.log")).unwrap()
    );
    let mut live: Vec<Child> = ["y", "z"]
        .iter()
        .map(|id| member(id, false, &logs.join(format!("{id}.log"))))
        .collect();
    let _guards: Vec<KillOnPanic> = live.iter().map(|c| KillOnPanic(c.id())).collect();
    for id in ["y", "z"] {
        wait_for_log(
            &logs.join(format!("{id}.log")),
            "partition assigned",
            Duration::from_secs(20),
        )
        .await;
    }
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    for i in 0..TRIES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let log = logs.join(format!("x-{i}.log"));
        let mut x = member("x", false, &log);
        let assigned = wait_for_log(&log, "partition assigned", Duration::from_secs(20)).await;
        assert!(
            assigned,
            "{kind}: x never got a partition:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(seed % 1000)).await;
        kill(&mut x);
        // a member (re)joining at the same moment makes the group rebalance
        // while the restarted x closes (one static id, so killed copies do
        // not pile up in the group holding partitions)
        let mut churn = member("q", false, &logs.join(format!("q-{i}.log")));
        tokio::time::sleep(Duration::from_millis(seed % 300)).await;
        let log = logs.join(format!("restart-{i}.log"));
        let started = Instant::now();
        let mut restart = member("x", true, &log);
        let status =
            tokio::task::block_in_place(|| exit_within(&mut restart, Duration::from_secs(60)));
        kill(&mut churn);
        let text = std::fs::read_to_string(&log).unwrap();
        let summary = std::fs::read_to_string(log.with_extension("out")).unwrap();
        match status {
            Some(st) if st.success() => {}
            Some(st) => panic!("{kind}, try {i}: the restart failed ({st}):\n{text}"),
            None => panic!("{kind}, try {i}: --until-caught-up on a consumed group still ran after 60 s:\n{text}"),
        }
        assert!(
            summary.contains("read 0 records"),
            "{kind}, try {i}: the sink held everything, so nothing is read: {summary}\n{text}"
        );
        eprintln!(
            "{kind}, try {i}: the restart ended in {:.2}s ({} partitions assigned while it closed)",
            started.elapsed().as_secs_f64(),
            text.matches("partition assigned").count()
        );
    }
    for m in &mut live {
        kill(m);
    }
    sink.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_caught_up_ends_after_a_killed_static_member_mariadb_sink() {
    until_caught_up_after_a_killed_static_member("mariadb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_caught_up_ends_after_a_killed_static_member_postgres_sink() {
    until_caught_up_after_a_killed_static_member("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_caught_up_ends_after_a_killed_static_member_sqlite_sink() {
    until_caught_up_after_a_killed_static_member("sqlite").await;
}
