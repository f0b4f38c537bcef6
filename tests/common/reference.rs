//! Reference computations for the stateful examples, done here without
//! any of Sluice's code: the `GROUP BY`s `orders_by_customer` must equal,
//! from orders given as JSON rows (`customer_id`, `placed_at` as zone-less
//! ISO text, `amount` as a decimal number or text), and the per-order
//! history `order_history` (keyed state) must equal, from the events.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDateTime};
use serde_json::{json, Value as Json};

/// A decimal as micro-units (exact for the fixture's scales).
pub fn micros(v: &Json) -> Option<i128> {
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

pub fn decimal(m: i128) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

pub fn local(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").unwrap()
}

pub fn text(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

#[derive(Default)]
pub struct Group {
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

pub fn daily_rows(orders: &[Json]) -> Vec<Json> {
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

pub fn weekly_rows(orders: &[Json]) -> Vec<Json> {
    group_by_days(orders, 7)
        .into_iter()
        .map(|((start, customer), g)| {
            let end = text(local(&start) + Duration::days(7));
            json!({"window_start": start, "window_end": end, "customer_id": customer,
                   "orders": g.orders, "amount_sum": g.sum.map(decimal)})
        })
        .collect()
}

/// Sessions per customer: orders less than two days apart share one.
pub fn session_rows(orders: &[Json]) -> Vec<Json> {
    let mut by_customer: BTreeMap<i64, Vec<(NaiveDateTime, Option<i128>)>> = BTreeMap::new();
    for o in orders {
        by_customer
            .entry(o["customer_id"].as_i64().unwrap())
            .or_default()
            .push((
                local(o["placed_at"].as_str().unwrap()),
                micros(&o["amount"]),
            ));
    }
    let gap = Duration::days(2);
    let mut out = Vec::new();
    for (customer, mut placed) in by_customer {
        placed.sort();
        let mut i = 0;
        while i < placed.len() {
            let mut j = i;
            while j + 1 < placed.len() && placed[j + 1].0 - placed[j].0 < gap {
                j += 1;
            }
            let run = &placed[i..=j];
            let sum: Option<i128> = run.iter().filter_map(|r| r.1).reduce(|a, b| a + b);
            out.push(
                json!({"customer_id": customer, "session_start": text(run[0].0),
                "session_end": text(run[run.len() - 1].0 + gap), "orders": run.len(),
                "amount_sum": sum.map(decimal)}),
            );
            i = j + 1;
        }
    }
    out
}

/// The history of each order that exists at the end of `stream` (kcat
/// `-J` lines of any topics), from its orders events in order: created (or
/// read) with a status, each update one more version and, if the status
/// differs, one more status change; a delete forgets the order. An event
/// seen before (same key and source position: a Debezium re-delivery)
/// counts once; records that are no Debezium change are skipped.
pub fn order_history_rows(stream: &[Json]) -> Vec<Json> {
    let mut orders: BTreeMap<i64, (Json, Json, i64, i64)> = BTreeMap::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    for line in stream {
        if !line["topic"]
            .as_str()
            .is_some_and(|t| t.ends_with(".orders"))
        {
            continue;
        }
        let parse = |field: &str| -> Option<Json> {
            let v: Json = serde_json::from_str(line[field].as_str()?).ok()?;
            Some(v.get("payload").cloned().unwrap_or(v))
        };
        let (Some(key), Some(p)) = (parse("key"), parse("payload")) else {
            continue;
        };
        let (Some(id), Some(op)) = (key["order_id"].as_i64(), p["op"].as_str()) else {
            continue;
        };
        let src = &p["source"];
        if !seen.insert(format!(
            "{id} {} {} {} {}",
            src["lsn"], src["file"], src["pos"], src["row"]
        )) {
            continue;
        }
        let status = p["after"]["status"].clone();
        match op {
            "d" => {
                orders.remove(&id);
            }
            _ => match orders.get_mut(&id) {
                Some((_, last, changes, versions)) => {
                    *versions += 1;
                    if *last != status {
                        *changes += 1;
                    }
                    *last = status;
                }
                None => {
                    orders.insert(id, (status.clone(), status, 0, 1));
                }
            },
        }
    }
    orders
        .into_iter()
        .map(|(id, (first, status, changes, versions))| {
            json!({"order_id": id, "first_status": first, "status": status,
                   "status_changes": changes, "versions": versions})
        })
        .collect()
}
