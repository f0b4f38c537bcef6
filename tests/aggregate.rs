//! Aggregations end to end through the real binary: the example plugins over
//! the Debezium fixture (and variants of it a real pipeline meets: default
//! replica identity, re-delivered stretches, primary-key changes, rows
//! moving between windows) must leave the sink equal to a `GROUP BY`
//! computed here, independently, from the source's final state.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{Duration, NaiveDateTime};
use common::*;
use serde_json::{json, Value as Json};

/// kcat -J lines of a file.
fn lines(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_lines(dir: &Path, name: &str, lines: &[Json]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// The Debezium envelope of a line (`payload` of the value), if any.
fn envelope(line: &Json) -> Option<Json> {
    let v: Json = serde_json::from_str(line["payload"].as_str()?).unwrap();
    Some(v)
}

fn set_envelope(line: &mut Json, value: &Json) {
    line["payload"] = Json::String(value.to_string());
}

fn is_orders(line: &Json) -> bool {
    line["topic"].as_str().unwrap().ends_with(".orders")
}

/// A decimal as micro-units (exact for the fixture's scales).
fn micros(v: &Json) -> Option<i128> {
    let s = match v {
        Json::Null => return None,
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (neg, body) = s
        .strip_prefix('-')
        .map_or((false, s.as_str()), |b| (true, b));
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let frac = format!("{frac:0<6}");
    let n: i128 = format!("{int}{}", &frac[..6]).parse().unwrap();
    Some(if neg { -n } else { n })
}

fn decimal(m: i128) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

fn local(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").unwrap()
}

fn text(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// The source's final orders.
fn source_orders() -> Vec<Json> {
    expected(&fixture("pg_expected.json"))["orders"]
        .as_array()
        .unwrap()
        .clone()
}

#[derive(Default)]
struct Group {
    orders: i64,
    sum: Option<i128>,
    min: Option<i128>,
    max: Option<i128>,
}

/// `GROUP BY window, customer_id` over orders, for windows of `size` days
/// sliding by one day (`size` 1: tumbling days).
fn group_by_days(orders: &[Json], size: i64) -> BTreeMap<(String, i64), Group> {
    let mut out: BTreeMap<(String, i64), Group> = BTreeMap::new();
    for o in orders {
        let placed = local(o["placed_at"].as_str().unwrap());
        let day = placed.date().and_hms_opt(0, 0, 0).unwrap();
        for back in 0..size {
            let start = day - Duration::days(back);
            let g = out
                .entry((text(start), o["customer_id"].as_i64().unwrap()))
                .or_default();
            g.orders += 1;
            if let Some(a) = micros(&o["amount"]) {
                g.sum = Some(g.sum.unwrap_or(0) + a);
                g.min = Some(g.min.map_or(a, |m| m.min(a)));
                g.max = Some(g.max.map_or(a, |m| m.max(a)));
            }
        }
    }
    out
}

fn daily_rows(orders: &[Json]) -> Vec<Json> {
    group_by_days(orders, 1)
        .into_iter()
        .map(|((start, customer), g)| {
            let end = text(local(&start) + Duration::days(1));
            json!({"window_start": start, "window_end": end, "customer_id": customer,
                   "orders": g.orders, "amount_sum": g.sum.map(decimal),
                   "amount_min": g.min.map(decimal), "amount_max": g.max.map(decimal)})
        })
        .collect()
}

fn weekly_rows(orders: &[Json]) -> Vec<Json> {
    group_by_days(orders, 7)
        .into_iter()
        .map(|((start, customer), g)| {
            let end = text(local(&start) + Duration::days(7));
            json!({"window_start": start, "window_end": end, "customer_id": customer,
                   "orders": g.orders, "amount_sum": g.sum.map(decimal)})
        })
        .collect()
}

/// Run `orders_by_customer` alone over `stream` and compare its tables with
/// the GROUP BYs of `orders`.
fn assert_orders_by_customer(stream: &Path, orders: &[Json]) -> String {
    let s = Scratch::new(&[("orders_by_customer", "orders_by_customer")]);
    let out = s.run(stream, &[]);
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
    let summary = format!("{summary}\ndead letters: {dlq:?}");
    let daily = diff_table(
        &s.db(),
        "orders_by_customer_daily",
        &daily_rows(orders),
        &["window_start", "customer_id"],
    );
    assert!(daily.is_empty(), "{daily:#?}\n{summary}");
    let weekly = diff_table(
        &s.db(),
        "orders_by_customer_7d",
        &weekly_rows(orders),
        &["window_start", "customer_id"],
    );
    assert!(weekly.is_empty(), "{weekly:#?}\n{summary}");
    assert!(dlq.is_empty(), "{dlq:?}");
    summary
}

#[test]
fn orders_by_customer_equals_the_group_by_of_the_source() {
    assert_orders_by_customer(&fixture("pg_events.schemas.jsonl"), &source_orders());
}

/// PostgreSQL's default REPLICA IDENTITY: updates carry no `before`, and a
/// delete's `before` holds the key and placeholders for NOT NULL columns.
#[test]
fn orders_by_customer_is_right_with_the_default_replica_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = lines(&fixture("pg_events.schemas.jsonl"));
    let mut changed = 0;
    for line in &mut stream {
        let Some(mut env) = envelope(line) else {
            continue;
        };
        let p = &mut env["payload"];
        match p["op"].as_str() {
            Some("u") => p["before"] = Json::Null,
            Some("d") => {
                let before = p["before"].as_object_mut().unwrap();
                for (col, v) in before.iter_mut() {
                    if col == "id" || col == "order_id" || col == "line_no" || v.is_null() {
                        continue;
                    }
                    *v = match v {
                        Json::Number(_) => json!(0),
                        Json::Bool(_) => json!(false),
                        // "" is also base64 for no bytes: a zero decimal.
                        _ => json!(""),
                    };
                }
            }
            _ => continue,
        }
        changed += 1;
        set_envelope(line, &env);
    }
    assert!(
        changed > 20,
        "the fixture has updates and deletes to rewrite"
    );
    let path = write_lines(dir.path(), "default-identity.jsonl", &stream);
    assert_orders_by_customer(&path, &source_orders());
}

/// Debezium is at-least-once: after a connector restart it sends a stretch
/// of events again (same source positions, new Kafka offsets). Nothing may
/// count twice.
#[test]
fn a_re_delivered_stretch_of_events_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let original = lines(&fixture("pg_events.schemas.jsonl"));
    let orders: Vec<usize> = (0..original.len())
        .filter(|&i| is_orders(&original[i]) && !original[i]["payload"].is_null())
        .collect();
    // Re-send the middle third of the orders topic right after itself.
    let (from, to) = (orders[orders.len() / 3], orders[2 * orders.len() / 3]);
    let mut stream = Vec::new();
    let mut offset = 0;
    let resend = |line: &Json, stream: &mut Vec<Json>, offset: &mut i64| {
        let mut l = line.clone();
        if is_orders(&l) {
            l["offset"] = json!(*offset);
            *offset += 1;
        }
        stream.push(l);
    };
    for (i, line) in original.iter().enumerate() {
        resend(line, &mut stream, &mut offset);
        if i == to {
            for again in &original[from..=to] {
                if is_orders(again) {
                    resend(again, &mut stream, &mut offset);
                }
            }
        }
    }
    let path = write_lines(dir.path(), "redelivered.jsonl", &stream);
    let summary = assert_orders_by_customer(&path, &source_orders());
    assert!(
        summary.contains("re-delivered changes skipped"),
        "the summary counts the skipped re-deliveries: {summary}"
    );
}

/// Rows move: an order changes customer and day, another changes its key
/// (Debezium: delete of the old key, tombstone, create of the new one at
/// the same position), another is deleted. Appended after the fixture.
#[test]
fn orders_moving_between_groups_windows_and_keys_are_retracted_and_re_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = lines(&fixture("pg_events.schemas.jsonl"));
    let mut orders = source_orders();
    // The last orders event is a template with its schema.
    let template = stream
        .iter()
        .rev()
        .find(|l| is_orders(l) && !l["payload"].is_null())
        .cloned()
        .unwrap();
    let mut next_offset = stream.iter().filter(|l| is_orders(l)).count() as i64;
    let mut emit =
        |stream: &mut Vec<Json>, op: &str, key: i64, lsn: i64, before: Json, after: Json| {
            let mut line = template.clone();
            line["offset"] = json!(next_offset);
            next_offset += 1;
            let mut k: Json = serde_json::from_str(template["key"].as_str().unwrap()).unwrap();
            k["payload"]["order_id"] = json!(key);
            line["key"] = Json::String(k.to_string());
            if op == "tombstone" {
                line["payload"] = Json::Null;
                stream.push(line);
                return;
            }
            let mut env = envelope(&template).unwrap();
            env["payload"]["op"] = json!(op);
            env["payload"]["before"] = before;
            env["payload"]["after"] = after;
            env["payload"]["source"]["lsn"] = json!(lsn);
            env["payload"]["source"]["snapshot"] = json!("false");
            set_envelope(&mut line, &env);
            stream.push(line);
        };
    // The image Debezium would send for an order of `orders`.
    let image = |o: &Json| -> Json {
        use base64::Engine as _;
        let cents = micros(&o["amount"]).map(|m| (m / 10_000) as i64);
        let amount = cents.map(|c| {
            let bytes = num_bytes(c);
            base64::engine::general_purpose::STANDARD.encode(bytes)
        });
        let placed = local(o["placed_at"].as_str().unwrap());
        json!({"order_id": o["order_id"], "customer_id": o["customer_id"], "amount": amount,
               "status": o["status"], "placed_at": placed.and_utc().timestamp_micros(), "note": o["note"]})
    };
    let lsn = 900_000_000_i64;
    // 1. moves to another customer and three days later
    let before = orders[0].clone();
    let mut moved = before.clone();
    moved["customer_id"] = json!(before["customer_id"].as_i64().unwrap() % 5 + 1);
    moved["placed_at"] = json!(text(
        local(before["placed_at"].as_str().unwrap()) + Duration::days(3)
    ));
    let id = before["order_id"].as_i64().unwrap();
    emit(&mut stream, "u", id, lsn, image(&before), image(&moved));
    orders[0] = moved;
    // 2. the primary key changes: delete and create share the update's position
    let old = orders[1].clone();
    let mut renamed = old.clone();
    renamed["order_id"] = json!(old["order_id"].as_i64().unwrap() + 100_000);
    let old_id = old["order_id"].as_i64().unwrap();
    emit(&mut stream, "d", old_id, lsn + 8, image(&old), Json::Null);
    emit(&mut stream, "tombstone", old_id, 0, Json::Null, Json::Null);
    let new_id = renamed["order_id"].as_i64().unwrap();
    emit(
        &mut stream,
        "c",
        new_id,
        lsn + 8,
        Json::Null,
        image(&renamed),
    );
    orders[1] = renamed;
    // 3. deleted
    let gone = orders.remove(2);
    let gone_id = gone["order_id"].as_i64().unwrap();
    emit(
        &mut stream,
        "d",
        gone_id,
        lsn + 16,
        image(&gone),
        Json::Null,
    );
    let path = write_lines(dir.path(), "moves.jsonl", &stream);
    assert_orders_by_customer(&path, &orders);
}

/// Big-endian two's complement bytes of an unscaled decimal (Connect's Decimal).
fn num_bytes(v: i64) -> Vec<u8> {
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
