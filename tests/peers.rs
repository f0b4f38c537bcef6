//! Conformance with other projects' Debezium test data (Arroyo, RisingWave,
//! Paimon), read in place from `../shared/fixtures/peers/` (never copied).
//! Each case replays its events through `mirror` and compares the sink with
//! the state those projects assert.

mod common;

use std::path::PathBuf;

use common::*;

fn peers() -> Option<PathBuf> {
    let dir = workspace().parent()?.join("shared/fixtures/peers");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} is absent (the peers suite lives beside the project in CI)",
            dir.display()
        );
        None
    }
}

/// Replay one case; `config` is a pipeline file body for what the events
/// cannot say themselves. `all_columns`: every sink column must be expected.
fn case(
    dir: &str,
    events: &str,
    expected_file: &str,
    table: &str,
    key: &[&str],
    config: &str,
    all_columns: bool,
) {
    let Some(root) = peers() else { return };
    let s = Scratch::new(&[("mirror", "mirror")]);
    let cfg = s.path("pipeline.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = s.run(&root.join(dir).join(events), &[cfg.to_str().unwrap()]);
    let exp = expected(&root.join(dir).join(expected_file));
    let rows = exp[table].as_array().unwrap();
    let mut diffs = diff_table(&s.db(), table, rows, key);
    if !all_columns {
        diffs.retain(|d| !d.contains(" columns, expected "));
    }
    let dlq = query(&s.db(), "SELECT kafka_offset, reason FROM sluice_dlq");
    assert!(
        diffs.is_empty() && dlq.is_empty(),
        "{dir}: {} differences:\n{}\nDLQ: {dlq:?}\nlog:\n{}",
        diffs.len(),
        diffs.join("\n"),
        stderr(&out)
    );
}

#[test]
fn arroyo_orders_schemaless_with_microsecond_timestamps() {
    case(
        "arroyo-debezium-orders",
        "arroyo_orders_events.jsonl",
        "arroyo_orders_expected.json",
        "orders",
        &["id"],
        // Postgres `timestamp` as Debezium MicroTimestamp: the unit is not in the data.
        "[columns.orders]\norder_date = { type = \"timestamp\", unit = \"us\" }\n",
        true,
    );
}

#[test]
fn risingwave_customers_with_schema() {
    case(
        "rw-mysql-customers-schema",
        "rw_customers_schema_events.jsonl",
        "rw_customers_schema_expected.json",
        "customers",
        &["id"],
        "",
        true,
    );
}

#[test]
fn risingwave_customers_without_schema() {
    case(
        "rw-mysql-customers-noschema",
        "rw_customers_noschema_events.jsonl",
        "rw_customers_noschema_expected.json",
        "customers",
        &["id"],
        "",
        true,
    );
}

#[test]
fn risingwave_lineitem_payload_wrapper_without_schema() {
    case(
        "rw-lineitem-payload-only",
        "rw_lineitem_events.jsonl",
        "rw_lineitem_expected.json",
        "lineitem",
        &["L_ORDERKEY", "L_LINENUMBER"],
        // DECIMAL columns arrive as JSON numbers: the connector ran with
        // decimal.handling.mode=double, so no string is a base64 decimal.
        "decimal_handling = \"double\"\n",
        true,
    );
}

#[test]
fn risingwave_unreadable_kafka_key_with_configured_key() {
    case(
        "rw-pg-orders-mess-key",
        "rw_orders_mess_key_events.jsonl",
        "rw_orders_mess_key_expected.json",
        "orders",
        &["order_id"],
        "[keys]\norders = [\"order_id\"]\n",
        true,
    );
}

#[test]
fn risingwave_unreadable_kafka_key_without_configuration_is_dead_lettered() {
    let Some(root) = peers() else { return };
    let s = Scratch::new(&[("mirror", "mirror")]);
    s.run(
        &root.join("rw-pg-orders-mess-key/rw_orders_mess_key_events.jsonl"),
        &[],
    );
    let dlq = query(&s.db(), "SELECT reason FROM sluice_dlq");
    assert_eq!(dlq.len(), 4, "no row stored under a guessed key");
    assert!(dlq
        .iter()
        .all(|r| r["reason"].as_str().unwrap().contains("****")));
}

#[test]
fn paimon_mysql_all_types_with_schema() {
    // Paimon-specific representations (BIT as big-endian bytes, geometry as
    // GeoJSON) are kept out of the expected file: compare the 69 columns it has.
    case(
        "paimon-mysql-alltypes",
        "paimon_alltypes_events.jsonl",
        "paimon_alltypes_expected.json",
        "all_types_table",
        &["_id"],
        "",
        false,
    );
}
