//! Keyed state end to end through the real binary: `order_history` (the
//! SDK docs' example) keeps each order's status history as state the host
//! holds per source row. Its table must equal the history computed here,
//! independently, from the Debezium events themselves — across commits of
//! 3 records, a restart, a re-delivered stretch, and changes the plugin
//! refuses or traps on.

mod common;

use std::path::Path;

use common::reference::order_history_rows;
use common::stream::*;
use common::*;
use serde_json::{json, Value as Json};

fn assert_history(db: &Path, expected: &[Json], context: &str) {
    let d = diff_table(db, "order_history", expected, &["order_id"]);
    assert!(d.is_empty(), "{d:#?}\n{context}");
}

/// Runs `order_history` alone over `stream` in batches of `batch`.
fn run(s: &Scratch, stream: &Path, batch: &str) -> String {
    let out = s.run(stream, &["--max-batch", batch]);
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out))
}

#[test]
fn keyed_state_equals_the_history_computed_from_the_events() {
    let stream = lines(&fixture("pg_events.schemas.jsonl"));
    let expected = order_history_rows(&stream);
    assert!(
        expected
            .iter()
            .any(|r| r["status_changes"].as_i64() > Some(0)),
        "the fixture changes statuses"
    );
    for batch in ["10000", "3"] {
        let s = Scratch::new(&[("order_history", "order_history")]);
        let summary = run(&s, &fixture("pg_events.schemas.jsonl"), batch);
        assert_history(&s.db(), &expected, &summary);
        let dlq = query(&s.db(), "SELECT stage, reason FROM sluice_dlq");
        assert!(dlq.is_empty(), "{dlq:?}\n{summary}");
    }
}

/// The state lives in the sink: a second run, a new process, goes on from
/// the history the first one committed.
#[test]
fn keyed_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let stream = lines(&fixture("pg_events.schemas.jsonl"));
    let half = write_lines(dir.path(), "half.jsonl", &stream[..stream.len() / 2]);
    let s = Scratch::new(&[("order_history", "order_history")]);
    let first = run(&s, &half, "7");
    assert_history(
        &s.db(),
        &order_history_rows(&stream[..stream.len() / 2]),
        &first,
    );
    let second = run(&s, &fixture("pg_events.schemas.jsonl"), "7");
    assert_history(
        &s.db(),
        &order_history_rows(&stream),
        &format!("{first}\n{second}"),
    );
}

/// Debezium sends a stretch again (same source positions, new offsets):
/// the host skips the changes each row's state has already seen, so no
/// version or status change counts twice.
#[test]
fn a_re_delivered_stretch_changes_no_order_history_rows() {
    let dir = tempfile::tempdir().unwrap();
    let original = lines(&fixture("pg_events.schemas.jsonl"));
    let stream = redeliver_middle_third(&original);
    let path = write_lines(dir.path(), "redelivered.jsonl", &stream);
    for batch in ["10000", "3"] {
        let s = Scratch::new(&[("order_history", "order_history")]);
        let summary = run(&s, &path, batch);
        assert_history(&s.db(), &order_history_rows(&original), &summary);
        assert!(
            summary.contains("re-delivered changes skipped"),
            "the summary counts the skipped re-deliveries: {summary}"
        );
    }
}

/// A change the plugin refuses and one it traps on go to the dead-letter
/// queue with the plugin's reason; their rows keep the state they had, and
/// every other change is applied (the trap costs one batch replayed change
/// by change, not the batch).
#[test]
fn refused_and_trapping_changes_are_dead_lettered_and_leave_the_state_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let original = lines(&fixture("pg_events.schemas.jsonl"));
    // Updates followed by another update of the same order, which still
    // exists at the end (so a state the refused change wrongly kept would
    // show in the next version).
    let survivors: Vec<Json> = order_history_rows(&original)
        .iter()
        .map(|r| r["order_id"].clone())
        .collect();
    let key_of = |l: &Json| l["key"].as_str().unwrap().to_string();
    let op_of = |l: &Json| envelope(l).map(|e| e["payload"]["op"].clone());
    let updates: Vec<usize> = (0..original.len())
        .filter(|&i| is_orders(&original[i]) && op_of(&original[i]) == Some(json!("u")))
        .filter(|&i| {
            let key: Json = serde_json::from_str(&key_of(&original[i])).unwrap();
            survivors.contains(&key["payload"]["order_id"])
        })
        .filter(|&i| {
            original[i + 1..].iter().any(|l| {
                is_orders(l) && key_of(l) == key_of(&original[i]) && op_of(l) == Some(json!("u"))
            })
        })
        .collect();
    assert!(updates.len() >= 4, "the fixture updates orders repeatedly");
    let (refused, trapping) = (updates[updates.len() / 3], updates[2 * updates.len() / 3]);
    let mut stream = original.clone();
    for (i, status) in [(refused, "REFUSE"), (trapping, "TRAP")] {
        let mut env = envelope(&stream[i]).unwrap();
        env["payload"]["after"]["status"] = json!(status);
        set_envelope(&mut stream[i], &env);
    }
    let path = write_lines(dir.path(), "poison.jsonl", &stream);
    // Without the two poison changes.
    let kept: Vec<Json> = (0..original.len())
        .filter(|&i| i != refused && i != trapping)
        .map(|i| original[i].clone())
        .collect();
    // One batch (the trap replays it change by change) and batches of 5
    // (the refusal meets the SDK alone).
    for batch in ["10000", "5"] {
        let s = Scratch::new(&[("order_history", "order_history")]);
        let summary = run(&s, &path, batch);
        assert_history(&s.db(), &order_history_rows(&kept), &summary);
        let dlq = query(
            &s.db(),
            "SELECT kafka_offset, stage, plugin, reason FROM sluice_dlq ORDER BY kafka_offset",
        );
        assert_eq!(dlq.len(), 2, "{dlq:?}\n{summary}");
        for (row, line) in dlq.iter().zip([refused, trapping]) {
            assert_eq!(row["kafka_offset"], stream[line]["offset"], "{dlq:?}");
            assert_eq!(row["stage"], "plugin", "{dlq:?}");
            assert_eq!(row["plugin"], "order_history", "{dlq:?}");
        }
        assert!(
            dlq[0]["reason"]
                .as_str()
                .unwrap()
                .contains("status REFUSE is refused"),
            "{dlq:?}"
        );
        assert!(
            dlq[1]["reason"].as_str().unwrap().contains("unreachable"),
            "{dlq:?}"
        );
        assert!(
            summary.contains("plugin 2"),
            "the summary counts them: {summary}"
        );
    }
}

/// A row the sink refuses (here a CHECK constraint of the user's on the
/// plugin's table: at most two versions) sends the batch's keyed outputs
/// event by event: each refused change is dead-lettered at stage `sink`,
/// every other row lands, and the summary counts the batch.
#[test]
fn a_keyed_output_the_sink_refuses_is_dead_lettered_alone_and_counted() {
    let stream = lines(&fixture("pg_events.schemas.jsonl"));
    let expected = order_history_rows(&stream);
    let (fits, refused): (Vec<Json>, Vec<Json>) = expected
        .into_iter()
        .partition(|r| r["versions"].as_i64() < Some(3));
    assert!(
        !fits.is_empty() && !refused.is_empty(),
        "the fixture needs both"
    );
    let s = Scratch::new(&[("order_history", "order_history")]);
    execute(
        &s.db(),
        &[
            "CREATE TABLE order_history (order_id INTEGER NOT NULL PRIMARY KEY,
           first_status TEXT, status TEXT, status_changes INTEGER NOT NULL,
           versions INTEGER NOT NULL CHECK (versions < 3))",
        ],
    );
    let summary = run(&s, &fixture("pg_events.schemas.jsonl"), "10000");
    let dlq = query(&s.db(), "SELECT stage, plugin, reason FROM sluice_dlq");
    assert!(dlq.len() >= refused.len(), "{dlq:?}\n{summary}");
    for r in &dlq {
        assert_eq!(r["stage"], "sink", "{r:?}");
        assert_eq!(r["plugin"], "order_history", "{r:?}");
        assert!(r["reason"].as_str().unwrap().contains("CHECK"), "{r:?}");
    }
    let got = query(&s.db(), "SELECT order_id, versions FROM order_history");
    assert!(
        got.iter().all(|r| r["versions"].as_i64() < Some(3)),
        "{got:?}"
    );
    for want in &fits {
        let row = got.iter().find(|r| r["order_id"] == want["order_id"]);
        assert_eq!(
            row.map(|r| &r["versions"]),
            Some(&want["versions"]),
            "{want:?}"
        );
    }
    assert!(
        summary.contains("batches written again event by event"),
        "the fallback is counted:\n{summary}"
    );
}
