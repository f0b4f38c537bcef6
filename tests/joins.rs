//! Joins through the real binary: the example plugins `orders_with_customer`
//! (left join into a table), `revenue_by_segment` (aggregation of an inner
//! join) and `order_totals` (aggregation of a one-to-many inner join), each
//! alone in a plugin folder, against the same joins computed here from the
//! source tables (`pg_expected.json`, then edited by the test together with
//! the change events it appends), without any of Sluice's code. Lookups
//! (`tests/guests/order_segment`) against the stream walked in order here;
//! an interval join (`tests/guests/first_year_orders`) with expiry and a
//! late row.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Duration};
use common::reference::{decimal, local, micros, text};
use common::stream::{envelope, lines, set_envelope, write_lines};
use common::*;
use serde_json::{json, Value as Json};

/// Primary-key columns of the fixture's tables.
fn key_columns(table: &str) -> &'static [&'static str] {
    match table {
        "customers" | "products" => &["id"],
        "orders" => &["order_id"],
        "order_lines" => &["order_id", "line_no"],
        other => panic!("no table {other}"),
    }
}

/// The fixture's stream with change events appended, and the source
/// tables as those events leave them (the independent truth).
struct Cdc {
    stream: Vec<Json>,
    /// Per table: its last event with a value (schema, envelope).
    templates: HashMap<String, Json>,
    offsets: HashMap<String, i64>,
    lsn: i64,
    tables: BTreeMap<String, Vec<Json>>,
}

impl Cdc {
    fn from_fixture() -> Cdc {
        let stream = lines(&fixture("pg_events.schemas.jsonl"));
        let mut templates = HashMap::new();
        let mut offsets: HashMap<String, i64> = HashMap::new();
        for l in &stream {
            let table = table_of(l);
            *offsets.entry(table.clone()).or_insert(0) += 1;
            if !l["payload"].is_null() {
                templates.insert(table, l.clone());
            }
        }
        let tables = expected(&fixture("pg_expected.json"))
            .into_iter()
            .map(|(t, rows)| (t, rows.as_array().unwrap().clone()))
            .collect();
        Cdc {
            stream,
            templates,
            offsets,
            lsn: 950_000_000,
            tables,
        }
    }

    fn rows(&self, table: &str) -> &[Json] {
        &self.tables[table]
    }

    fn find(&self, table: &str, key: &Json) -> Option<Json> {
        let cols = key_columns(table);
        self.tables[table]
            .iter()
            .find(|r| cols.iter().all(|c| r[*c] == key[*c]))
            .cloned()
    }

    /// An event line of `table` keyed like `image`.
    fn line(&mut self, table: &str, image: &Json) -> Json {
        let mut line = self.templates[table].clone();
        let offset = self.offsets.entry(table.to_string()).or_insert(0);
        line["offset"] = json!(*offset);
        *offset += 1;
        let mut k: Json = serde_json::from_str(line["key"].as_str().unwrap()).unwrap();
        for c in key_columns(table) {
            k["payload"][*c] = image[*c].clone();
        }
        line["key"] = Json::String(k.to_string());
        line
    }

    /// Append a Debezium change of `table` (images as `pg_expected.json`
    /// rows) and apply it to the tables.
    fn change(&mut self, table: &str, op: &str, before: Option<&Json>, after: Option<&Json>) {
        let image = after.or(before).unwrap().clone();
        let mut line = self.line(table, &image);
        let mut env = envelope(&line).unwrap();
        let fields = after_fields(&env);
        env["payload"]["op"] = json!(op);
        env["payload"]["before"] = before.map_or(Json::Null, |r| encode(&fields, r));
        env["payload"]["after"] = after.map_or(Json::Null, |r| encode(&fields, r));
        self.lsn += 8;
        env["payload"]["source"]["lsn"] = json!(self.lsn);
        env["payload"]["source"]["snapshot"] = json!("false");
        set_envelope(&mut line, &env);
        self.stream.push(line);
        let cols = key_columns(table);
        let rows = self.tables.get_mut(table).unwrap();
        if let Some(b) = before {
            rows.retain(|r| !cols.iter().all(|c| r[*c] == b[*c]));
        }
        if let Some(a) = after {
            rows.retain(|r| !cols.iter().all(|c| r[*c] == a[*c]));
            rows.push(a.clone());
        }
    }

    fn create(&mut self, table: &str, row: Json) {
        self.change(table, "c", None, Some(&row));
    }

    /// Update the row with `row`'s key to `row`.
    fn update(&mut self, table: &str, row: Json) {
        let before = self.find(table, &row).expect("updating a row that exists");
        self.change(table, "u", Some(&before), Some(&row));
    }

    /// Delete the row with `key`, then its tombstone.
    fn delete(&mut self, table: &str, key: Json) {
        let before = self.find(table, &key).expect("deleting a row that exists");
        self.change(table, "d", Some(&before), None);
        let mut tomb = self.line(table, &before);
        tomb["payload"] = Json::Null;
        self.stream.push(tomb);
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        write_lines(dir, name, &self.stream)
    }

    /// Append `line` again at the next offset of its table's topic (as
    /// Debezium re-sends after a restart).
    fn redeliver(&mut self, mut line: Json) {
        let offset = self.offsets.entry(table_of(&line)).or_insert(0);
        line["offset"] = json!(*offset);
        *offset += 1;
        self.stream.push(line);
    }

    fn clone_stream(&self) -> Vec<Json> {
        self.stream.clone()
    }
}

fn table_of(line: &Json) -> String {
    let topic = line["topic"].as_str().unwrap();
    topic.rsplit('.').next().unwrap().to_string()
}

/// The `after` struct's fields of an envelope's schema.
fn after_fields(env: &Json) -> Vec<Json> {
    env["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "after")
        .unwrap()["fields"]
        .as_array()
        .unwrap()
        .clone()
}

/// A row (as `pg_expected.json` writes it) in Debezium's encoding for
/// `fields`: decimals as base64 two's complement, micro-timestamps as
/// numbers, zoned timestamps as UTC text.
fn encode(fields: &[Json], row: &Json) -> Json {
    let mut out = serde_json::Map::new();
    for f in fields {
        let name = f["field"].as_str().unwrap();
        let v = &row[name];
        let encoded = match (f["name"].as_str(), v) {
            (_, Json::Null) => Json::Null,
            (Some("org.apache.kafka.connect.data.Decimal"), v) => {
                let scale: u32 = f["parameters"]["scale"].as_str().unwrap().parse().unwrap();
                let unscaled = micros(v).unwrap() / 10i128.pow(6 - scale);
                let bytes = two_complement(unscaled as i64);
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            (Some("io.debezium.time.MicroTimestamp"), Json::String(s)) => {
                json!(local(s).and_utc().timestamp_micros())
            }
            (Some("io.debezium.time.ZonedTimestamp"), Json::String(s)) => {
                let t = DateTime::parse_from_rfc3339(s).unwrap().to_utc();
                json!(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
            }
            (_, v) => v.clone(),
        };
        out.insert(name.to_string(), encoded);
    }
    Json::Object(out)
}

fn two_complement(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    bytes[start..].to_vec()
}

// ---- the joins, computed from the tables -----------------------------------

/// `orders LEFT JOIN customers ON customer_id = id`.
fn orders_with_customer(cdc: &Cdc) -> Vec<Json> {
    cdc.rows("orders")
        .iter()
        .map(|o| {
            let c = cdc
                .rows("customers")
                .iter()
                .find(|c| !o["customer_id"].is_null() && c["id"] == o["customer_id"]);
            json!({
                "order_id": o["order_id"], "customer_id": o["customer_id"],
                "amount": o["amount"].as_f64().map(|_| decimal(micros(&o["amount"]).unwrap())),
                "status": o["status"], "placed_at": o["placed_at"],
                "customer_name": c.map_or(Json::Null, |c| c["name"].clone()),
                "customer_segment": c.map_or(Json::Null, |c| c["segment"].clone()),
            })
        })
        .collect()
}

/// `SELECT day(placed_at), segment, count(*), sum(amount) FROM orders JOIN
/// customers ON customer_id = id GROUP BY 1, 2`.
fn revenue_by_segment(cdc: &Cdc) -> Vec<Json> {
    let mut groups: BTreeMap<(String, String), (i64, Option<i128>)> = BTreeMap::new();
    for o in cdc.rows("orders") {
        let Some(c) = cdc
            .rows("customers")
            .iter()
            .find(|c| !o["customer_id"].is_null() && c["id"] == o["customer_id"])
        else {
            continue;
        };
        let day = local(o["placed_at"].as_str().unwrap())
            .date()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        let segment = c["segment"].as_str().unwrap_or("").to_string();
        assert!(!c["segment"].is_null(), "the fixture's segments are set");
        let g = groups.entry((text(day), segment)).or_insert((0, None));
        g.0 += 1;
        if let Some(m) = micros(&o["amount"]) {
            g.1 = Some(g.1.unwrap_or(0) + m);
        }
    }
    groups
        .into_iter()
        .map(|((day, segment), (n, sum))| {
            let end = text(local(&day) + Duration::days(1));
            json!({"window_start": day, "window_end": end, "segment": segment,
                   "orders": n, "amount_sum": sum.map(decimal)})
        })
        .collect()
}

/// Per order that exists, over its lines: count, sum(qty), sum(qty * unit_price).
fn order_totals(cdc: &Cdc) -> Vec<Json> {
    let mut out = Vec::new();
    for o in cdc.rows("orders") {
        let lines: Vec<&Json> = cdc
            .rows("order_lines")
            .iter()
            .filter(|l| l["order_id"] == o["order_id"])
            .collect();
        if lines.is_empty() {
            continue;
        }
        let items: i64 = lines.iter().filter_map(|l| l["qty"].as_i64()).sum();
        let total: i128 = lines
            .iter()
            .filter_map(|l| Some(l["qty"].as_i64()? as i128 * micros(&l["unit_price"])?))
            .sum();
        out.push(
            json!({"order_id": o["order_id"], "lines": lines.len(), "items": items,
                        "total": decimal(total)}),
        );
    }
    out
}

const EXAMPLES: [(&str, &str, &[&str]); 3] = [
    (
        "orders_with_customer",
        "orders_with_customer",
        &["order_id"],
    ),
    (
        "revenue_by_segment",
        "revenue_by_segment_daily",
        &["window_start", "segment"],
    ),
    ("order_totals", "order_totals", &["order_id"]),
];

fn reference(example: &str, cdc: &Cdc) -> Vec<Json> {
    match example {
        "orders_with_customer" => orders_with_customer(cdc),
        "revenue_by_segment" => revenue_by_segment(cdc),
        "order_totals" => order_totals(cdc),
        other => panic!("no example {other}"),
    }
}

/// Each example alone over `stream`, in large batches and in batches of 3
/// (state carried between commits), equals its join of `cdc`'s tables;
/// nothing is dead-lettered.
fn assert_examples(stream: &Path, cdc: &Cdc) {
    for (example, table, key) in EXAMPLES {
        let want = reference(example, cdc);
        assert!(!want.is_empty(), "{example}: the reference is empty");
        for batch in ["10000", "3"] {
            let s = Scratch::new(&[(example, example)]);
            let out = s.run(stream, &["--max-batch", batch]);
            let log = stderr(&out);
            assert!(log.contains(&format!("{example}: ")), "{log}");
            let d = diff_table(&s.db(), table, &want, key);
            assert!(d.is_empty(), "{example}, batches of {batch}: {d:#?}\n{log}");
            let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
            assert!(dlq.is_empty(), "{example}: {dlq:?}");
        }
    }
}

#[test]
fn each_join_example_equals_the_join_of_the_source_tables() {
    let cdc = Cdc::from_fixture();
    let dir = tempfile::tempdir().unwrap();
    assert_examples(&cdc.write(dir.path(), "fixture.jsonl"), &cdc);
}

/// Both sides churn after the fixture: a customer changes segment and
/// name, an order moves to another customer, an order's customer is
/// deleted, a line is deleted, a line moves to another order (its primary
/// key changes), an order loses all its lines, a new order and its lines.
#[test]
fn joins_follow_changes_on_both_sides() {
    let mut cdc = Cdc::from_fixture();
    let orders = cdc.rows("orders").to_vec();
    let customers = cdc.rows("customers").to_vec();
    // 1. a customer with orders changes segment and name
    let busy = customers
        .iter()
        .max_by_key(|c| {
            orders
                .iter()
                .filter(|o| o["customer_id"] == c["id"])
                .count()
        })
        .unwrap()
        .clone();
    let mut moved = busy.clone();
    moved["segment"] = json!(if busy["segment"] == "enterprise" {
        "smb"
    } else {
        "enterprise"
    });
    moved["name"] = json!("Renamed Customer");
    cdc.update("customers", moved);
    // 2. an order moves to another customer
    let mut order = orders[0].clone();
    let other = customers
        .iter()
        .find(|c| c["id"] != order["customer_id"])
        .unwrap();
    order["customer_id"] = other["id"].clone();
    cdc.update("orders", order);
    // 3. a customer with orders is deleted
    let gone = customers
        .iter()
        .find(|c| c["id"] != busy["id"] && orders.iter().any(|o| o["customer_id"] == c["id"]))
        .unwrap()
        .clone();
    cdc.delete("customers", json!({"id": gone["id"]}));
    // 4. a line is deleted; 5. another line moves to another order
    let lines = cdc.rows("order_lines").to_vec();
    cdc.delete("order_lines", lines[0].clone());
    let mut moved_line = lines[1].clone();
    cdc.delete("order_lines", lines[1].clone());
    let target = orders
        .iter()
        .find(|o| o["order_id"] != lines[1]["order_id"])
        .unwrap();
    moved_line["order_id"] = target["order_id"].clone();
    moved_line["line_no"] = json!(900);
    cdc.create("order_lines", moved_line);
    // 6. an order loses all its lines
    let emptied = cdc.rows("order_lines")[0]["order_id"].clone();
    for l in cdc.rows("order_lines").to_vec() {
        if l["order_id"] == emptied {
            cdc.delete("order_lines", l);
        }
    }
    // 7. a new order with two lines, its customer existing
    let new_order = json!({"order_id": 77001, "customer_id": busy["id"], "amount": 31.5,
        "status": "NEW", "placed_at": "2030-01-02T03:04:05.000006", "note": null});
    cdc.create("orders", new_order);
    for (n, qty, price) in [(1, 3, 1.1), (2, 2, 0.05)] {
        cdc.create(
            "order_lines",
            json!({"order_id": 77001, "line_no": n, "product_id": 1, "qty": qty, "unit_price": price}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    assert_examples(&cdc.write(dir.path(), "churn.jsonl"), &cdc);
}

/// Orders arrive before their customer: the left join writes them with
/// nulls, then fills them in when the customer arrives (in a later run of
/// the same pipeline, resumed from the sink's checkpoint); the inner join
/// counts them only then. Deleting the customer again: nulls, retracted.
#[test]
fn a_customer_arriving_after_its_orders_fills_them_in_and_its_delete_empties_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cdc = Cdc::from_fixture();
    for (id, hours) in [(88001, 1), (88002, 30)] {
        let placed = local("2030-03-01T00:00:00") + Duration::hours(hours);
        cdc.create(
            "orders",
            json!({"order_id": id, "customer_id": 4242, "amount": 12.25, "status": "NEW",
                   "placed_at": text(placed), "note": null}),
        );
    }
    // each phase: the stream so far and the joins of the tables then
    let mut phases = Vec::new();
    let snapshot = |cdc: &Cdc, name: &str| {
        let path = cdc.write(dir.path(), name);
        (path, orders_with_customer(cdc), revenue_by_segment(cdc))
    };
    phases.push(snapshot(&cdc, "before.jsonl"));
    cdc.create(
        "customers",
        json!({"id": 4242, "name": "Late Comer", "email": null, "segment": "retail",
               "vip": false, "created_at": "2030-03-02T00:00:00+00:00"}),
    );
    phases.push(snapshot(&cdc, "arrived.jsonl"));
    cdc.delete("customers", json!({"id": 4242}));
    phases.push(snapshot(&cdc, "deleted.jsonl"));
    let left = Scratch::new(&[("orders_with_customer", "orders_with_customer")]);
    let inner = Scratch::new(&[("revenue_by_segment", "revenue_by_segment")]);
    for (i, (phase, want_left, want_inner)) in phases.iter().enumerate() {
        let out = left.run(phase, &[]);
        let d = diff_table(&left.db(), "orders_with_customer", want_left, &["order_id"]);
        assert!(d.is_empty(), "phase {i}: {d:#?}\n{}", stderr(&out));
        let row = query(
            &left.db(),
            "SELECT customer_name FROM orders_with_customer WHERE order_id = 88002",
        );
        let expect = if i == 1 {
            json!("Late Comer")
        } else {
            Json::Null
        };
        assert_eq!(row[0]["customer_name"], expect, "phase {i}");
        let out = inner.run(phase, &[]);
        let d = diff_table(
            &inner.db(),
            "revenue_by_segment_daily",
            want_inner,
            &["window_start", "segment"],
        );
        assert!(d.is_empty(), "phase {i}: {d:#?}\n{}", stderr(&out));
    }
}

/// Each order with its customer's segment when the order last changed,
/// computed by walking `stream` in order: a customer change counts from its
/// position on, an order's last change (by the Kafka key) wins, a delete
/// removes it; on both tables a change not newer than the row's last (by
/// LSN) is a re-delivery and changes nothing.
fn order_segments(stream: &[Json]) -> Vec<Json> {
    let mut customers: HashMap<i64, (i64, Option<Json>)> = HashMap::new();
    let mut orders: BTreeMap<i64, Json> = BTreeMap::new();
    let mut order_lsn: HashMap<i64, i64> = HashMap::new();
    for line in stream {
        let Some(env) = envelope(line) else { continue };
        let p = &env["payload"];
        let key: Json = serde_json::from_str(line["key"].as_str().unwrap()).unwrap();
        let deleted = p["op"] == "d";
        match table_of(line).as_str() {
            "customers" => {
                let id = key["payload"]["id"].as_i64().unwrap();
                let lsn = p["source"]["lsn"].as_i64().unwrap();
                if customers.get(&id).is_some_and(|(seen, _)| lsn <= *seen) {
                    continue;
                }
                let row = (!deleted).then(|| p["after"].clone());
                customers.insert(id, (lsn, row));
            }
            "orders" => {
                let id = key["payload"]["order_id"].as_i64().unwrap();
                let lsn = p["source"]["lsn"].as_i64().unwrap();
                if order_lsn.get(&id).is_some_and(|seen| lsn <= *seen) {
                    continue;
                }
                order_lsn.insert(id, lsn);
                if deleted {
                    orders.remove(&id);
                    continue;
                }
                let customer = p["after"]["customer_id"].clone();
                let segment = customer
                    .as_i64()
                    .and_then(|c| customers.get(&c))
                    .and_then(|(_, row)| row.as_ref())
                    .map_or(Json::Null, |row| row["segment"].clone());
                orders.insert(
                    id,
                    json!({"order_id": id, "customer_id": customer, "segment": segment}),
                );
            }
            _ => {}
        }
    }
    orders.into_values().collect()
}

/// A lookup reads the customer as of each order change, in the order of
/// the stream: within one batch, across batches and across runs resumed
/// from the sink (the looked-up table is read back from the sink's state).
/// After the fixture: orders change around a customer's segment changes
/// (one order before, one after), a customer is deleted between two
/// changes of its order, a customer arrives after its order and a
/// re-delivered old customer event changes nothing.
#[test]
fn a_lookup_reads_the_customer_as_of_each_order_change() {
    let mut cdc = Cdc::from_fixture();
    let orders = cdc.rows("orders").to_vec();
    let customers = cdc.rows("customers").to_vec();
    let with_orders: Vec<Json> = customers
        .iter()
        .filter(|c| {
            orders
                .iter()
                .filter(|o| o["customer_id"] == c["id"])
                .count()
                >= 2
        })
        .cloned()
        .collect();
    assert!(
        with_orders.len() >= 2,
        "the fixture has customers with two orders"
    );
    let touch = |cdc: &mut Cdc, order: &Json, status: &str| {
        let mut o = cdc.find("orders", order).unwrap();
        o["status"] = json!(status);
        cdc.update("orders", o);
    };
    // a segment change between two orders of the customer
    let busy = with_orders[0].clone();
    let mine: Vec<Json> = orders
        .iter()
        .filter(|o| o["customer_id"] == busy["id"])
        .cloned()
        .collect();
    touch(&mut cdc, &mine[0], "BEFORE");
    let mut moved = cdc.find("customers", &busy).unwrap();
    moved["segment"] = json!("moved-segment");
    cdc.update("customers", moved);
    touch(&mut cdc, &mine[1], "AFTER");
    // a re-delivery of the customer's first event: not newer, ignored
    let first = cdc
        .stream
        .iter()
        .find(|l| {
            table_of(l) == "customers"
                && serde_json::from_str::<Json>(l["key"].as_str().unwrap()).unwrap()["payload"]
                    ["id"]
                    == busy["id"]
        })
        .unwrap()
        .clone();
    cdc.redeliver(first);
    touch(&mut cdc, &mine[1], "AFTER-REDELIVERY");
    // a re-delivery of the order's change from before the move: processed
    // again it would read the moved segment
    let before_move = cdc
        .stream
        .iter()
        .rev()
        .find(|l| {
            table_of(l) == "orders"
                && envelope(l).is_some_and(|e| e["payload"]["after"]["status"] == "BEFORE")
        })
        .unwrap()
        .clone();
    cdc.redeliver(before_move);
    // a customer deleted between two changes of its order
    let gone = with_orders[1].clone();
    let theirs = orders
        .iter()
        .find(|o| o["customer_id"] == gone["id"])
        .unwrap()
        .clone();
    touch(&mut cdc, &theirs, "CUSTOMER-LIVE");
    cdc.delete("customers", json!({"id": gone["id"]}));
    let half = cdc.stream.len();
    touch(&mut cdc, &theirs, "CUSTOMER-GONE");
    // an order before its customer, then the customer, then the order again
    cdc.create(
        "orders",
        json!({"order_id": 99001, "customer_id": 5151, "amount": 1.5, "status": "EARLY",
               "placed_at": "2030-01-01T00:00:00", "note": null}),
    );
    cdc.create(
        "customers",
        json!({"id": 5151, "name": "Late", "email": null, "segment": "late-segment",
               "vip": false, "created_at": "2030-01-02T00:00:00+00:00"}),
    );
    let early = json!({"order_id": 99001});
    let want_early = order_segments(&cdc.stream);
    touch(&mut cdc, &early, "LATER");
    let want = order_segments(&cdc.stream);
    // the reference itself shows what a join would not
    let seg = |rows: &[Json], id: &Json| {
        rows.iter().find(|r| r["order_id"] == *id).unwrap()["segment"].clone()
    };
    assert_eq!(seg(&want, &mine[1]["order_id"]), json!("moved-segment"));
    assert_eq!(seg(&want, &mine[0]["order_id"]), busy["segment"]);
    assert_eq!(seg(&want, &theirs["order_id"]), Json::Null);
    assert_eq!(seg(&want_early, &json!(99001)), Json::Null);
    assert_eq!(seg(&want, &json!(99001)), json!("late-segment"));

    let dir = tempfile::tempdir().unwrap();
    let stream = cdc.write(dir.path(), "lookups.jsonl");
    for batch in ["10000", "3"] {
        let s = Scratch::new(&[("order_segment", "order_segment")]);
        let out = s.run(&stream, &["--max-batch", batch]);
        let d = diff_table(&s.db(), "order_segment", &want, &["order_id"]);
        assert!(d.is_empty(), "batches of {batch}: {d:#?}\n{}", stderr(&out));
        let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
        assert!(dlq.is_empty(), "{dlq:?}");
    }
    // two runs: the second reads the looked-up table back from the sink
    let s = Scratch::new(&[("order_segment", "order_segment")]);
    let mut first_half = cdc.clone_stream();
    first_half.truncate(half);
    let part = write_lines(dir.path(), "first-half.jsonl", &first_half);
    s.run(&part, &[]);
    let out = s.run(&stream, &[]);
    let d = diff_table(&s.db(), "order_segment", &want, &["order_id"]);
    assert!(d.is_empty(), "resumed: {d:#?}\n{}", stderr(&out));
    let stored = query(
        &s.db(),
        "SELECT count(*) AS n FROM sluice_state WHERE operator LIKE 'table/%.customers'",
    );
    assert!(stored[0]["n"].as_i64().unwrap() > 0, "{stored:?}");
}

/// A join and a lookup of one table read one stored copy of it, and a
/// join added while the table is stored starts from its rows: the
/// customers stored for `order_segment`'s lookups (first run, customers'
/// events only) are joined to every order by `orders_with_customer`,
/// added for the second run, which reads only the other tables' events.
#[test]
fn a_join_added_later_starts_from_the_table_a_lookup_stored() {
    let cdc = Cdc::from_fixture();
    let want = orders_with_customer(&cdc);
    let dir = tempfile::tempdir().unwrap();
    let customers: Vec<Json> = cdc
        .clone_stream()
        .into_iter()
        .filter(|l| table_of(l) == "customers")
        .collect();
    let ids: std::collections::BTreeSet<String> =
        customers.iter().map(|l| l["key"].to_string()).collect();
    assert!(ids.len() > 1, "the fixture has customers");
    let first = write_lines(dir.path(), "customers.jsonl", &customers);
    let everything = cdc.write(dir.path(), "everything.jsonl");
    let s = Scratch::new(&[("order_segment", "order_segment")]);
    s.run(&first, &[]);
    std::fs::copy(
        guest("orders_with_customer"),
        s.path("plugins/orders_with_customer.wasm"),
    )
    .unwrap();
    let out = s.run(&everything, &[]);
    let d = diff_table(&s.db(), "orders_with_customer", &want, &["order_id"]);
    assert!(d.is_empty(), "{d:#?}\n{}", stderr(&out));
    // one copy of the customers, read by both; no rows kept per join
    let stored = query(
        &s.db(),
        "SELECT operator, count(*) AS n FROM sluice_state WHERE kind = 't' GROUP BY operator ORDER BY operator",
    );
    let customers_rows: Vec<_> = stored
        .iter()
        .filter(|r| r["operator"].as_str().unwrap().ends_with(".customers"))
        .collect();
    assert_eq!(customers_rows.len(), 1, "{stored:?}");
    assert_eq!(customers_rows[0]["n"], json!(ids.len()), "{stored:?}");
    let own = query(
        &s.db(),
        "SELECT count(*) AS n FROM sluice_state WHERE kind IN ('jl', 'jr')",
    );
    assert_eq!(own[0]["n"], json!(0), "{own:?}");
}

/// `orders JOIN customers ON customer_id = id AND created_at <= placed_at
/// <= created_at + 365 days` (`placed_at` is zone-less: read as UTC).
fn first_year_orders(cdc: &Cdc, leave_out: &[i64]) -> Vec<Json> {
    let mut out = Vec::new();
    for o in cdc.rows("orders") {
        if leave_out.contains(&o["order_id"].as_i64().unwrap()) {
            continue;
        }
        let Some(c) = cdc
            .rows("customers")
            .iter()
            .find(|c| !o["customer_id"].is_null() && c["id"] == o["customer_id"])
        else {
            continue;
        };
        let created = DateTime::parse_from_rfc3339(c["created_at"].as_str().unwrap())
            .unwrap()
            .naive_utc();
        let placed = local(o["placed_at"].as_str().unwrap());
        if created <= placed && placed <= created + Duration::days(365) {
            out.push(
                json!({"order_id": o["order_id"], "customer_id": o["customer_id"],
                            "customer_name": c["name"]}),
            );
        }
    }
    out
}

/// An interval join over the fixture equals the SQL join with the time
/// bound; then event time jumps (a customer and an order of 2030), the rows no
/// partner can reach any more leave the state (their joined rows stay),
/// and an order of 2024 arriving in a later batch is late (lateness is
/// judged against the watermark a batch starts with): dead-lettered by the
/// strict join, applied by the other (its customer's state is gone, so it
/// joins nothing); neither writes it, though the SQL join would.
#[test]
fn an_interval_join_expires_its_state_and_follows_the_late_policy() {
    let mut cdc = Cdc::from_fixture();
    // on time: an order in its customer's first year, one after it
    let c2 = cdc.find("customers", &json!({"id": 2})).unwrap();
    assert_eq!(c2["created_at"], "2024-03-12T02:30:00+00:00");
    for (id, placed) in [
        (99301, "2024-05-01T00:00:00"),
        (99302, "2025-04-01T00:00:00"),
    ] {
        cdc.create(
            "orders",
            json!({"order_id": id, "customer_id": 2, "amount": 3.5, "status": "NEW",
                   "placed_at": placed, "note": null}),
        );
    }
    let want_before = first_year_orders(&cdc, &[]);
    let ids = |rows: &[Json]| -> Vec<i64> {
        rows.iter()
            .map(|r| r["order_id"].as_i64().unwrap())
            .collect()
    };
    assert!(ids(&want_before).contains(&99301) && !ids(&want_before).contains(&99302));
    assert!(want_before.len() >= 20, "{want_before:?}");
    let dir = tempfile::tempdir().unwrap();
    let on_time = cdc.write(dir.path(), "on-time.jsonl");
    cdc.create(
        "customers",
        json!({"id": 7001, "name": "Future", "email": null, "segment": "smb", "vip": false,
               "created_at": "2030-01-01T00:00:00+00:00"}),
    );
    // the watermark is the slowest partition's: time jumps on both topics
    cdc.create(
        "orders",
        json!({"order_id": 99304, "customer_id": 7001, "amount": 5.5, "status": "NEW",
               "placed_at": "2030-01-02T00:00:00", "note": null}),
    );
    let jump = cdc.write(dir.path(), "jump.jsonl");
    cdc.create(
        "orders",
        json!({"order_id": 99303, "customer_id": 2, "amount": 4.5, "status": "LATE",
               "placed_at": "2024-06-01T00:00:00", "note": null}),
    );
    let late = cdc.write(dir.path(), "late.jsonl");
    let want = first_year_orders(&cdc, &[99303]);
    assert!(first_year_orders(&cdc, &[]).len() == want.len() + 1);
    for batch in ["10000", "3"] {
        let s = Scratch::new(&[("first_year_orders", "first_year_orders")]);
        let out = s.run(&on_time, &["--max-batch", batch]);
        for table in ["first_year_orders", "first_year_orders_strict"] {
            let d = diff_table(&s.db(), table, &want_before, &["order_id"]);
            assert!(
                d.is_empty(),
                "{table}, batches of {batch}: {d:#?}\n{}",
                stderr(&out)
            );
        }
        let kept = |s: &Scratch| {
            query(
                &s.db(),
                "SELECT kind, count(*) AS n FROM sluice_state \
                 WHERE operator = 'first_year_orders/first_year_orders_strict' \
                 AND kind IN ('jl', 'jr') GROUP BY kind ORDER BY kind",
            )
        };
        let before = kept(&s);
        // the watermark moves after a batch: the jump, then the late order
        s.run(&jump, &["--max-batch", batch]);
        let out = s.run(&late, &["--max-batch", batch]);
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        for table in ["first_year_orders", "first_year_orders_strict"] {
            let d = diff_table(&s.db(), table, &want, &["order_id"]);
            assert!(d.is_empty(), "{table}, batches of {batch}: {d:#?}\n{log}");
        }
        let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
        assert_eq!(dlq.len(), 1, "{dlq:?}");
        let reason = dlq[0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("first_year_orders_strict") && reason.contains("late"),
            "{reason}"
        );
        assert!(log.contains(": 1 applied, 1 dead-lettered"), "{log}");
        // only the 2030 rows are kept: every other row is past reach
        let after = kept(&s);
        let after: Vec<Json> = after.into_iter().map(Json::Object).collect();
        let only_2030 = vec![json!({"kind": "jl", "n": 1}), json!({"kind": "jr", "n": 1})];
        assert_eq!(after, only_2030, "before: {before:?}");
        assert!(
            before.iter().map(|r| r["n"].as_i64().unwrap()).sum::<i64>() > 20,
            "{before:?}"
        );
    }
}
