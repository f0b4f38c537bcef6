//! End-to-end replays of real Debezium events (captured from PostgreSQL)
//! through the real `sluice` binary and real guest components into SQLite,
//! checked against the source database's final state (`pg_expected.json`).

mod common;

use common::*;
use serde_json::Value as Json;

/// Events of `topic` in a fixture whose payload satisfies `pred`.
fn events_where(file: &str, topic: &str, pred: impl Fn(&Json) -> bool) -> usize {
    std::fs::read_to_string(fixture(file))
        .unwrap()
        .lines()
        .filter(|l| {
            let r: Json = serde_json::from_str(l).unwrap();
            if r["topic"] != topic || r["payload"].is_null() {
                return false;
            }
            let p: Json = serde_json::from_str(r["payload"].as_str().unwrap()).unwrap();
            let p = if p.get("schema").is_some() {
                p["payload"].clone()
            } else {
                p
            };
            pred(&p)
        })
        .count()
}

fn orders_events_where(file: &str, pred: impl Fn(&Json) -> bool) -> usize {
    events_where(file, "pgserver1.public.orders", pred)
}

/// The schemaless precise stream without configuration, checked against the
/// source's final state: customers (no decimals) land whole and equal the
/// source; in the tables with a decimal column every row of the source has a
/// (non-null) decimal, so no row may land and every event with a row image
/// is dead-lettered at decode with the reason.
fn assert_precise_stream_without_config(db: &std::path::Path) {
    let file = "pg_events.plain-precise.jsonl";
    let exp = expected(&fixture("pg_expected.json"));
    let d = diff_table(
        db,
        "customers",
        exp["customers"].as_array().unwrap(),
        &["id"],
    );
    assert!(d.is_empty(), "{d:?}");
    let dlq = query(db, "SELECT topic, stage, reason FROM sluice_dlq");
    assert!(dlq.iter().all(|r| r["stage"] == "decode"), "{dlq:?}");
    assert!(
        dlq.iter()
            .all(|r| r["reason"].as_str().unwrap().contains("refusing to guess")),
        "{dlq:?}"
    );
    let mut all_dead = 0;
    for (table, _) in &PG_KEYS[1..] {
        let topic = format!("pgserver1.public.{table}");
        // Deletes need only their key (from the Kafka key): they apply.
        let with_rows = events_where(file, &topic, |p| !p["after"].is_null());
        let dead = dlq.iter().filter(|r| r["topic"] == topic.as_str()).count();
        let landed = if table_exists(db, table) {
            query(db, &format!("SELECT * FROM {table}"))
        } else {
            Vec::new()
        };
        // Every event carries a decimal in these tables: none can be applied.
        assert_eq!(
            landed.len(),
            0,
            "{table}: rows landed without their scale: {landed:?}"
        );
        assert_eq!(
            dead, with_rows,
            "{table}: every event with a row image is dead-lettered"
        );
        all_dead += dead;
    }
    assert_eq!(dlq.len(), all_dead, "dead letters of other tables: {dlq:?}");
}

#[test]
fn mirror_of_schema_stream_equals_source_state() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let out = s.run(&fixture("pg_events.schemas.jsonl"), &[]);
    assert_pg_state(&s.db());
    assert!(
        query(&s.db(), "SELECT * FROM sluice_dlq").is_empty(),
        "{}",
        stderr(&out)
    );
    // decimals are stored exactly, as text, never as floating point
    for (table, col) in [
        ("orders", "amount"),
        ("products", "price"),
        ("order_lines", "unit_price"),
    ] {
        let types = query(
            &s.db(),
            &format!("SELECT DISTINCT typeof({col}) AS t FROM {table}"),
        );
        assert_eq!(types.len(), 1, "{table}.{col}: {types:?}");
        assert_eq!(types[0]["t"], "text", "{table}.{col}");
    }
}

#[test]
fn mirror_of_schemaless_stream_with_declared_types_equals_source_state() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let cfg = workspace().join("examples/pg-plain.toml");
    s.run(&fixture("pg_events.plain.jsonl"), &[cfg.to_str().unwrap()]);
    assert_pg_state(&s.db());
    assert!(query(&s.db(), "SELECT * FROM sluice_dlq").is_empty());
}

#[test]
fn schemaless_precise_decimals_are_dead_lettered_never_guessed() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    // no configuration at all: the acceptance command as a user would type it
    let out = s.run(&fixture("pg_events.plain-precise.jsonl"), &[]);
    assert_precise_stream_without_config(&s.db());
    let dlq = query(&s.db(), "SELECT id FROM sluice_dlq");
    assert!(stderr(&out).contains("precise decimal"), "the log says why");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("dead-lettered {}", dlq.len())));
}

#[test]
fn schemaless_precise_decimals_with_configured_scale_are_exact() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let cfg = workspace().join("examples/pg-plain-precise.toml");
    s.run(
        &fixture("pg_events.plain-precise.jsonl"),
        &[cfg.to_str().unwrap()],
    );
    assert_pg_state(&s.db());
}

#[test]
fn declared_scale_missing_dead_letters_with_reason() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let cfg = s.path("p.toml");
    std::fs::write(
        &cfg,
        "[columns.orders]\namount = { type = \"decimal\", encoding = \"base64\" }\n",
    )
    .unwrap();
    let out = s.run(
        &fixture("pg_events.plain-precise.jsonl"),
        &[cfg.to_str().unwrap()],
    );
    let reasons = query(
        &s.db(),
        "SELECT reason FROM sluice_dlq WHERE topic = 'pgserver1.public.orders'",
    );
    // Deletes need only their key: they apply.
    let orders_with_rows =
        orders_events_where("pg_events.plain-precise.jsonl", |p| !p["after"].is_null());
    assert_eq!(
        reasons.len(),
        orders_with_rows,
        "every orders event carries an amount"
    );
    assert!(
        reasons
            .iter()
            .all(|r| r["reason"].as_str().unwrap().contains("scale is unknown")),
        "{reasons:?}"
    );
    assert!(stderr(&out).contains("scale is unknown"));
}

/// Count every write the sink makes to the mirrored tables with triggers, an
/// audit independent of Sluice's own counters.
fn install_write_audit(db: &std::path::Path) {
    let mut stmts = vec![
        "CREATE TABLE audit_writes (n INTEGER NOT NULL)".to_string(),
        "INSERT INTO audit_writes VALUES (0)".to_string(),
    ];
    for (t, _) in PG_KEYS {
        for ev in ["INSERT", "UPDATE", "DELETE"] {
            stmts.push(format!(
                "CREATE TRIGGER audit_{t}_{ev} AFTER {ev} ON {t} BEGIN UPDATE audit_writes SET n = n + 1; END"
            ));
        }
    }
    execute(db, &stmts.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn running_the_same_input_twice_changes_nothing() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let input = fixture("pg_events.schemas.jsonl");
    s.run(&input, &[]);
    assert_pg_state(&s.db());
    let before: Vec<_> = PG_KEYS
        .iter()
        .map(|(t, _)| query(&s.db(), &format!("SELECT * FROM {t} ORDER BY 1, 2")))
        .collect();
    let offsets = query(&s.db(), "SELECT * FROM sluice_offsets ORDER BY topic");
    install_write_audit(&s.db());
    let out = s.run(&input, &[]);
    let writes = query(&s.db(), "SELECT n FROM audit_writes");
    assert_eq!(writes[0]["n"], 0, "the second run wrote to the sink");
    let after: Vec<_> = PG_KEYS
        .iter()
        .map(|(t, _)| query(&s.db(), &format!("SELECT * FROM {t} ORDER BY 1, 2")))
        .collect();
    assert_eq!(before, after);
    let offsets_after = query(
        &s.db(),
        "SELECT topic, kafka_partition, next_offset FROM sluice_offsets ORDER BY topic",
    );
    let strip = |rows: Vec<serde_json::Map<String, Json>>| {
        rows.into_iter()
            .map(|mut r| {
                r.remove("updated_at");
                r.remove("pipeline");
                r
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(offsets), strip(offsets_after));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read 0 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_trapping_plugin_dead_letters_only_the_poison_event() {
    let s = Scratch::new(&[("trap_on", "trap_on")]);
    let out = s.run(&fixture("pg_events.schemas.jsonl"), &[]);
    let poison = orders_events_where("pg_events.schemas.jsonl", |p| {
        p["after"]["order_id"] == 1003
    });
    assert!(poison > 0);
    let dlq = query(
        &s.db(),
        "SELECT topic, kafka_offset, stage, plugin, reason, record_value FROM sluice_dlq",
    );
    assert_eq!(dlq.len(), poison, "{dlq:?}");
    for r in &dlq {
        assert_eq!(r["stage"], "plugin");
        assert_eq!(r["plugin"], "trap_on");
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("trap") && reason.contains("poison order 1003"),
            "{reason}"
        );
        // The record exactly as it was read (the source keeps a shared
        // schema and the payload apart; the DLQ puts them back together).
        let line = std::fs::read_to_string(fixture("pg_events.schemas.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .find(|l| l["topic"] == r["topic"] && l["offset"] == r["kafka_offset"])
            .expect("the dead letter's record is in the fixture");
        assert_eq!(
            r["record_value"], line["payload"],
            "the original record is kept, byte for byte"
        );
        assert!(r["record_value"].as_str().unwrap().contains("1003"));
    }
    // every other row landed: the source state minus order 1003
    let exp = expected(&fixture("pg_expected.json"));
    let mut diffs = Vec::new();
    for (table, key) in PG_KEYS {
        let rows: Vec<Json> = exp[*table]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !(*table == "orders" && r["order_id"] == 1003))
            .cloned()
            .collect();
        diffs.extend(diff_table(&s.db(), table, &rows, key));
    }
    assert!(diffs.is_empty(), "{diffs:?}");
    assert!(stderr(&out).contains("replaying the batch event by event"));
}

/// Schemaless inserts into `srv.public.notes`, one per note, ids 1, 2, …
/// at offsets 0, 1, … (`trap_on` misbehaves on some notes).
fn notes_events(s: &Scratch, notes: &[&str]) -> std::path::PathBuf {
    let lines: Vec<String> = notes
        .iter()
        .enumerate()
        .map(|(off, note)| {
            let id = off + 1;
            let payload = serde_json::json!({"before": null, "after": {"id": id, "note": note}, "op": "c", "source": {"ts_ms": 1}}).to_string();
            serde_json::json!({"topic": "srv.public.notes", "partition": 0, "offset": off, "key": format!("{{\"id\":{id}}}"), "payload": payload}).to_string()
        })
        .collect();
    let path = s.path("notes.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn a_runaway_plugin_is_stopped_by_the_call_deadline() {
    let s = Scratch::new(&[("trap_on", "trap_on")]);
    let events = notes_events(&s, &["a", "loop", "b"]);
    let cfg = s.path("p.toml");
    std::fs::write(&cfg, "[limits]\ncall_timeout = \"300ms\"\n").unwrap();
    s.run(&events, &[cfg.to_str().unwrap()]);
    let dlq = query(&s.db(), "SELECT kafka_offset, reason FROM sluice_dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["kafka_offset"], 1);
    assert!(
        dlq[0]["reason"].as_str().unwrap().contains("deadline"),
        "{dlq:?}"
    );
    let ids: Vec<_> = query(&s.db(), "SELECT id FROM notes ORDER BY id")
        .into_iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, vec![Json::from(1), Json::from(3)]);
}

#[test]
fn the_memory_cap_stops_a_guest_that_grows_past_it() {
    let s = Scratch::new(&[("trap_on", "trap_on")]);
    let events = notes_events(&s, &["a", "hog", "b"]);
    // 64 MiB do not fit under a 16 MiB cap: the guest is stopped, its event
    // dead-lettered with the reason, and a fresh instance takes the next one.
    let cfg = s.path("small.toml");
    std::fs::write(&cfg, "[limits]\nmemory_mib = 16\n").unwrap();
    s.run(&events, &[cfg.to_str().unwrap()]);
    let dlq = query(
        &s.db(),
        "SELECT kafka_offset, stage, reason FROM sluice_dlq",
    );
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["kafka_offset"], 1);
    assert_eq!(dlq[0]["stage"], "plugin");
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("memory limit of 16 MiB"),
        "{dlq:?}"
    );
    let ids = |db: &std::path::Path| -> Vec<Json> {
        query(db, "SELECT id FROM notes ORDER BY id")
            .into_iter()
            .map(|r| r["id"].clone())
            .collect()
    };
    assert_eq!(ids(&s.db()), vec![Json::from(1), Json::from(3)]);
    // Under a cap it fits in, the same event is no trouble: the cap stopped it.
    let roomy = Scratch::new(&[("trap_on", "trap_on")]);
    let cfg = roomy.path("roomy.toml");
    std::fs::write(&cfg, "[limits]\nmemory_mib = 256\n").unwrap();
    roomy.run(&events, &[cfg.to_str().unwrap()]);
    assert!(query(&roomy.db(), "SELECT id FROM sluice_dlq").is_empty());
    assert_eq!(
        ids(&roomy.db()),
        vec![Json::from(1), Json::from(2), Json::from(3)]
    );
}

#[test]
fn a_nan_the_sink_cannot_hold_is_dead_lettered_and_the_rest_lands() {
    // Debezium sends a double column's NaN as the JSON string "NaN" (Kafka
    // Connect's JsonConverter quotes non-numeric numbers); SQLite would store
    // NULL, so the event is dead-lettered with the reason, never changed.
    let s = Scratch::new(&[("mirror", "mirror")]);
    let schema = serde_json::json!({"type": "struct", "name": "srv.public.readings.Envelope", "optional": false, "fields": [
        {"field": "before", "type": "struct", "optional": true, "name": "srv.public.readings.Value", "fields": [
            {"field": "id", "type": "int32", "optional": false}, {"field": "v", "type": "double", "optional": true}]},
        {"field": "after", "type": "struct", "optional": true, "name": "srv.public.readings.Value", "fields": [
            {"field": "id", "type": "int32", "optional": false}, {"field": "v", "type": "double", "optional": true}]},
        {"field": "op", "type": "string", "optional": false},
        {"field": "ts_ms", "type": "int64", "optional": true}]});
    let line = |off: i64, id: i64, v: Json| {
        let value = serde_json::json!({"schema": schema, "payload": {"before": null, "after": {"id": id, "v": v}, "op": "c", "ts_ms": 1}}).to_string();
        serde_json::json!({"topic": "srv.public.readings", "partition": 0, "offset": off, "key": format!("{{\"id\":{id}}}"), "payload": value}).to_string()
    };
    let events = s.path("nan.jsonl");
    std::fs::write(
        &events,
        [
            line(0, 1, Json::from(1.5)),
            line(1, 2, Json::from("NaN")),
            line(2, 3, Json::from("Infinity")),
            line(3, 4, Json::from(-2.25)),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let out = s.run(&events, &[]);
    let dlq = query(
        &s.db(),
        "SELECT kafka_offset, stage, reason FROM sluice_dlq",
    );
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["kafka_offset"], 1);
    assert_eq!(dlq[0]["stage"], "sink");
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("NaN cannot be stored in SQLite"),
        "{dlq:?}"
    );
    let rows = query(&s.db(), "SELECT id, v FROM readings ORDER BY id");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(
        (rows[0]["id"].clone(), rows[0]["v"].as_f64()),
        (Json::from(1), Some(1.5))
    );
    assert_eq!(rows[1]["id"], 3);
    // JSON has no infinity, so ask SQLite
    let inf = query(
        &s.db(),
        "SELECT v > 1e308 AS inf FROM readings WHERE id = 3",
    );
    assert_eq!(inf[0]["inf"], 1, "Infinity kept");
    assert_eq!(rows[2]["v"].as_f64(), Some(-2.25));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("dead-lettered 1 (decode 0, plugin 0, sink 1)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn malformed_input_is_dead_lettered_and_the_rest_lands() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let good = std::fs::read_to_string(fixture("pg_events.schemas.jsonl")).unwrap();
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    lines.insert(3, "this is not json".into());
    lines.insert(5, r#"{"topic":"pgserver1.public.broken","partition":0,"offset":0,"key":"{\"id\":1}","payload":"{\"op\":\"c\",\"after\":"}"#.into());
    let input = s.path("mixed.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    s.run(&input, &[]);
    let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq ORDER BY id");
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq.iter().all(|r| r["stage"] == "decode"));
    assert!(dlq[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not a kcat -J record"));
    assert_pg_state(&s.db());
}

#[test]
fn a_plugin_built_against_wit_0_1_runs_beside_0_3_plugins() {
    // `plugins/mirror`'s source built with the SDK's `wit-0-1` feature.
    let s = Scratch::new(&[
        ("mirror_v01", "mirror_v01"),
        ("orders_enriched", "orders_enriched"),
    ]);
    let out = s.run(&fixture("pg_events.schemas.jsonl"), &[]);
    let log = stderr(&out);
    assert!(log.contains("mirror_v01: *; WIT 0.1.0"), "{log}");
    assert!(log.contains("orders_enriched: orders; WIT 0.3.0"), "{log}");
    assert_pg_state(&s.db());
    let d = diff_table(
        &s.db(),
        "orders_clean",
        &expected_orders_clean(),
        &["order_id"],
    );
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn orders_enriched_normalises_orders() {
    let s = Scratch::new(&[("orders_enriched", "orders_enriched")]);
    let out = s.run(&fixture("pg_events.schemas.jsonl"), &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unrouted"));
    // independent truth: the source's orders, transformed by hand
    let want = expected_orders_clean();
    let d = diff_table(&s.db(), "orders_clean", &want, &["order_id"]);
    assert!(d.is_empty(), "{d:?}");
    assert!(
        !table_exists(&s.db(), "customers"),
        "orders_enriched handles only orders"
    );
}

/// Sink contents and DLQ (without ids and times) for comparing two runs.
fn sink_snapshot(db: &std::path::Path) -> Vec<Vec<serde_json::Map<String, Json>>> {
    let mut out: Vec<_> = PG_KEYS
        .iter()
        .filter(|(t, _)| table_exists(db, t))
        .map(|(t, _)| query(db, &format!("SELECT * FROM {t} ORDER BY 1, 2")))
        .collect();
    out.push(query(db, "SELECT topic, kafka_partition, kafka_offset, stage, reason FROM sluice_dlq ORDER BY topic, kafka_partition, kafka_offset"));
    out
}

#[test]
fn a_resumed_run_decodes_exactly_like_a_straight_run() {
    // Schemaless precise stream, no configuration: what the decoder learns
    // (columns proven to be text) must survive a restart, or a resumed run
    // would dead-letter rows a straight run applies.
    let input = fixture("pg_events.plain-precise.jsonl");
    let straight = Scratch::new(&[("mirror", "mirror")]);
    straight.run(&input, &[]);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Resume right at the record whose name ("Nuno") is base64-shaped: only
    // what earlier batches learned proves the column holds text.
    let nuno = lines.iter().position(|l| l.contains("Nuno")).unwrap();
    for cut in [nuno, 150, 300] {
        let resumed = Scratch::new(&[("mirror", "mirror")]);
        let head = resumed.path("head.jsonl");
        std::fs::write(&head, lines[..cut].join("\n") + "\n").unwrap();
        resumed.run(&head, &["--max-batch", "7"]);
        let full = resumed.path("full.jsonl");
        std::fs::write(&full, text.clone()).unwrap();
        let out = resumed.run(&full, &["--max-batch", "7"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{cut} already applied")));
        assert_eq!(
            sink_snapshot(&resumed.db()),
            sink_snapshot(&straight.db()),
            "cut at {cut}"
        );
        assert_precise_stream_without_config(&resumed.db());
    }
    // and both against the source, not only against each other
    assert_precise_stream_without_config(&straight.db());
}

#[test]
fn a_plugin_file_that_fails_to_load_at_start_stops_the_run() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    std::fs::write(s.path("plugins/broken.wasm"), b"not a component").unwrap();
    let out = s
        .command(&format!(
            "file:{}",
            fixture("pg_events.schemas.jsonl").display()
        ))
        .arg("--until-caught-up")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("broken.wasm") && err.contains("failed to load"),
        "{err}"
    );
    assert!(!table_exists(&s.db(), "customers"), "nothing was applied");
}

#[test]
fn a_table_the_sink_cannot_take_dead_letters_its_events_with_the_plugin_name() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    // customers already exists with another primary key
    execute(
        &s.db(),
        &["CREATE TABLE customers (email TEXT PRIMARY KEY, id INTEGER)"],
    );
    s.run(&fixture("pg_events.schemas.jsonl"), &[]);
    let dlq = query(
        &s.db(),
        "SELECT topic, stage, plugin, reason FROM sluice_dlq",
    );
    let customers_events = std::fs::read_to_string(fixture("pg_events.schemas.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("\"pgserver1.public.customers\"") && !l.ends_with("\"payload\": null}")
        })
        .count();
    assert_eq!(dlq.len(), customers_events, "{dlq:?}");
    for r in &dlq {
        assert_eq!(r["stage"], "sink");
        assert_eq!(r["plugin"], "mirror");
        assert!(
            r["reason"].as_str().unwrap().contains("primary key"),
            "{r:?}"
        );
    }
    let exp = expected(&fixture("pg_expected.json"));
    for (table, key) in &PG_KEYS[1..] {
        let d = diff_table(&s.db(), table, exp[*table].as_array().unwrap(), key);
        assert!(d.is_empty(), "{d:?}");
    }
}

#[test]
fn an_undeclared_schemaless_column_keeps_each_value_exactly() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let line = |off: i64, x: &str| {
        let payload = format!(
            r#"{{"before":null,"after":{{"id":{off},"x":{x}}},"op":"c","source":{{"ts_ms":1}}}}"#
        );
        serde_json::json!({"topic": "srv.public.m", "partition": 0, "offset": off, "key": format!("{{\"id\":{off}}}"), "payload": payload}).to_string()
    };
    let events = s.path("m.jsonl");
    // first an integer, then an exact decimal: a column typed INTEGER from the
    // first row would turn "5.10" into the float 5.1
    std::fs::write(
        &events,
        [
            line(0, "5"),
            line(1, "5.10"),
            line(2, "12345678901234567890.5"),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    s.run(&events, &["--max-batch", "1"]);
    let rows = query(&s.db(), "SELECT id, x, typeof(x) AS t FROM m ORDER BY id");
    assert_eq!(rows[0]["x"], 5);
    assert_eq!(
        (rows[1]["x"].clone(), rows[1]["t"].clone()),
        (Json::from("5.10"), Json::from("text"))
    );
    assert_eq!(rows[2]["x"], "12345678901234567890.5");
}
