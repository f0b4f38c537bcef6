//! End-to-end replays of real Debezium events (captured from PostgreSQL)
//! through the real `sluice` binary and real guest components into SQLite,
//! checked against the source database's final state (`pg_expected.json`).

mod common;

use common::*;
use serde_json::Value as Json;

fn orders_events_where(file: &str, pred: impl Fn(&Json) -> bool) -> usize {
    std::fs::read_to_string(fixture(file))
        .unwrap()
        .lines()
        .filter(|l| {
            let r: Json = serde_json::from_str(l).unwrap();
            if r["topic"] != "pgserver1.public.orders" || r["payload"].is_null() {
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
    // decimals are stored exactly, as text, not as floating point
    let amounts = query(&s.db(), "SELECT typeof(amount) AS t FROM orders GROUP BY 1");
    assert_eq!(amounts.len(), 1);
    assert_eq!(amounts[0]["t"], "text");
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
    let exp = expected(&fixture("pg_expected.json"));
    // customers carry no decimal: they land completely
    let d = diff_table(
        &s.db(),
        "customers",
        exp["customers"].as_array().unwrap(),
        &["id"],
    );
    assert!(d.is_empty(), "{d:?}");
    // whatever landed in the decimal tables must be exactly right
    for (table, key, dec_col) in [
        ("orders", "order_id", "amount"),
        ("products", "id", "price"),
        ("order_lines", "order_id", "unit_price"),
    ] {
        if !table_exists(&s.db(), table) {
            continue;
        }
        let rows = query(&s.db(), &format!("SELECT {key}, {dec_col} FROM {table}"));
        for r in rows {
            let want = exp[table]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e[key] == r[key]);
            if let Some(want) = want {
                assert!(
                    value_matches(&want[dec_col], &r[dec_col]),
                    "{table}: wrong value {r:?}"
                );
            }
        }
    }
    // the decimal-carrying events are in the DLQ with the reason
    let dlq = query(&s.db(), "SELECT topic, stage, reason FROM sluice_dlq");
    let orders_dlq = dlq
        .iter()
        .filter(|r| r["topic"] == "pgserver1.public.orders")
        .count();
    let orders_with_rows = orders_events_where("pg_events.plain-precise.jsonl", |p| {
        !p["after"].is_null() || !p["before"].is_null()
    });
    assert_eq!(
        orders_dlq, orders_with_rows,
        "every orders event carries an amount"
    );
    assert!(dlq.iter().all(|r| r["stage"] == "decode"));
    assert!(dlq
        .iter()
        .all(|r| r["reason"].as_str().unwrap().contains("refusing to guess")));
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
    assert!(!reasons.is_empty());
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
        "SELECT topic, partition, next_offset FROM sluice_offsets ORDER BY topic",
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
        "SELECT topic, offset, stage, plugin, reason, value FROM sluice_dlq",
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
        assert!(
            r["value"].as_str().unwrap().contains("1003"),
            "the original record is kept"
        );
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

#[test]
fn a_runaway_plugin_is_stopped_by_the_call_deadline() {
    let s = Scratch::new(&[("trap_on", "trap_on")]);
    let events = s.path("loop.jsonl");
    let line = |off: i64, id: i64, note: &str| {
        let payload = serde_json::json!({"before": null, "after": {"id": id, "note": note}, "op": "c", "source": {"ts_ms": 1}}).to_string();
        serde_json::json!({"topic": "srv.public.notes", "partition": 0, "offset": off, "key": format!("{{\"id\":{id}}}"), "payload": payload}).to_string()
    };
    std::fs::write(
        &events,
        [line(0, 1, "a"), line(1, 2, "loop"), line(2, 3, "b")].join("\n") + "\n",
    )
    .unwrap();
    let cfg = s.path("p.toml");
    std::fs::write(&cfg, "[limits]\ncall_timeout = \"300ms\"\n").unwrap();
    s.run(&events, &[cfg.to_str().unwrap()]);
    let dlq = query(&s.db(), "SELECT offset, reason FROM sluice_dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["offset"], 1);
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
fn orders_enriched_normalises_orders() {
    let s = Scratch::new(&[("orders_enriched", "orders_enriched")]);
    let out = s.run(&fixture("pg_events.schemas.jsonl"), &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unrouted"));
    // independent truth: the source's orders, transformed by hand
    let exp = expected(&fixture("pg_expected.json"));
    let want: Vec<Json> = exp["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            serde_json::json!({
                "order_id": o["order_id"],
                "customer_id": o["customer_id"],
                "amount": o["amount"],
                "status": o["status"].as_str().unwrap().to_uppercase(),
                "placed_at": format!("{}Z", o["placed_at"].as_str().unwrap()),
            })
        })
        .collect();
    let d = diff_table(&s.db(), "orders_clean", &want, &["order_id"]);
    assert!(d.is_empty(), "{d:?}");
    assert!(
        !table_exists(&s.db(), "customers"),
        "orders_enriched handles only orders"
    );
}
