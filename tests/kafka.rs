//! End-to-end with real Kafka (dev/stack): the Debezium fixture is produced
//! into fresh topics with kcat (keys kept, tombstones as null values) and
//! consumed by `sluice --source kafka://`; the result must equal the source
//! database's final state and the file source's result, and a second run must
//! apply nothing.

mod common;

use common::*;
use serde_json::Value as Json;

fn run_kafka(s: &Scratch, topics: &str, group: &str) -> std::process::Output {
    let out = s
        .command(&format!("kafka://{BROKERS}"))
        .args(["--until-caught-up", "--topics", topics, "--group", group])
        .output()
        .unwrap();
    assert!(out.status.success(), "sluice failed:\n{}", stderr(&out));
    out
}

fn tables(db: &std::path::Path) -> Vec<Vec<serde_json::Map<String, Json>>> {
    PG_KEYS
        .iter()
        .map(|(t, _)| query(db, &format!("SELECT * FROM {t} ORDER BY 1, 2")))
        .collect()
}

#[test]
fn kafka_replay_equals_source_state_and_file_source() {
    if !stack_ready() {
        return;
    }
    let fixture_file = fixture("pg_events.schemas.jsonl");
    let prefix = unique("replay");
    let topics = produce(&fixture_file, &prefix);

    let k = Scratch::new(&[("mirror", "mirror")]);
    let out = run_kafka(&k, &topics, &format!("{prefix}-g"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read 399 records"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_pg_state(&k.db());

    let f = Scratch::new(&[("mirror", "mirror")]);
    f.run(&fixture_file, &[]);
    assert_eq!(
        tables(&k.db()),
        tables(&f.db()),
        "Kafka and file sources disagree"
    );

    // The checkpoint is in the sink: a second run (new group even) starts
    // each partition there. One record arrives meanwhile (the last record of
    // a partition again, so the state stays the source's): the run reads
    // exactly that one, skips nothing and commits it. A source that ignored
    // the checkpoint would read the partition from its start (and skip or
    // fence what the sink has); one caught up at once would read nothing.
    let last = std::fs::read_to_string(&fixture_file)
        .unwrap()
        .lines()
        .rfind(|l| l.contains("\"pgserver1.public.orders\"") && l.contains("\"partition\": 0"))
        .expect("an orders record in partition 0")
        .to_string();
    let again = k.path("again.jsonl");
    std::fs::write(&again, last + "\n").unwrap();
    produce(&again, &prefix);
    let out = run_kafka(&k, &topics, &format!("{prefix}-other-group"));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("read 1 records")
            && summary.contains("(0 already applied, skipped")
            && summary.contains("committed 1 records"),
        "{summary}"
    );
    assert_pg_state(&k.db());
}

#[test]
fn kafka_source_resumes_from_the_sink_checkpoint_not_the_group() {
    if !stack_ready() {
        return;
    }
    let text = std::fs::read_to_string(fixture("pg_events.schemas.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let prefix = unique("resume");
    let s = Scratch::new(&[("mirror", "mirror")]);
    let first = s.path("first.jsonl");
    std::fs::write(&first, lines[..200].join("\n") + "\n").unwrap();
    let topics = produce(&first, &prefix);
    run_kafka(&s, &topics, &format!("{prefix}-a"));
    // the rest arrives; a different group would start at the beginning if it
    // trusted Kafka's group offsets
    let rest = s.path("rest.jsonl");
    std::fs::write(&rest, lines[200..].join("\n") + "\n").unwrap();
    produce(&rest, &prefix);
    let out = run_kafka(&s, &topics, &format!("{prefix}-b"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("read 199 records")
            && String::from_utf8_lossy(&out.stdout).contains("(0 already applied, skipped"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_pg_state(&s.db());
}
