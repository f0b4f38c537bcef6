use super::*;
use crate::config::{ColumnHint, DecimalHandling};
use crate::model::{Learned, RecordId};
use crate::source::file::KcatLine;

const SCHEMAS: &str = include_str!("../../../tests/fixtures/debezium-pg/pg_events.schemas.jsonl");
const PRECISE: &str =
    include_str!("../../../tests/fixtures/debezium-pg/pg_events.plain-precise.jsonl");

fn record(line: &str) -> RawRecord {
    KcatLine::parse(line).unwrap().into_record()
}

fn raw(topic: &str, key: Option<&str>, value: &str) -> RawRecord {
    RawRecord {
        id: RecordId {
            topic: topic.into(),
            partition: 0,
            offset: 0,
        },
        key: key.map(str::to_string),
        value: Some(value.to_string()),
        headers: Default::default(),
        schema: None,
    }
}

/// The first `orders` record of a fixture stream.
fn first_order(stream: &str) -> RawRecord {
    record(
        stream
            .lines()
            .find(|l| l.contains("\"pgserver1.public.orders\""))
            .expect("the fixture has orders"),
    )
}

fn change(d: Decoded) -> ChangeEvent {
    match d {
        Decoded::Change(c) => c,
        Decoded::Tombstone => panic!("tombstone"),
    }
}

#[test]
fn schema_stream_types_every_column() {
    let mut dec = Decoder::new(ColumnHints::default());
    let order = first_order(SCHEMAS);
    let c = change(dec.decode(&order).unwrap());
    assert_eq!(c.op, Op::Read);
    assert_eq!(c.table.name, "orders");
    assert_eq!(c.table.namespace, "public");
    let after = c.after.unwrap();
    let col = |n: &str| c.table.columns.iter().position(|x| x.name == n).unwrap();
    assert_eq!(after[col("amount")], Value::Decimal("247.75".into()));
    assert_eq!(
        after[col("placed_at")],
        Value::LocalTimestamp(1742575240457000)
    );
    assert_eq!(after[col("note")], Value::Text("rush ✓".into()));
    assert_eq!(c.key, vec![Value::Int(1000)]);
    assert_eq!(c.source_position.as_deref(), Some("lsn:27045584"));
}

#[test]
fn schemas_are_parsed_once_and_descriptors_shared() {
    let mut dec = Decoder::new(ColumnHints::default());
    let mut tables = Vec::new();
    for line in SCHEMAS
        .lines()
        .filter(|l| l.contains("\"pgserver1.public.customers\""))
    {
        if let Decoded::Change(c) = dec.decode(&record(line)).unwrap() {
            tables.push(c.table);
        }
    }
    assert!(tables.len() > 5);
    assert!(tables.iter().all(|t| Arc::ptr_eq(t, &tables[0])));
    assert_eq!(dec.schemas.len(), 1);
}

#[test]
fn every_fixture_record_decodes_or_is_a_tombstone() {
    let mut dec = Decoder::new(ColumnHints::default());
    let (mut changes, mut tombstones) = (0, 0);
    for line in SCHEMAS.lines() {
        match dec.decode(&record(line)) {
            Ok(Decoded::Change(_)) => changes += 1,
            Ok(Decoded::Tombstone) => tombstones += 1,
            Err(e) => panic!("{e}: {line}"),
        }
    }
    assert_eq!((changes, tombstones), (349, 50));
}

#[test]
fn precise_decimal_without_schema_is_refused_with_reason() {
    let mut hints = HashMap::new();
    hints.insert(
        "orders".to_string(),
        HashMap::from([(
            "amount".to_string(),
            ColumnHint {
                ty: HintType::Decimal,
                scale: None,
                unit: None,
                encoding: None,
            },
        )]),
    );
    let mut dec = Decoder::new(ColumnHints::new(hints));
    let order = first_order(PRECISE);
    let err = dec.decode(&order).unwrap_err().to_string();
    assert!(
        err.contains("scale is unknown") && err.contains("amount"),
        "{err}"
    );
}

#[test]
fn precise_decimal_with_configured_scale_decodes_exactly() {
    let mut hints = HashMap::new();
    hints.insert(
        "pgserver1.public.orders".to_string(),
        HashMap::from([(
            "amount".to_string(),
            ColumnHint {
                ty: HintType::Decimal,
                scale: Some(2),
                unit: None,
                encoding: None,
            },
        )]),
    );
    let mut dec = Decoder::new(ColumnHints::new(hints));
    let order = first_order(PRECISE);
    let c = change(dec.decode(&order).unwrap());
    assert!(c.after.unwrap().contains(&Value::Decimal("247.75".into())));
}

#[test]
fn envelope_shapes() {
    let mut dec = Decoder::new(ColumnHints::default());
    let bare = r#"{"before":null,"after":{"id":1,"x":"a"},"op":"c","ts_ms":5}"#;
    let only_payload = r#"{"payload":{"before":null,"after":{"id":1,"x":"a"},"op":"c","ts_ms":5}}"#;
    for v in [bare, only_payload] {
        let c = change(dec.decode(&raw("s.db.t", Some(r#"{"id":1}"#), v)).unwrap());
        assert_eq!(
            c.after.unwrap(),
            vec![Value::Int(1), Value::Text("a".into())]
        );
        assert_eq!(c.commit_time_ms, Some(5));
    }
    let tomb = RawRecord {
        value: None,
        ..raw("s.db.t", Some("{}"), "")
    };
    assert!(matches!(dec.decode(&tomb).unwrap(), Decoded::Tombstone));
}

#[test]
fn schemaless_numbers_stay_exact() {
    let mut dec = Decoder::new(ColumnHints::default());
    let v = r#"{"after":{"id":1,"p":12345678901234567890.125,"f":0.1},"op":"c"}"#;
    let c = change(dec.decode(&raw("t", Some(r#"{"id":1}"#), v)).unwrap());
    let after = c.after.unwrap();
    assert_eq!(after[1], Value::Decimal("12345678901234567890.125".into()));
    assert_eq!(after[2], Value::Decimal("0.1".into()));
}

#[test]
fn unreadable_key_uses_known_key_or_is_refused() {
    let mut dec = Decoder::new(ColumnHints::default());
    let v = r#"{"after":{"id":7,"x":"a"},"op":"c"}"#;
    let err = dec
        .decode(&raw("t", Some("****"), v))
        .unwrap_err()
        .to_string();
    assert!(err.contains("****") && err.contains("refusing"), "{err}");
    dec.decode(&raw("t", Some(r#"{"id":1}"#), v)).unwrap();
    let c = change(dec.decode(&raw("t", Some("****"), v)).unwrap());
    assert_eq!(c.key, vec![Value::Int(7)]);
}

#[test]
fn learned_facts_restore_the_same_decoding() {
    let v1 = r#"{"after":{"id":1,"name":"Ada Lovelace"},"op":"c"}"#;
    let v2 = r#"{"after":{"id":7,"name":"Nuno"},"op":"c"}"#;
    let mut straight = Decoder::new(ColumnHints::default());
    straight
        .decode(&raw("s.p.c", Some(r#"{"id":1}"#), v1))
        .unwrap();
    let facts = straight.take_learned();
    assert!(facts.contains(&Learned::TextColumn {
        topic: "s.p.c".into(),
        column: "name".into()
    }));
    assert!(straight.decode(&raw("s.p.c", Some("****"), v2)).is_ok());
    // a run resumed after the first record decodes "Nuno" the same way
    let mut resumed = Decoder::new(ColumnHints::default());
    assert!(
        resumed.decode(&raw("s.p.c", Some("****"), v2)).is_err(),
        "without the facts"
    );
    let mut resumed = Decoder::new(ColumnHints::default());
    resumed.restore(facts);
    let c = change(resumed.decode(&raw("s.p.c", Some("****"), v2)).unwrap());
    assert_eq!(c.after.unwrap()[1], Value::Text("Nuno".into()));
    assert!(resumed.take_learned().is_empty(), "nothing new was learned");
}

#[test]
fn string_decimal_mode_makes_base64_shaped_text_plain_text() {
    let mut dec =
        Decoder::new(ColumnHints::default()).with_decimal_handling(DecimalHandling::String);
    let v = r#"{"after":{"id":1,"ship":"NONE"},"op":"c"}"#;
    let c = change(dec.decode(&raw("x.y.t", Some(r#"{"id":1}"#), v)).unwrap());
    assert_eq!(c.after.unwrap()[1], Value::Text("NONE".into()));
}

#[test]
fn configured_key_replaces_an_unreadable_kafka_key() {
    let keys = TableKeys::new(HashMap::from([("t".to_string(), vec!["id".to_string()])]));
    let mut dec = Decoder::new(ColumnHints::default()).with_keys(keys);
    let v = r#"{"after":{"id":7,"x":"a"},"op":"c"}"#;
    let c = change(dec.decode(&raw("s.db.t", Some("****"), v)).unwrap());
    assert_eq!(c.key, vec![Value::Int(7)]);
    let c = change(dec.decode(&raw("s.db.t", None, v)).unwrap());
    assert_eq!(
        c.key,
        vec![Value::Int(7)],
        "a missing key uses the configured one too"
    );
    let bad = TableKeys::new(HashMap::from([("t".to_string(), vec!["nope".to_string()])]));
    let mut dec = Decoder::new(ColumnHints::default()).with_keys(bad);
    let err = dec
        .decode(&raw("s.db.t", Some("****"), v))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn delete_without_row_images_takes_its_key_from_the_kafka_key() {
    let mut dec = Decoder::new(ColumnHints::default());
    let v = r#"{"before":null,"after":null,"op":"d","source":{"ts_ms":9}}"#;
    let c = change(dec.decode(&raw("s.db.t", Some(r#"{"id":42}"#), v)).unwrap());
    assert_eq!(c.op, Op::Delete);
    assert_eq!(c.key, vec![Value::Int(42)]);
    assert_eq!(c.table.columns[c.table.key[0] as usize].name, "id");
    let err = dec
        .decode(&raw("s.db.t", Some("****"), v))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Kafka key"), "{err}");
}

#[test]
fn truncate_has_no_key_and_no_rows() {
    let keys = TableKeys::new(HashMap::from([("t".to_string(), vec!["id".to_string()])]));
    let mut dec = Decoder::new(ColumnHints::default()).with_keys(keys);
    let v = r#"{"before":null,"after":null,"op":"t","source":{"ts_ms":9}}"#;
    let c = change(dec.decode(&raw("s.db.t", None, v)).unwrap());
    assert_eq!(c.op, Op::Truncate);
    assert!(c.key.is_empty() && c.before.is_none() && c.after.is_none());
    assert_eq!(c.commit_time_ms, Some(9));
}

#[test]
fn logical_types_from_the_schema() {
    let schema = r#"{"type":"struct","fields":[{"type":"struct","field":"after","optional":true,"fields":[
        {"type":"int32","optional":false,"field":"id"},
        {"type":"struct","optional":true,"name":"io.debezium.data.VariableScaleDecimal","field":"v","fields":[]},
        {"type":"int64","optional":true,"name":"io.debezium.time.NanoTimestamp","field":"nt"},
        {"type":"int64","optional":true,"name":"io.debezium.time.Timestamp","field":"ms"},
        {"type":"int64","optional":true,"name":"io.debezium.time.MicroTime","field":"t"},
        {"type":"int32","optional":true,"name":"io.debezium.time.Date","field":"d"},
        {"type":"bytes","optional":true,"field":"b"},
        {"type":"string","optional":true,"name":"io.debezium.data.Json","field":"j"}]}]}"#;
    let payload = r#"{"before":null,"after":{"id":1,"v":{"scale":3,"value":"AeI="},"nt":1700000000123456000,
        "ms":1700000000123,"t":3723000001,"d":-1,"b":"AQID","j":"{\"a\": [1]}"},"op":"c","source":{"ts_ms":5}}"#;
    let value = format!(r#"{{"schema":{schema},"payload":{payload}}}"#);
    let mut dec = Decoder::new(ColumnHints::default());
    let c = change(
        dec.decode(&raw("s.db.t", Some(r#"{"id":1}"#), &value))
            .unwrap(),
    );
    assert_eq!(
        c.after.unwrap(),
        vec![
            Value::Int(1),
            Value::Decimal("0.482".into()),
            Value::LocalTimestamp(1_700_000_000_123_456),
            Value::LocalTimestamp(1_700_000_000_123_000),
            Value::Time(3_723_000_001),
            Value::Date(-1),
            Value::Bytes(vec![1, 2, 3]),
            Value::Json(r#"{"a": [1]}"#.into()),
        ]
    );
    // a NanoTimestamp with sub-microsecond digits is refused, not truncated
    let lossy = value.replace("1700000000123456000", "1700000000123456789");
    let err = dec
        .decode(&raw("s.db.t", Some(r#"{"id":1}"#), &lossy))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sub-microsecond"), "{err}");
}

#[test]
fn malformed_records_are_errors_not_panics() {
    let mut dec = Decoder::new(ColumnHints::default());
    for v in [
        "not json",
        "[1,2]",
        r#"{"after":{"id":1},"op":"x"}"#,
        r#"{"after":{"id":1}}"#,
    ] {
        assert!(
            dec.decode(&raw("t", Some(r#"{"id":1}"#), v)).is_err(),
            "{v}"
        );
    }
}

#[test]
fn topic_split() {
    assert_eq!(
        split_topic("pgserver1.public.orders"),
        ("public".into(), "orders".into())
    );
    assert_eq!(split_topic("orders"), ("".into(), "orders".into()));
}

#[test]
fn undeclared_base64_column_is_refused_until_proven_text() {
    let mut dec = Decoder::new(ColumnHints::default());
    let order = first_order(PRECISE);
    let err = dec.decode(&order).unwrap_err().to_string();
    assert!(
        err.contains("amount") && err.contains("refusing to guess"),
        "{err}"
    );
    // a 4-letter status is base64-shaped too, but once the column carried
    // other text it is known to be text
    let v1 = r#"{"after":{"id":1,"status":"NEW"},"op":"c"}"#;
    let v2 = r#"{"after":{"id":2,"status":"PAID"},"op":"c"}"#;
    let fresh = dec.decode(&raw("x.y.t2", Some(r#"{"id":2}"#), v2));
    assert!(fresh.is_err(), "first sight of PAID is ambiguous");
    dec.decode(&raw("x.y.t2", Some(r#"{"id":1}"#), v1)).unwrap();
    let c = change(dec.decode(&raw("x.y.t2", Some(r#"{"id":2}"#), v2)).unwrap());
    assert_eq!(c.after.unwrap()[1], Value::Text("PAID".into()));
}

#[test]
fn a_delete_whose_before_holds_placeholders_is_decoded_by_its_kafka_key() {
    // PostgreSQL's default REPLICA IDENTITY: the delete's `before` has the
    // key and placeholders; an empty decimal is no value, the key is enough.
    let mut dec = Decoder::new(ColumnHints::default());
    let delete = SCHEMAS
        .lines()
        .find(|l| l.contains("\"pgserver1.public.orders\"") && l.contains("\\\"op\\\":\\\"d\\\""))
        .expect("the fixture deletes an order");
    let mut line: serde_json::Value = serde_json::from_str(delete).unwrap();
    let mut env: serde_json::Value =
        serde_json::from_str(line["payload"].as_str().unwrap()).unwrap();
    env["payload"]["before"]["amount"] = serde_json::json!("");
    line["payload"] = serde_json::Value::String(env.to_string());
    let c = change(dec.decode(&record(&line.to_string())).unwrap());
    assert_eq!(c.op, Op::Delete);
    assert_eq!(c.key, vec![Value::Int(1000)]);
    assert!(c.before.is_none());
    assert_eq!(
        c.source_order,
        Some(crate::model::SourceOrder([27047240, 0, 0]))
    );
    // An update's unreadable image is still refused.
    env["payload"]["op"] = serde_json::json!("u");
    env["payload"]["after"] = env["payload"]["before"].clone();
    line["payload"] = serde_json::Value::String(env.to_string());
    assert!(dec.decode(&record(&line.to_string())).is_err());
}

/// The fast path decodes every fixture record as the general path does: a
/// warm decoder (schema compared as bytes) gives what a fresh one (schema
/// parsed) gives, the fast path is the one taken, and every row value read
/// straight from JSON text equals the general conversion of a JSON tree.
#[test]
fn the_fast_path_decodes_like_the_general_path() {
    let mut warm = Decoder::new(ColumnHints::default());
    let mut fast = 0;
    for line in SCHEMAS.lines() {
        let rec = record(line);
        if let Some(text) = rec.value.as_deref() {
            let known = warm.last_schema.get(&*rec.id.topic);
            if known.is_some_and(|(k, _)| payload::split_known_schema(k, text).is_some()) {
                fast += 1;
            }
        }
        let decoded = warm.decode(&rec);
        let got = format!("{:?}", decoded.as_ref().map_err(|e| &e.0));
        let mut cold = Decoder::new(ColumnHints::default());
        let want = format!("{:?}", cold.decode(&rec).map_err(|e| e.0));
        assert_eq!(got, want, "{line}");
        // each row value as the general conversion reads it from a JSON tree
        if let Ok(Decoded::Change(ev)) = decoded {
            let value: Json = serde_json::from_str(rec.value.as_deref().unwrap()).unwrap();
            let (_, rs) = &warm.last_schema[&*rec.id.topic];
            for (image, values) in [("before", &ev.before), ("after", &ev.after)] {
                let (Some(values), Some(obj)) = (values, value["payload"][image].as_object())
                else {
                    continue;
                };
                for (i, f) in rs.fields.iter().enumerate() {
                    let json = obj.get(&f.column.name).unwrap_or(&Json::Null);
                    assert_eq!(
                        Ok(&values[i]),
                        typed_value(&f.encoding, json).as_ref(),
                        "{line}"
                    );
                }
            }
        }
    }
    assert!(fast > 100, "the fast path was taken {fast} times");
}

/// Records whose envelope the source split (`source::envelope`: shared
/// schema, payload alone) decode as the records read whole, and give back
/// the exact value for the dead-letter queue.
#[test]
fn split_envelopes_decode_like_whole_records() {
    let mut sharing = crate::source::envelope::SchemaSharing::default();
    let mut split_dec = Decoder::new(ColumnHints::default());
    let mut whole_dec = Decoder::new(ColumnHints::default());
    let mut split = 0;
    for line in SCHEMAS.lines().chain(PRECISE.lines()) {
        let whole = record(line);
        let mut rec = whole.clone();
        if let Some(v) = rec.value.take() {
            let (schema, payload) = sharing.split_text(&rec.id.topic, v);
            split += schema.is_some() as usize;
            rec.schema = schema;
            rec.value = Some(payload);
        }
        assert_eq!(rec.value_text(), whole.value_text(), "{line}");
        let got = format!("{:?}", split_dec.decode(&rec).map_err(|e| e.0));
        let want = format!("{:?}", whole_dec.decode(&whole).map_err(|e| e.0));
        assert_eq!(got, want, "{line}");
    }
    assert!(split > 100, "split {split} records");
}

#[test]
fn a_changed_schema_or_key_schema_is_not_served_from_the_topic_cache() {
    use serde_json::json;
    let mut dec = Decoder::new(ColumnHints::default());
    let rec = first_order(SCHEMAS);
    let first = change(dec.decode(&rec).unwrap());
    let again = change(dec.decode(&rec).unwrap());
    assert!(Arc::ptr_eq(&first.table, &again.table));

    // The value's row schema gains a column.
    let mut value: Json = serde_json::from_str(&rec.value_text().unwrap()).unwrap();
    for f in value["schema"]["fields"].as_array_mut().unwrap() {
        if f["field"] == "after" || f["field"] == "before" {
            f["fields"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "string", "optional": true, "field": "extra"}));
        }
    }
    value["payload"]["after"]["extra"] = json!("x");
    let wider = RawRecord {
        value: Some(value.to_string()),
        schema: None,
        ..rec.clone()
    };
    let c = change(dec.decode(&wider).unwrap());
    assert_eq!(c.table.columns.len(), first.table.columns.len() + 1);
    assert_eq!(c.after.unwrap().last(), Some(&Value::Text("x".into())));

    // The key's schema gains a column: the row identity follows it.
    let mut key: Json = serde_json::from_str(rec.key.as_deref().unwrap()).unwrap();
    key["schema"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "int64", "optional": false, "field": "customer_id"}));
    key["payload"]["customer_id"] = value["payload"]["after"]["customer_id"].clone();
    let two = RawRecord {
        key: Some(key.to_string()),
        ..wider.clone()
    };
    let c = change(dec.decode(&two).unwrap());
    assert_eq!(c.table.key.len(), 2);
    assert_eq!(c.key.len(), 2);

    // Back to the first layout and key: the first table again.
    let c = change(dec.decode(&rec).unwrap());
    assert!(Arc::ptr_eq(&c.table, &first.table));
    assert_eq!(c.key, first.key);
}

#[test]
fn a_cached_key_schema_decodes_a_key_like_the_general_path() {
    let good = first_order(SCHEMAS);
    let key: Json = serde_json::from_str(good.key.as_deref().unwrap()).unwrap();
    let schema = key["schema"].to_string();
    let outcome = |d: Result<Decoded, DecodeError>| match d {
        Ok(Decoded::Change(c)) => Ok(c.key),
        Ok(Decoded::Tombstone) => Err("tombstone".to_string()),
        Err(e) => Err(e.0),
    };
    // Keys that carry the cached schema text but whose payload is null or
    // not one JSON value: the cache must answer as the general path does.
    for payload in [
        "{\"order_id\":1000}",
        "null",
        "{\"order_id\":1}}",
        " ",
        "{\"order_id\":1},\"schema\":null",
    ] {
        let odd = RawRecord {
            key: Some(format!("{{\"schema\":{schema},\"payload\":{payload}}}")),
            ..good.clone()
        };
        let mut cached = Decoder::new(ColumnHints::default());
        let mut general = Decoder::new(ColumnHints::default());
        for d in [&mut cached, &mut general] {
            change(d.decode(&good).unwrap());
            d.take_learned();
        }
        general.last_key.clear();
        assert!(!cached.last_key.is_empty());
        let (c, g) = (outcome(cached.decode(&odd)), outcome(general.decode(&odd)));
        assert_eq!(c, g, "key payload {payload}");
        assert_eq!(
            format!("{:?}", cached.take_learned()),
            format!("{:?}", general.take_learned()),
            "key payload {payload}"
        );
    }
}
