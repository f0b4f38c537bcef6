//! Aggregations end to end through the real binary: the example plugins over
//! the Debezium fixture (and variants of it a real pipeline meets: default
//! replica identity, re-delivered stretches, primary-key changes, rows
//! moving between windows) must leave the sink equal to a `GROUP BY`
//! computed here, independently, from the source's final state.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::Duration;
use common::reference::*;
use common::stream::*;
use common::*;
use serde_json::{json, Value as Json};

/// The source's final orders.
fn source_orders() -> Vec<Json> {
    expected(&fixture("pg_expected.json"))["orders"]
        .as_array()
        .unwrap()
        .clone()
}

/// Run `orders_by_customer` alone over `stream` and compare its tables with
/// the GROUP BYs of `orders`: once in batches as large as the stream, once
/// in batches of 3 records (so groups, windows and sessions change across
/// commits, through the state in the sink). Returns the summaries.
fn assert_orders_by_customer(stream: &Path, orders: &[Json]) -> String {
    let mut summaries = String::new();
    for batch in ["10000", "3"] {
        let s = Scratch::new(&[("orders_by_customer", "orders_by_customer")]);
        let out = s.run(stream, &["--max-batch", batch]);
        let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
        let summary = format!(
            "batches of {batch}:\n{}\ndead letters: {dlq:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_group_bys(&s, orders, &summary);
        assert!(dlq.is_empty(), "{summary}");
        summaries.push_str(&summary);
    }
    summaries
}

/// `orders_by_customer`'s tables in `s`'s sink equal the GROUP BYs of `orders`.
fn assert_group_bys(s: &Scratch, orders: &[Json], summary: &str) {
    for (table, rows, key) in [
        (
            "orders_by_customer_daily",
            daily_rows(orders),
            &["window_start", "customer_id"],
        ),
        (
            "orders_by_customer_7d",
            weekly_rows(orders),
            &["window_start", "customer_id"],
        ),
        (
            "orders_sessions",
            session_rows(orders),
            &["customer_id", "session_start"],
        ),
    ] {
        let d = diff_table(&s.db(), table, &rows, key);
        assert!(d.is_empty(), "{table}: {d:#?}\n{summary}");
    }
}

/// A host started over a sink that holds state reads it, whatever layout
/// the state has (the 7-day window's is kept by panes, marked so when the
/// first host wrote it): one run over the first half of the stream, a
/// second over all of it (skipping what the first committed), in small
/// batches, and the tables equal the GROUP BYs of the source.
#[test]
fn orders_by_customer_goes_on_from_the_state_a_stopped_host_left() {
    let dir = tempfile::tempdir().unwrap();
    let stream = fixture("pg_events.schemas.jsonl");
    let all = lines(&stream);
    let half = write_lines(dir.path(), "half.jsonl", &all[..all.len() / 2]);
    let s = Scratch::new(&[("orders_by_customer", "orders_by_customer")]);
    s.run(&half, &["--max-batch", "5"]);
    let out = s.run(&stream, &["--max-batch", "5"]);
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let skipped = format!("({} already applied, skipped", all.len() / 2);
    assert!(summary.contains(&skipped), "{summary}");
    assert_group_bys(&s, &source_orders(), &summary);
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
    let stream = redeliver_middle_third(&lines(&fixture("pg_events.schemas.jsonl")));
    let path = write_lines(dir.path(), "redelivered.jsonl", &stream);
    let summary = assert_orders_by_customer(&path, &source_orders());
    assert!(
        summary.contains("re-delivered changes skipped"),
        "the summary counts the skipped re-deliveries: {summary}"
    );
}

/// Appends orders events to the fixture, as Debezium would send them.
struct Orders {
    stream: Vec<Json>,
    template: Json,
    next_offset: i64,
    /// Partition of the next lines (its own offsets beyond partition 0).
    partition: i64,
    other_offsets: BTreeMap<i64, i64>,
}

impl Orders {
    fn from_fixture() -> Orders {
        let stream = lines(&fixture("pg_events.schemas.jsonl"));
        // The last orders event is a template with its schema.
        let template = stream
            .iter()
            .rev()
            .find(|l| is_orders(l) && !l["payload"].is_null())
            .cloned()
            .unwrap();
        let next_offset = stream.iter().filter(|l| is_orders(l)).count() as i64;
        Orders {
            stream,
            template,
            next_offset,
            partition: 0,
            other_offsets: BTreeMap::new(),
        }
    }

    /// No events yet; the fixture's orders events serve as the template.
    fn empty() -> Orders {
        let mut o = Orders::from_fixture();
        o.stream.clear();
        o.next_offset = 0;
        o
    }

    /// The image of an order as `pg_expected.json` writes it.
    fn image(o: &Json) -> Json {
        use base64::Engine as _;
        let cents = micros(&o["amount"]).map(|m| (m / 10_000) as i64);
        let amount = cents.map(|c| base64::engine::general_purpose::STANDARD.encode(num_bytes(c)));
        let placed = local(o["placed_at"].as_str().unwrap());
        json!({"order_id": o["order_id"], "customer_id": o["customer_id"], "amount": amount,
               "status": o["status"], "placed_at": placed.and_utc().timestamp_micros(), "note": o["note"]})
    }

    fn line(&mut self, key: i64) -> Json {
        let mut line = self.template.clone();
        let offset = match self.partition {
            0 => &mut self.next_offset,
            p => self.other_offsets.entry(p).or_insert(0),
        };
        line["offset"] = json!(*offset);
        *offset += 1;
        line["partition"] = json!(self.partition);
        let mut k: Json = serde_json::from_str(self.template["key"].as_str().unwrap()).unwrap();
        k["payload"]["order_id"] = json!(key);
        line["key"] = Json::String(k.to_string());
        line
    }

    /// A change of `op` at `lsn` (before/after as `pg_expected.json` rows).
    fn change(&mut self, op: &str, lsn: i64, before: Option<&Json>, after: Option<&Json>) {
        let key = after.or(before).unwrap()["order_id"].as_i64().unwrap();
        let mut line = self.line(key);
        let mut env = envelope(&self.template).unwrap();
        env["payload"]["op"] = json!(op);
        env["payload"]["before"] = before.map_or(Json::Null, Self::image);
        env["payload"]["after"] = after.map_or(Json::Null, Self::image);
        env["payload"]["source"]["lsn"] = json!(lsn);
        env["payload"]["source"]["snapshot"] = json!("false");
        set_envelope(&mut line, &env);
        self.stream.push(line);
    }

    fn tombstone(&mut self, key: i64) {
        let mut line = self.line(key);
        line["payload"] = Json::Null;
        self.stream.push(line);
    }

    fn write(&self, dir: &Path) -> PathBuf {
        write_lines(dir, "stream.jsonl", &self.stream)
    }

    /// A new order of customer `customer` placed `hours` after 2030-01-01.
    fn place(&mut self, id: i64, customer: i64, hours: i64) {
        let placed = local("2030-01-01T00:00:00") + Duration::hours(hours);
        let o = json!({"order_id": id, "customer_id": customer, "amount": 10, "status": "NEW",
                       "placed_at": text(placed), "note": null});
        self.change("c", 920_000_000 + id * 8, None, Some(&o));
    }
}

/// Rows move: an order changes customer and day, another changes its key
/// (Debezium: delete of the old key, tombstone, create of the new one at
/// the same position), another is deleted. Appended after the fixture.
#[test]
fn orders_moving_between_groups_windows_and_keys_are_retracted_and_re_added() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Orders::from_fixture();
    let mut orders = source_orders();
    let lsn = 900_000_000_i64;
    // 1. moves to another customer and three days later
    let before = orders[0].clone();
    let mut moved = before.clone();
    moved["customer_id"] = json!(before["customer_id"].as_i64().unwrap() % 5 + 1);
    moved["placed_at"] = json!(text(
        local(before["placed_at"].as_str().unwrap()) + Duration::days(3)
    ));
    s.change("u", lsn, Some(&before), Some(&moved));
    orders[0] = moved;
    // 2. the primary key changes: delete and create share the update's position
    let old = orders[1].clone();
    let mut renamed = old.clone();
    renamed["order_id"] = json!(old["order_id"].as_i64().unwrap() + 100_000);
    s.change("d", lsn + 8, Some(&old), None);
    s.tombstone(old["order_id"].as_i64().unwrap());
    s.change("c", lsn + 8, None, Some(&renamed));
    orders[1] = renamed;
    // 3. deleted
    let gone = orders.remove(2);
    s.change("d", lsn + 16, Some(&gone), None);
    assert_orders_by_customer(&s.write(dir.path()), &orders);
}

/// A session is split when the order that bridged it goes away, and merged
/// again when one arrives in the gap.
#[test]
fn a_session_is_split_by_a_delete_and_merged_by_an_insert() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Orders::from_fixture();
    let mut orders = source_orders();
    let at = |days: f64| {
        let t = local("2030-01-01T00:00:00") + Duration::minutes((days * 1440.0) as i64);
        text(t)
    };
    let order = |id: i64, days: f64| {
        json!({"order_id": id, "customer_id": 777, "amount": 10.5, "status": "NEW",
               "placed_at": at(days), "note": null})
    };
    let mut lsn = 910_000_000_i64;
    let mut next = || {
        lsn += 8;
        lsn
    };
    // 0, 1.5, 3 days: one session [0, 5)
    for (id, day) in [(70_001, 0.0), (70_002, 1.5), (70_003, 3.0)] {
        s.change("c", next(), None, Some(&order(id, day)));
    }
    // the bridge goes: [0, 2) and [3, 5)
    s.change("d", next(), Some(&order(70_002, 1.5)), None);
    s.tombstone(70_002);
    // an order at 4.5 extends the second; one at 10 starts a third
    s.change("c", next(), None, Some(&order(70_004, 4.5)));
    s.change("c", next(), None, Some(&order(70_005, 10.0)));
    // the one at 10 moves to 1: merges into the first
    s.change(
        "u",
        next(),
        Some(&order(70_005, 10.0)),
        Some(&order(70_005, 1.0)),
    );
    orders.extend([
        order(70_001, 0.0),
        order(70_003, 3.0),
        order(70_004, 4.5),
        order(70_005, 1.0),
    ]);
    let want: Vec<Json> = session_rows(&orders)
        .into_iter()
        .filter(|r| r["customer_id"] == 777)
        .collect();
    assert_eq!(want.len(), 2, "the check itself: {want:?}");
    assert_orders_by_customer(&s.write(dir.path()), &orders);
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

/// The seed's job B computed from the event file itself: every orders
/// event with an `after` row, in the 5-minute window of its commit time,
/// per `after.customer_id`: events, sum of `after.amount`.
fn seed_events_5m(stream: &[Json]) -> Vec<Json> {
    use base64::Engine as _;
    let mut seen = std::collections::HashSet::new();
    let mut out: BTreeMap<(i64, i64), (i64, i128)> = BTreeMap::new();
    for line in stream.iter().filter(|l| is_orders(l)) {
        let Some(env) = envelope(line) else { continue };
        let p = &env["payload"];
        if p["after"].is_null() {
            continue;
        }
        // A re-delivered event (same source position and key) is the same event.
        if !seen.insert((p["source"]["lsn"].to_string(), line["key"].to_string())) {
            continue;
        }
        let ts = p["source"]["ts_ms"].as_i64().unwrap();
        let window = ts.div_euclid(300_000) * 300_000;
        let customer = p["after"]["customer_id"].as_i64().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p["after"]["amount"].as_str().unwrap())
            .unwrap();
        let mut cents: i128 = if bytes[0] & 0x80 != 0 { -1 } else { 0 };
        for b in bytes {
            cents = (cents << 8) | b as i128;
        }
        let e = out.entry((window, customer)).or_default();
        e.0 += 1;
        e.1 += cents * 10_000;
    }
    let instant = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    out.into_iter()
        .map(|((w, c), (n, sum))| {
            json!({"window_start": instant(w), "window_end": instant(w + 300_000),
                   "customer_id": c, "events": n, "amount": decimal(sum)})
        })
        .collect()
}

fn assert_events_5m(stream: &Path) -> String {
    let want = seed_events_5m(&lines(stream));
    let mut summaries = String::new();
    for batch in ["10000", "3"] {
        let s = Scratch::new(&[("orders_events_5m", "orders_events_5m")]);
        let out = s.run(stream, &["--max-batch", batch]);
        let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
        let summary = format!(
            "batches of {batch}:\n{}\ndead letters: {dlq:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let d = diff_table(
            &s.db(),
            "orders_events_5m",
            &want,
            &["window_start", "customer_id"],
        );
        assert!(d.is_empty(), "{d:#?}\n{summary}");
        assert!(dlq.is_empty(), "{summary}");
        summaries.push_str(&summary);
    }
    summaries
}

#[test]
fn orders_events_5m_equals_the_seeds_count_of_change_events() {
    let stream = fixture("pg_events.schemas.jsonl");
    let want = seed_events_5m(&lines(&stream));
    let events: i64 = want.iter().map(|r| r["events"].as_i64().unwrap()).sum();
    let final_orders = source_orders().len() as i64;
    assert!(
        events > final_orders,
        "the check itself: updates count again under append semantics ({events} events, {final_orders} orders)"
    );
    assert_events_5m(&stream);
}

#[test]
fn orders_events_5m_counts_a_re_delivered_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = lines(&fixture("pg_events.schemas.jsonl"));
    let first = stream.iter().filter(|l| is_orders(l)).count() as i64;
    let again: Vec<Json> = stream
        .iter()
        .filter(|l| is_orders(l) && !l["payload"].is_null())
        .take(20)
        .cloned()
        .collect();
    // Deletes count nothing in append mode: only re-sent rows are skipped.
    let with_after = again
        .iter()
        .filter(|l| !envelope(l).unwrap()["payload"]["after"].is_null())
        .count();
    assert!(with_after > 10, "the check itself");
    for (offset, mut l) in (first..).zip(again) {
        l["offset"] = json!(offset);
        stream.push(l);
    }
    let summary = assert_events_5m(&write_lines(dir.path(), "again.jsonl", &stream));
    let skipped = format!("{with_after} re-delivered changes skipped");
    assert!(summary.contains(&skipped), "{summary}");
}

/// Audit every insert and update of a SQLite sink table.
fn audit_writes(db: &Path, table: &str) {
    execute(
        db,
        &[
            "CREATE TABLE IF NOT EXISTS audit (tbl TEXT, window_start TEXT, customer_id INTEGER)",
            &format!(
                "CREATE TRIGGER {table}_ins AFTER INSERT ON {table} BEGIN \
                 INSERT INTO audit VALUES ('{table}', new.window_start, new.customer_id); END"
            ),
            &format!(
                "CREATE TRIGGER {table}_upd AFTER UPDATE ON {table} BEGIN \
                 INSERT INTO audit VALUES ('{table}', new.window_start, new.customer_id); END"
            ),
        ],
    );
}

/// (day, orders, amount_sum) rows of a `windows` table, oldest first.
fn days_of(db: &Path, table: &str) -> Vec<(String, i64, String)> {
    query(
        db,
        &format!("SELECT window_start, orders, amount_sum FROM {table} ORDER BY window_start"),
    )
    .iter()
    .map(|r| {
        (
            r["window_start"].as_str().unwrap()[..10].to_string(),
            r["orders"].as_i64().unwrap(),
            r["amount_sum"].as_str().unwrap().to_string(),
        )
    })
    .collect()
}

/// Final mode writes a window once, when the watermark passes its end; a
/// late order is dead-lettered (reason `late`) or applied as a correction,
/// per policy; and the watermark a run reached holds in the next run.
#[test]
fn final_windows_are_written_once_late_rows_follow_the_policy_and_the_watermark_survives_a_restart()
{
    let dir = tempfile::tempdir().unwrap();
    let s = Scratch::new(&[("windows", "windows")]);
    let mut o = Orders::empty();
    o.place(1, 1, 10); // day 1, 10:00
    o.place(2, 1, 12);
    o.place(3, 1, 24 + 9); // day 2: the watermark passes day 1's end
    let first = o.write(dir.path());
    let out = s.run(&first, &["--max-batch", "1"]);
    let day1 = ("2030-01-01".to_string(), 2, "20.00".to_string());
    for table in ["orders_final_strict", "orders_final_corrected"] {
        assert_eq!(
            days_of(&s.db(), table),
            vec![day1.clone()],
            "{}",
            stderr(&out)
        );
        audit_writes(&s.db(), table);
    }
    // The next run resumes: a late order for day 1, then day 3 closes day 2.
    o.place(4, 1, 15);
    o.place(5, 1, 48 + 10);
    let out = s.run(&o.write(dir.path()), &["--max-batch", "1"]);
    let summary = String::from_utf8_lossy(&out.stdout);
    let day2 = ("2030-01-02".to_string(), 1, "10.00".to_string());
    assert_eq!(
        days_of(&s.db(), "orders_final_strict"),
        vec![day1.clone(), day2.clone()],
        "{summary}"
    );
    assert_eq!(
        days_of(&s.db(), "orders_final_corrected"),
        vec![("2030-01-01".to_string(), 3, "30.00".to_string()), day2],
        "{summary}"
    );
    let dlq = query(&s.db(), "SELECT stage, plugin, reason FROM sluice_dlq");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["stage"], "aggregate");
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("aggregation `orders_final_strict`: late"),
        "{reason}"
    );
    assert!(summary.contains("1 applied, 1 dead-lettered"), "{summary}");
    // Written once: the strict table only got day 2 in this run; the
    // corrected one day 1 again (the correction) and day 2.
    let writes = query(
        &s.db(),
        "SELECT tbl, substr(window_start, 1, 10) AS day, count(*) AS n FROM audit GROUP BY tbl, day ORDER BY tbl, day",
    );
    let writes: Vec<(String, String, i64)> = writes
        .iter()
        .map(|r| {
            (
                r["tbl"].as_str().unwrap().into(),
                r["day"].as_str().unwrap().into(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        writes,
        vec![
            ("orders_final_corrected".into(), "2030-01-01".into(), 1),
            ("orders_final_corrected".into(), "2030-01-02".into(), 1),
            ("orders_final_strict".into(), "2030-01-02".into(), 1),
        ]
    );
}

/// A partition that goes quiet stops holding the watermark back once it
/// is idle for `streaming.idle_timeout`; without that, day 1 would wait
/// for partition 1 forever.
#[test]
fn an_idle_partition_does_not_stall_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scratch::new(&[("windows", "windows")]);
    let cfg = s.path("p.toml");
    std::fs::write(&cfg, "[streaming]\nidle_timeout = \"1s\"\n").unwrap();
    let mut o = Orders::empty();
    o.partition = 1;
    o.place(1, 2, 8); // partition 1: day 1, 08:00, then nothing more
    o.partition = 0;
    o.place(2, 1, 10);
    o.place(3, 1, 24 + 9);
    let path = o.write(dir.path());
    let mut child = s
        .command(&format!("file:{}", path.display()))
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    // Both partitions go idle (all idle: the watermark stays); then
    // partition 0 gets an order while partition 1 stays quiet.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        !table_exists(&s.db(), "orders_final_strict")
            || days_of(&s.db(), "orders_final_strict").is_empty(),
        "nothing may close while partition 1 holds the watermark at day 1, 08:00"
    );
    o.partition = 0;
    o.place(4, 1, 48 + 10);
    o.write(dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut got = Vec::new();
    while std::time::Instant::now() < deadline {
        if table_exists(&s.db(), "orders_final_strict") {
            got = query(
                &s.db(),
                "SELECT substr(window_start, 1, 10) AS day, customer_id, orders FROM orders_final_strict ORDER BY day, customer_id",
            );
            if got.len() >= 3 {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let got: Vec<(String, i64, i64)> = got
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().into(),
                r["customer_id"].as_i64().unwrap(),
                r["orders"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("2030-01-01".into(), 1, 1),
            ("2030-01-01".into(), 2, 1),
            ("2030-01-02".into(), 1, 1),
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Orders events spread over `n` partitions by key (every event of a key in
/// the same partition, as Debezium's keyed records are), offsets renumbered.
fn spread(stream: &[Json], n: i64) -> Vec<Json> {
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    stream
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if is_orders(&l) {
                let key: Json = serde_json::from_str(l["key"].as_str().unwrap()).unwrap();
                let id = key["payload"]["order_id"].as_i64().unwrap();
                let p = id.rem_euclid(n);
                let o = next.entry(p).or_insert(0);
                l["partition"] = json!(p);
                l["offset"] = json!(*o);
                *o += 1;
            }
            l
        })
        .collect()
}

/// Orders per day and distinct customers per day, from the orders.
fn distinct_rows(orders: &[Json]) -> Vec<Json> {
    let mut days: BTreeMap<String, (i64, std::collections::BTreeSet<i64>)> = BTreeMap::new();
    for o in orders {
        let placed = local(o["placed_at"].as_str().unwrap());
        let day = text(placed.date().and_hms_opt(0, 0, 0).unwrap());
        let e = days.entry(day).or_default();
        e.0 += 1;
        e.1.insert(o["customer_id"].as_i64().unwrap());
    }
    days.into_iter()
        .map(|(day, (n, customers))| {
            let end = text(local(&day) + Duration::days(1));
            json!({"window_start": day, "window_end": end, "orders": n, "customers": customers.len()})
        })
        .collect()
}

/// The SDK docs' custom aggregate (a distinct count, `tests/guests/distinct`)
/// equals `count(DISTINCT customer_id)` per day, with orders moving between
/// customers, spread over three partitions (per-partition states merged),
/// in large batches and in batches of 3.
#[test]
fn a_custom_aggregate_equals_a_distinct_count_of_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Orders::from_fixture();
    let mut orders = source_orders();
    // an order moves to another customer, another one's customer goes away
    for (i, lsn) in [(0usize, 930_000_000_i64), (3, 930_000_008)] {
        let before = orders[i].clone();
        let mut after = before.clone();
        after["customer_id"] = json!(before["customer_id"].as_i64().unwrap() + 1);
        s.change("u", lsn, Some(&before), Some(&after));
        orders[i] = after;
    }
    let stream = spread(&s.stream, 3);
    let path = write_lines(dir.path(), "spread.jsonl", &stream);
    let want = distinct_rows(&orders);
    // the same source built against today's WIT and against the frozen 0.2
    for (guest, wit) in [("distinct", "0.3.0"), ("distinct_v02", "0.2.0")] {
        for batch in ["10000", "3"] {
            let scratch = Scratch::new(&[(guest, "distinct")]);
            let out = scratch.run(&path, &["--max-batch", batch]);
            let log = stderr(&out);
            assert!(log.contains(&format!("; WIT {wit})")), "{log}");
            let d = diff_table(
                &scratch.db(),
                "orders_distinct_daily",
                &want,
                &["window_start"],
            );
            assert!(d.is_empty(), "{guest}, batches of {batch}: {d:#?}\n{log}");
            let dlq = query(&scratch.db(), "SELECT reason FROM sluice_dlq");
            assert!(dlq.is_empty(), "{dlq:?}");
        }
    }
}
