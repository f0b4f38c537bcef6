//! Hot reload under load: the plugin file is replaced while events keep
//! arriving; every event must be handled exactly once, by exactly one version,
//! and the swap must fall on a batch boundary (all v1 events precede all v2).

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// At least this many events; the writer goes on until v2 has taken over.
const MIN_EVENTS: i64 = 20_000;

fn event_line(offset: i64) -> String {
    let payload = serde_json::json!({
        "before": null,
        "after": {"id": offset, "qty": offset % 7, "note": format!("n{offset}")},
        "op": "c",
        "source": {"ts_ms": 1_700_000_000_000i64 + offset, "lsn": offset},
    })
    .to_string();
    serde_json::json!({
        "topic": "srv.public.items", "partition": 0, "offset": offset,
        "key": format!("{{\"id\":{offset}}}"), "payload": payload,
    })
    .to_string()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    if !db.exists() || !table_exists(db, "tagged") {
        return 0;
    }
    query(db, sql)[0]["n"].as_i64().unwrap()
}

/// The child's stderr, collected while it runs (join the thread after it exits).
fn collect_log(
    child: &mut std::process::Child,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let collected = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = collected.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (log, reader)
}

#[test]
fn replacing_the_plugin_mid_stream_loses_and_repeats_nothing() {
    let s = Scratch::new(&[("tagger_v1", "mirror")]);
    let db = s.db();
    // Pre-create the sink table with an audit trigger: it counts every write,
    // independently of Sluice, so a repeated event would show as an update.
    execute(
        &db,
        &[
            "CREATE TABLE tagged (topic TEXT NOT NULL, part INTEGER NOT NULL, off INTEGER NOT NULL, version TEXT, PRIMARY KEY (topic, part, off))",
            "CREATE TABLE audit (inserts INTEGER NOT NULL, updates INTEGER NOT NULL)",
            "INSERT INTO audit VALUES (0, 0)",
            "CREATE TRIGGER t_ins AFTER INSERT ON tagged BEGIN UPDATE audit SET inserts = inserts + 1; END",
            "CREATE TRIGGER t_upd AFTER UPDATE ON tagged BEGIN UPDATE audit SET updates = updates + 1; END",
            // every committed checkpoint, i.e. every batch boundary
            "CREATE TABLE sluice_offsets (pipeline TEXT NOT NULL, topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, next_offset INTEGER NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (pipeline, topic, kafka_partition))",
            "CREATE TABLE boundaries (next_offset INTEGER NOT NULL)",
            "CREATE TRIGGER b_ins AFTER INSERT ON sluice_offsets BEGIN INSERT INTO boundaries VALUES (NEW.next_offset); END",
            "CREATE TRIGGER b_upd AFTER UPDATE ON sluice_offsets BEGIN INSERT INTO boundaries VALUES (NEW.next_offset); END",
        ],
    );
    let input = s.path("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut child = s
        .command(&format!("file:{}", input.display()))
        .args(["--max-batch", "100"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let (log, log_reader) = collect_log(&mut child);
    let log_has = |needle: &str| log.lock().unwrap().contains(needle);

    // A writer appends events steadily while the plugin is replaced, and goes
    // on until told that v2 has taken over (so a slow machine cannot finish the
    // stream before the swap).
    let writer_input = input.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(writer_input)
            .unwrap();
        let mut written = 0i64;
        while written < MIN_EVENTS || !writer_stop.load(Ordering::SeqCst) {
            let lines: String = (written..written + 200)
                .map(|o| event_line(o) + "\n")
                .collect();
            f.write_all(lines.as_bytes()).unwrap();
            f.flush().unwrap();
            written += 200;
            std::thread::sleep(Duration::from_millis(15));
        }
        written
    });

    wait_for("the first events to land", Duration::from_secs(60), || {
        count(&db, "SELECT count(*) AS n FROM tagged") >= 2_000
    });
    // A broken file is rejected and v1 keeps running.
    let staged = s.path("plugins/.mirror.wasm.tmp");
    std::fs::write(&staged, b"\0asm garbage").unwrap();
    std::fs::rename(&staged, s.path("plugins/mirror.wasm")).unwrap();
    wait_for(
        "the broken file to be rejected",
        Duration::from_secs(60),
        || log_has("plugin rejected, the previous version keeps running"),
    );
    let v1_then = count(&db, "SELECT count(*) AS n FROM tagged WHERE version = 'v1'");
    wait_for("v1 to keep going", Duration::from_secs(60), || {
        count(&db, "SELECT count(*) AS n FROM tagged WHERE version = 'v1'") > v1_then + 500
    });
    // Replace atomically (write aside, then rename), as the README advises.
    std::fs::copy(guest("tagger_v2"), &staged).unwrap();
    std::fs::rename(&staged, s.path("plugins/mirror.wasm")).unwrap();
    wait_for("v2 to take over", Duration::from_secs(60), || {
        count(&db, "SELECT count(*) AS n FROM tagged WHERE version = 'v2'") > 0
    });
    stop.store(true, Ordering::SeqCst);
    let events = writer.join().unwrap();
    wait_for("every event to land", Duration::from_secs(120), || {
        count(&db, "SELECT count(*) AS n FROM tagged") >= events
    });

    // graceful shutdown (Ctrl-C)
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    log_reader.join().unwrap();
    assert!(status.success(), "sluice exited with {status}");
    assert!(log_has("plugin swapped in at batch boundary"));

    // exactly once: every offset present, none written twice
    let rows = query(&db, "SELECT off, version FROM tagged ORDER BY off");
    assert_eq!(rows.len() as i64, events);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["off"], i as i64);
    }
    let audit = query(&db, "SELECT inserts, updates FROM audit");
    assert_eq!(audit[0]["inserts"], events, "each event inserted once");
    assert_eq!(audit[0]["updates"], 0, "no event applied twice");
    // one cut: all v1 rows precede all v2 rows
    let last_v1 = rows
        .iter()
        .rposition(|r| r["version"] == "v1")
        .expect("v1 handled the start");
    let first_v2 = rows
        .iter()
        .position(|r| r["version"] == "v2")
        .expect("v2 handled the end");
    assert_eq!(last_v1 + 1, first_v2, "versions interleave");
    let boundaries: Vec<i64> = query(&db, "SELECT next_offset FROM boundaries")
        .iter()
        .map(|r| r["next_offset"].as_i64().unwrap())
        .collect();
    assert!(
        boundaries.contains(&(first_v2 as i64)),
        "v2 started at offset {first_v2}, which is not a committed batch boundary"
    );
}

/// Offsets in a sink table's `column`, ascending (none if it does not exist).
fn offsets(db: &std::path::Path, table: &str, column: &str) -> Vec<i64> {
    if !db.exists() || !table_exists(db, table) {
        return Vec::new();
    }
    query(
        db,
        &format!("SELECT {column} AS o FROM {table} ORDER BY {column}"),
    )
    .iter()
    .map(|r| r["o"].as_i64().unwrap())
    .collect()
}

#[test]
fn a_plugin_added_while_running_starts_and_a_removed_one_stops_after_the_grace_period() {
    let s = Scratch::new(&[("tagger_v1", "tagger")]);
    let db = s.db();
    let input = s.path("events.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut child = s
        .command(&format!("file:{}", input.display()))
        .args(["--max-batch", "100"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let (log, log_reader) = collect_log(&mut child);
    let removals = || {
        log.lock()
            .unwrap()
            .matches("plugin file removed: unloading it")
            .count()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let input = input.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(input)
                .unwrap();
            let mut written = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let lines: String = (written..written + 50)
                    .map(|o| event_line(o) + "\n")
                    .collect();
                f.write_all(lines.as_bytes()).unwrap();
                written += 50;
                std::thread::sleep(Duration::from_millis(20));
            }
            written
        })
    };
    let tagged = || count(&db, "SELECT count(*) AS n FROM tagged");
    wait_for("tagger at work", Duration::from_secs(60), || {
        tagged() >= 500
    });

    // A new plugin dropped in (written aside, then renamed) starts at a batch
    // boundary; the running one goes on.
    let staged = s.path("plugins/.mirror.wasm.tmp");
    std::fs::copy(guest("mirror"), &staged).unwrap();
    std::fs::rename(&staged, s.path("plugins/mirror.wasm")).unwrap();
    wait_for("mirror to start", Duration::from_secs(60), || {
        offsets(&db, "items", "id").len() >= 500
    });

    // Replaced by delete-then-copy, the file is gone for less than the grace
    // period: the plugin is not unloaded.
    let tagger = s.path("plugins/tagger.wasm");
    let tagger_bytes = std::fs::read(&tagger).unwrap();
    std::fs::remove_file(&tagger).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&tagger, &tagger_bytes).unwrap();
    let before = tagged();
    wait_for("tagger to keep going", Duration::from_secs(60), || {
        tagged() > before + 500
    });
    assert_eq!(removals(), 0, "unloaded within the grace period");

    // Removed for good: unloaded after the grace period, at a batch boundary.
    std::fs::remove_file(&tagger).unwrap();
    wait_for("tagger to be unloaded", Duration::from_secs(30), || {
        removals() == 1
    });
    let items_then = offsets(&db, "items", "id").len();
    wait_for("mirror to keep going", Duration::from_secs(60), || {
        offsets(&db, "items", "id").len() > items_then + 500
    });
    stop.store(true, Ordering::SeqCst);
    let events = writer.join().unwrap();
    wait_for("every event to land", Duration::from_secs(120), || {
        offsets(&db, "items", "id").last() == Some(&(events - 1))
    });
    assert!(std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    log_reader.join().unwrap();
    assert!(status.success(), "sluice exited with {status}");

    // tagger handled a prefix 0..r, mirror a suffix m..events, each without a
    // gap; they overlap while both ran, so every event was handled.
    let t = offsets(&db, "tagged", "off");
    let m = offsets(&db, "items", "id");
    let (r, first_m) = (t.len() as i64, m[0]);
    assert_eq!(t, (0..r).collect::<Vec<_>>(), "tagger's events have a gap");
    assert_eq!(
        m,
        (first_m..events).collect::<Vec<_>>(),
        "mirror's events have a gap"
    );
    assert!(
        first_m > 0 && first_m < r && r < events,
        "m={first_m} r={r} events={events}"
    );
    assert_eq!(removals(), 1);
}
