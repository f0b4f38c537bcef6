//! What the README promises about running Sluice, each checked through the
//! real binary: the DLQ topic's outbox (a dead letter Kafka refuses is retried
//! while the host runs and sent at the next start), a second copy with the
//! same `--instance-id` fencing the first, a sink database that goes away
//! mid-run (the run stops; a restart resumes exactly), the compiled-plugin
//! cache and `SLUICE_CACHE_DIR=""`, and `--log-format json`.
//!
//! The Kafka tests need the dev stack; each uses topics and sinks of its own,
//! so they never touch what other tests read.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{Map, Value as Json};
use sqlx::{Connection as _, Executor as _};

const PG_ADMIN: &str = "postgres://sluice:sluice@localhost:5432/postgres";

/// Poll `f` every 200 ms until it holds; fail after `limit`, saying what.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `sluice` running in the background, its log in a file the test reads.
struct Running {
    child: Child,
    log: PathBuf,
}

/// A test that fails must not leave its host running.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    fn start(mut c: Command, log: PathBuf) -> Running {
        let file = std::fs::File::create(&log).unwrap();
        let child = c.stdout(Stdio::piped()).stderr(file).spawn().unwrap();
        Running { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until it exits by itself (the test fails after `limit`).
    fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        match exit_within(&mut self.child, limit) {
            Some(status) => status,
            None => panic!(
                "still running after {limit:?} (killed); log:\n{}",
                self.log()
            ),
        }
    }

    /// Ctrl-C, then wait: the exit status and the summary on stdout.
    fn interrupt(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.exit_within(Duration::from_secs(60));
        let mut out = String::new();
        use std::io::Read as _;
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (status, out)
    }
}

/// `sluice run` from a Kafka topic regex into a sink, with mirror.
fn kafka_run(s: &Scratch, topics: &str, group: &str, sink: &str) -> Command {
    let mut c = sluice();
    c.arg("run")
        .args(["--source", &format!("kafka://{BROKERS}")])
        .args(["--topics", topics, "--group", group, "--sink", sink])
        .arg("--plugins")
        .arg(s.path("plugins"));
    c
}

fn sqlite_sink(s: &Scratch) -> String {
    format!("sqlite:{}", s.db().display())
}

/// Records committed into a SQLite sink (the topics are fresh, so the sum of
/// the next offsets is the number of records).
fn committed_sqlite(db: &Path) -> i64 {
    if !table_exists(db, "sluice_offsets") {
        return 0;
    }
    query(
        db,
        "SELECT COALESCE(SUM(next_offset), 0) AS n FROM sluice_offsets",
    )[0]["n"]
        .as_i64()
        .unwrap()
}

/// The fixture's lines `range` as a kcat -J file in the scratch folder.
fn fixture_part(s: &Scratch, name: &str, range: std::ops::Range<usize>) -> PathBuf {
    let text = std::fs::read_to_string(fixture("pg_events.schemas.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let path = s.path(name);
    std::fs::write(&path, lines[range].join("\n") + "\n").unwrap();
    path
}

fn fixture_len() -> usize {
    std::fs::read_to_string(fixture("pg_events.schemas.jsonl"))
        .unwrap()
        .lines()
        .count()
}

/// Every record of a topic as kcat -J objects (none when it does not exist).
fn kcat_records(topic: &str) -> Vec<Json> {
    let out = Command::new("kcat")
        .args(["-b", BROKERS, "-C", "-t", topic, "-e", "-q", "-J"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A record Sluice cannot decode (its row image is not an object), marked by
/// `mark`, appended to partition 0 of `topic`. Returns its offset.
fn produce_poison(topic: &str, mark: &str) -> i64 {
    let mut child = Command::new("kcat")
        .args(["-P", "-b", BROKERS, "-t", topic, "-p", "0", "-K", "\t"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            "{{\"order_id\":-1}}\t{{\"payload\":{{\"op\":\"c\",\"after\":\"{mark}\"}}}}"
        )
        .unwrap();
    }
    assert!(child.wait().unwrap().success(), "kcat -P");
    kcat_records(topic)
        .iter()
        .find(|r| r["payload"].as_str().is_some_and(|p| p.contains(mark)))
        .expect("the poison record is in the topic")["offset"]
        .as_i64()
        .unwrap()
}

/// Kafka's admin API, for a topic's configuration.
struct Admin {
    rt: tokio::runtime::Runtime,
    client: AdminClient<DefaultClientContext>,
}

impl Admin {
    fn new() -> Admin {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = rt.block_on(async {
            ClientConfig::new()
                .set("bootstrap.servers", BROKERS)
                .create()
                .unwrap()
        });
        Admin { rt, client }
    }

    fn create_topic(&self, topic: &str, max_message_bytes: &str) {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
            .set("max.message.bytes", max_message_bytes);
        let r = self
            .rt
            .block_on(self.client.create_topics(&[new], &AdminOptions::new()))
            .unwrap();
        assert!(r.iter().all(|r| r.is_ok()), "creating {topic}: {r:?}");
    }

    fn set_max_message_bytes(&self, topic: &str, v: &str) {
        let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", v);
        let r = self
            .rt
            .block_on(self.client.alter_configs(&[alter], &AdminOptions::new()))
            .unwrap();
        assert!(r.iter().all(|r| r.is_ok()), "altering {topic}: {r:?}");
    }
}

/// Small enough that the broker refuses any record batch (61 bytes of header).
const REFUSE_ALL: &str = "64";
const ACCEPT: &str = "1048588";

/// The dead letters in the DLQ topic: `__connect.errors.offset` of each.
fn dlq_offsets(topic: &str) -> Vec<i64> {
    kcat_records(topic)
        .iter()
        .map(|r| {
            let h = r["headers"].as_array().cloned().unwrap_or_default();
            let i = h
                .iter()
                .position(|v| v == "__connect.errors.offset")
                .expect("__connect.errors.offset header");
            h[i + 1].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

/// `published` of the dead letter of `offset` in a SQLite sink's sluice_dlq.
fn published(db: &Path, topic: &str, offset: i64) -> i64 {
    let rows = query(
        db,
        &format!(
            "SELECT published FROM sluice_dlq WHERE topic = '{topic}' AND kafka_offset = {offset}"
        ),
    );
    assert_eq!(
        rows.len(),
        1,
        "one dead letter for offset {offset}: {rows:?}"
    );
    rows[0]["published"].as_i64().unwrap()
}

#[test]
fn the_dlq_topic_gets_each_dead_letter_retried_while_running_and_at_the_next_start() {
    if !stack_ready() {
        return;
    }
    let prefix = unique("dlqout");
    let group = format!("{prefix}-g");
    let name = format!("{prefix}-p");
    let dlq = format!("{name}.dlq"); // the default: <pipeline>.dlq
    let admin = Admin::new();
    // The DLQ topic exists and refuses every record, as a broker does while
    // the topic is misconfigured.
    admin.create_topic(&dlq, REFUSE_ALL);

    let s = Scratch::new(&[("mirror", "mirror")]);
    let topics = produce(&fixture_part(&s, "all.jsonl", 0..fixture_len()), &prefix);
    let orders = format!("{prefix}.public.orders");
    let first = produce_poison(&orders, &unique("first-poison"));
    let run = |extra: &[&str]| {
        let mut c = kafka_run(&s, &topics, &group, &sqlite_sink(&s));
        c.args(["--name", &name]).args(extra);
        c
    };

    // 1. While the host runs, Kafka refuses the dead letter: it is retried
    //    until the topic takes it, without a restart.
    let host = Running::start(run(&[]), s.path("run1.log"));
    wait_until("two refused attempts", Duration::from_secs(90), || {
        host.log().matches("retrying in 5 s").count() >= 2
    });
    assert_eq!(dlq_offsets(&dlq), Vec::<i64>::new());
    assert_eq!(published(&s.db(), &orders, first), 0);
    admin.set_max_message_bytes(&dlq, ACCEPT);
    wait_until(
        "the retried dead letter in the DLQ topic",
        Duration::from_secs(60),
        || dlq_offsets(&dlq) == vec![first],
    );
    wait_until(
        "the dead letter marked published",
        Duration::from_secs(30),
        || published(&s.db(), &orders, first) == 1,
    );
    let (status, summary) = host.interrupt();
    assert!(status.success(), "{status}\n{summary}");
    assert_pg_state(&s.db());

    // 2. Kafka refuses again and the run ends: the new dead letter stays in
    //    sluice_dlq, unsent, and the summary says so.
    admin.set_max_message_bytes(&dlq, REFUSE_ALL);
    let second = produce_poison(&orders, &unique("second-poison"));
    let out = run(&["--until-caught-up"]).output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(summary.contains("read 1 records"), "{summary}");
    assert!(
        summary.contains("1 dead letters not yet in the DLQ topic"),
        "{summary}\n{}",
        stderr(&out)
    );
    assert_eq!(published(&s.db(), &orders, second), 0);
    assert_eq!(dlq_offsets(&dlq), vec![first]);

    // 3. The next start sends it, though it reads nothing new; the first one
    //    is not sent again.
    admin.set_max_message_bytes(&dlq, ACCEPT);
    let out = run(&["--until-caught-up"]).output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(summary.contains("read 0 records"), "{summary}");
    assert!(
        summary.contains("1 dead letters copied to the DLQ topic"),
        "{summary}"
    );
    assert_eq!(dlq_offsets(&dlq), vec![first, second]);
    assert_eq!(published(&s.db(), &orders, second), 1);
    assert_pg_state(&s.db());
}

#[test]
fn a_second_copy_with_the_same_instance_id_fences_the_first() {
    if !stack_ready() {
        return;
    }
    let prefix = unique("fenced");
    let group = format!("{prefix}-g");
    let s = Scratch::new(&[("mirror", "mirror")]);
    let half = fixture_len() / 2;
    let topics = produce(&fixture_part(&s, "first.jsonl", 0..half), &prefix);
    let copy = || {
        let mut c = kafka_run(&s, &topics, &group, &sqlite_sink(&s));
        c.args(["--instance-id", "same-id"]);
        c
    };
    let mut first = Running::start(copy(), s.path("first.log"));
    wait_until("the first copy to commit", Duration::from_secs(90), || {
        committed_sqlite(&s.db()) == half as i64
    });
    let second = Running::start(copy(), s.path("second.log"));
    // The first copy stops by itself: the group fenced it.
    let status = first.exit_within(Duration::from_secs(90));
    let log = first.log();
    assert!(!status.success(), "the fenced copy must fail:\n{log}");
    assert!(
        log.contains("fatal error") && log.contains("same instance id"),
        "{log}"
    );
    // The second copy has the partitions: it applies what arrives next.
    produce(
        &fixture_part(&s, "rest.jsonl", half..fixture_len()),
        &prefix,
    );
    wait_until(
        "the second copy to commit the rest",
        Duration::from_secs(90),
        || committed_sqlite(&s.db()) == fixture_len() as i64,
    );
    let (status, _) = second.interrupt();
    assert!(status.success(), "{status}");
    assert_pg_state(&s.db());
}

/// A fresh PostgreSQL database on the stack; returns its URL.
async fn fresh_pg_database(name: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await.unwrap();
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .unwrap();
    format!("postgres://sluice:sluice@localhost:5432/{name}")
}

async fn committed_pg(url: &str) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(SUM(next_offset), 0)::BIGINT FROM sluice_offsets")
        .fetch_one(&mut c)
        .await
        .unwrap_or(0)
}

/// Each fixture table of a PostgreSQL sink equals `pg_expected.json`.
async fn assert_pg_sink_state(url: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let exp = expected(&fixture("pg_expected.json"));
    let mut diffs = Vec::new();
    for (table, key) in PG_KEYS {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM \"{table}\" t"))
                .fetch_all(&mut c)
                .await
                .unwrap();
        let rows: Vec<Map<String, Json>> = rows
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect();
        diffs.extend(diff_rows(
            table,
            &rows,
            exp[*table].as_array().unwrap(),
            key,
        ));
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_database_that_goes_away_stops_the_run_and_a_restart_resumes_exactly() {
    if !stack_ready() {
        return;
    }
    let prefix = unique("gone");
    let group = format!("{prefix}-g");
    let url = fresh_pg_database(&prefix).await;
    let s = Scratch::new(&[("mirror", "mirror")]);
    let half = fixture_len() / 2;
    let topics = produce(&fixture_part(&s, "first.jsonl", 0..half), &prefix);
    let mut host = Running::start(kafka_run(&s, &topics, &group, &url), s.path("run1.log"));
    let start = Instant::now();
    while committed_pg(&url).await < half as i64 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the first half never landed:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The database goes away: its sessions end and new ones are refused.
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await.unwrap();
    admin
        .execute(format!("ALTER DATABASE \"{prefix}\" ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{prefix}'"
            )
            .as_str(),
        )
        .await
        .unwrap();
    // More changes arrive; committing them fails, and the run stops.
    produce(
        &fixture_part(&s, "rest.jsonl", half..fixture_len()),
        &prefix,
    );
    let status = tokio::task::block_in_place(|| host.exit_within(Duration::from_secs(90)));
    let log = host.log();
    assert!(
        !status.success(),
        "a run whose sink is gone must fail:\n{log}"
    );
    assert!(log.contains("sink commit failed"), "{log}");

    // Back again: a restart reads exactly what was not committed.
    admin
        .execute(format!("ALTER DATABASE \"{prefix}\" ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    assert_eq!(
        committed_pg(&url).await,
        half as i64,
        "nothing committed while gone"
    );
    let out = kafka_run(&s, &topics, &group, &url)
        .arg("--until-caught-up")
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    let rest = fixture_len() - half;
    assert!(
        summary.contains(&format!("read {rest} records"))
            && summary.contains("(0 already applied, skipped")
            && summary.contains(&format!("committed {rest} records")),
        "{summary}"
    );
    assert_pg_sink_state(&url).await;
}

/// Every file under `dir` with its inode and modification time.
fn files(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.map(Result::unwrap) {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push((e.path(), m.ino(), m.modified().unwrap()));
        }
    }
    out.sort();
    out
}

/// The compiled artifacts in a cache folder (wasmtime keeps them under
/// `modules/`, beside statistics files).
fn artifacts(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    files(&dir.join("modules"))
        .into_iter()
        .filter(|(p, _, _)| !p.to_string_lossy().ends_with(".stats"))
        .collect()
}

#[test]
fn compiled_plugins_are_cached_by_content_and_an_empty_cache_dir_disables_the_cache() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let input = fixture("pg_events.schemas.jsonl");
    let run = |env: &[(&str, Option<&Path>)]| {
        let mut c = s.command(&format!("file:{}", input.display()));
        c.arg("--until-caught-up");
        for (k, v) in env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::remove_file(s.db()).unwrap();
        out
    };
    let home = s.path("home");
    let xdg = s.path("xdg");
    let own = s.path("own cache");

    // Default: $XDG_CACHE_HOME/sluice, else ~/.cache/sluice.
    run(&[
        ("HOME", Some(&home)),
        ("XDG_CACHE_HOME", Some(&xdg)),
        ("SLUICE_CACHE_DIR", None),
    ]);
    let compiled = artifacts(&xdg.join("sluice"));
    assert_eq!(compiled.len(), 1, "one compiled plugin: {compiled:?}");
    assert!(files(&home).is_empty(), "{:?}", files(&home));
    run(&[
        ("HOME", Some(&home)),
        ("XDG_CACHE_HOME", None),
        ("SLUICE_CACHE_DIR", None),
    ]);
    assert_eq!(artifacts(&home.join(".cache/sluice")).len(), 1);

    // A second start loads the same artifact: not compiled again (a compile
    // would write it anew, atomically, as a new file).
    run(&[("XDG_CACHE_HOME", Some(&xdg)), ("SLUICE_CACHE_DIR", None)]);
    assert_eq!(
        artifacts(&xdg.join("sluice")),
        compiled,
        "the cached artifact was rewritten"
    );

    // Keyed by content: another plugin file adds its own artifact.
    std::fs::copy(guest("tagger_v1"), s.path("plugins/tagger.wasm")).unwrap();
    run(&[("XDG_CACHE_HOME", Some(&xdg)), ("SLUICE_CACHE_DIR", None)]);
    assert_eq!(artifacts(&xdg.join("sluice")).len(), 2);

    // SLUICE_CACHE_DIR moves it; an empty value writes no cache anywhere.
    run(&[("SLUICE_CACHE_DIR", Some(&own))]);
    assert_eq!(artifacts(&own).len(), 2);
    let (empty_home, empty_xdg) = (s.path("home2"), s.path("xdg2"));
    let out = run(&[
        ("HOME", Some(&empty_home)),
        ("XDG_CACHE_HOME", Some(&empty_xdg)),
        ("SLUICE_CACHE_DIR", Some(Path::new(""))),
    ]);
    assert!(files(&empty_home).is_empty() && files(&empty_xdg).is_empty());
    assert!(String::from_utf8_lossy(&out.stdout).contains("read 399 records"));
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let out = s.run(
        &fixture("pg_events.schemas.jsonl"),
        &["--log-format", "json"],
    );
    let log = stderr(&out);
    let lines: Vec<Json> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l["timestamp"].is_string()
                && l["level"].is_string()
                && l["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let loaded = lines
        .iter()
        .find(|l| l["fields"]["message"] == "plugin loaded")
        .unwrap_or_else(|| panic!("no `plugin loaded` line:\n{log}"));
    assert_eq!(loaded["level"], "INFO");
    assert_eq!(loaded["fields"]["plugin"], "mirror");
    assert!(loaded["fields"]["ms"].is_u64(), "{loaded}");
    // the summary stays plain text on stdout
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("read 399 records"));
    // and text, the default, is not JSON
    let text = stderr(&s.run(&fixture("pg_events.schemas.jsonl"), &[]));
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Json>(l).is_err()),
        "{text}"
    );
}

#[test]
fn relative_sqlite_paths_from_a_pipeline_file_work_and_errors_name_the_file() {
    let s = Scratch::new(&[("mirror", "mirror")]);
    let root = std::fs::canonicalize(s.dir.path()).unwrap();
    std::fs::create_dir_all(root.join("pipes")).unwrap();
    std::fs::create_dir_all(root.join("out dir/ünï 💾")).unwrap();
    let input = fixture("pg_events.schemas.jsonl");
    let pipeline = |sink: &str| {
        let p = root.join("pipes/p.toml");
        std::fs::write(
            &p,
            format!(
                "source = \"file:{}\"\nsink = \"{sink}\"\nplugins = \"../plugins\"\n",
                input.display()
            ),
        )
        .unwrap();
        // from an unrelated working directory
        let elsewhere = tempfile::tempdir().unwrap();
        sluice()
            .current_dir(elsewhere.path())
            .arg("run")
            .arg(&p)
            .arg("--until-caught-up")
            .output()
            .unwrap()
    };
    // `..`, spaces and non-ASCII, relative to the pipeline file
    let out = pipeline("sqlite:../out dir/ünï 💾/a b.db");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_pg_state(&root.join("out dir/ünï 💾/a b.db"));

    // a file that cannot be opened is named as a file, never as a URL
    for (sink, file, why) in [
        (
            "sqlite:../no such dir/x.db",
            "no such dir/x.db",
            "does not exist",
        ),
        (
            "sqlite:../out dir",
            "out dir",
            "unable to open database file",
        ),
    ] {
        let out = pipeline(sink);
        let err = stderr(&out);
        assert!(!out.status.success(), "{sink}");
        assert!(
            err.contains(&root.join(file).display().to_string()) && err.contains(why),
            "{sink}: {err}"
        );
        assert!(!err.contains("sqlite://"), "{sink}: {err}");
    }
}
