//! Helpers for end-to-end tests: build the guest components (never checked
//! in), run the real `sluice` binary, and read a SQLite sink back as JSON.
#![allow(dead_code)]

pub mod reference;
pub mod stream;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;

use serde_json::{json, Map, Value as Json};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Column as _, ConnectOptions, Row as _, TypeInfo as _, ValueRef as _};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures/debezium-pg").join(name)
}

/// Build every guest once per test binary, in a target dir of its own so the
/// outer `cargo test` lock is never contended.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let target = workspace().join("target/test-guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .args([
                "-p",
                "mirror",
                "-p",
                "orders_enriched",
                "-p",
                "orders_by_customer",
                "-p",
                "orders_events_5m",
                "-p",
                "orders_with_customer",
                "-p",
                "revenue_by_segment",
                "-p",
                "order_totals",
                "-p",
                "windows",
                "-p",
                "distinct",
                "-p",
                "order_history",
                "-p",
                "order_segment",
                "-p",
                "first_year_orders",
                "-p",
                "tagger_v1",
                "-p",
                "tagger_v2",
                "-p",
                "trap_on",
            ])
            .status()
            .expect("running cargo to build guest components");
        assert!(status.success(), "building guest components failed");
        // Builds of their own: their SDK features (WIT 0.1, 0.2) must not
        // unify onto the others.
        for compat in ["mirror_v01", "distinct_v02"] {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(workspace())
                .env("CARGO_TARGET_DIR", &target)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(workspace().join(format!("tests/guests/{compat}/Cargo.toml")))
                .status()
                .expect("running cargo to build a guest of an older WIT");
            assert!(status.success(), "building {compat} failed");
        }
        target.join("wasm32-wasip2/release")
    });
    let p = dir.join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// A scratch folder with a plugin folder holding the given guests.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(guests: &[(&str, &str)]) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for (guest_name, file_name) in guests {
            std::fs::copy(
                guest(guest_name),
                dir.path().join("plugins").join(format!("{file_name}.wasm")),
            )
            .unwrap();
        }
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn db(&self) -> PathBuf {
        self.path("out.db")
    }

    /// `sluice run --source SOURCE --sink sqlite:<db> --plugins <dir>`, to add to.
    pub fn command(&self, source: &str) -> Command {
        let mut c = sluice();
        c.arg("run")
            .arg("--source")
            .arg(source)
            .arg("--sink")
            .arg(format!("sqlite:{}", self.db().display()))
            .arg("--plugins")
            .arg(self.path("plugins"));
        c
    }

    /// `sluice run --source file:.. --sink sqlite:.. --plugins .. --until-caught-up [extra]`
    pub fn run(&self, source: &Path, extra: &[&str]) -> Output {
        let out = self
            .command(&format!("file:{}", source.display()))
            .args(extra)
            .arg("--until-caught-up")
            .output()
            .unwrap();
        if !out.status.success() {
            panic!(
                "sluice failed: {}\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }
}

/// The binary under test: this build's, or `SLUICE_TEST_BIN` (to show that a
/// test fails on another build, e.g. one from before a fix).
pub fn sluice() -> Command {
    let bin = std::env::var_os("SLUICE_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
        PathBuf::from,
    );
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "info").env("NO_COLOR", "1");
    c
}

/// Kills the process when the test fails (panics) while it still runs, so a
/// failed test leaves no host behind: `let _guard = KillOnPanic(child.id());`.
pub struct KillOnPanic(pub u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

/// `child`'s exit status, waiting at most `limit`; `None`: it still ran
/// then, and was killed (and reaped).
pub fn exit_within(child: &mut Child, limit: std::time::Duration) -> Option<ExitStatus> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Run `c` to its end, for at most `limit`: a run that hangs fails its test
/// with what it printed so far (killed), instead of stalling the whole suite
/// until CI's time runs out.
pub fn output_within(mut c: Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = exit_within(&mut child, limit);
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{c:?} still ran after {limit:?} (killed); it printed:\n{}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A runtime and a connection to the database (created if `create`).
fn open(db: &Path, create: bool) -> (tokio::runtime::Runtime, sqlx::SqliteConnection) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .unwrap()
        .create_if_missing(create)
        .read_only(!create);
    let conn = rt.block_on(opts.connect()).unwrap();
    (rt, conn)
}

/// Run a query and return rows as JSON objects, keeping SQLite's own types.
pub fn query(db: &Path, sql: &str) -> Vec<Map<String, Json>> {
    let (rt, mut conn) = open(db, false);
    let rows = rt.block_on(sqlx::query(sql).fetch_all(&mut conn)).unwrap();
    rows.iter()
        .map(|r| {
            let mut m = Map::new();
            for (i, c) in r.columns().iter().enumerate() {
                let raw = r.try_get_raw(i).unwrap();
                let v = if raw.is_null() {
                    Json::Null
                } else {
                    match raw.type_info().name() {
                        "INTEGER" => json!(r.get::<i64, _>(i)),
                        "REAL" => json!(r.get::<f64, _>(i)),
                        "BLOB" => json!(r.get::<Vec<u8>, _>(i)),
                        _ => json!(r.get::<String, _>(i)),
                    }
                };
                m.insert(c.name().to_string(), v);
            }
            m
        })
        .collect()
}

/// Execute statements on the database (creating it if needed), outside Sluice.
pub fn execute(db: &Path, statements: &[&str]) {
    use sqlx::Executor as _;
    let (rt, mut conn) = open(db, true);
    for s in statements {
        rt.block_on(conn.execute(*s)).unwrap();
    }
}

pub fn table_exists(db: &Path, table: &str) -> bool {
    db.exists()
        && !query(
            db,
            &format!("SELECT name FROM sqlite_master WHERE type='table' AND name='{table}'"),
        )
        .is_empty()
}

/// The expected final state, `{table: [row, ...]}`.
pub fn expected(path: &Path) -> Map<String, Json> {
    serde_json::from_str::<Json>(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

/// Decimal text without trailing fractional zeros: equal decimals, equal text.
fn decimal_norm(s: &str) -> Option<String> {
    let t = s.trim();
    let (neg, body) = t.strip_prefix('-').map(|b| (true, b)).unwrap_or((false, t));
    if body.is_empty()
        || !body.chars().all(|c| c.is_ascii_digit() || c == '.')
        || body.matches('.').count() > 1
    {
        return None;
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.is_empty();
    Some(format!(
        "{}{}{}{}",
        if neg && !zero { "-" } else { "" },
        int,
        if frac.is_empty() { "" } else { "." },
        frac
    ))
}

fn instant(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

fn local(s: &str) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// Does a sink value equal the expected value? Decimals compare as decimals,
/// instants as instants, JSON documents as documents.
pub fn value_matches(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Null, a) => a.is_null(),
        (Json::Bool(b), Json::Number(n)) => n.as_i64() == Some(*b as i64),
        (Json::Bool(e), Json::Bool(a)) => e == a,
        (Json::Object(_) | Json::Array(_), Json::Object(_) | Json::Array(_)) => expected == actual,
        (Json::Number(e), Json::Number(a)) => {
            decimal_norm(&e.to_string()) == decimal_norm(&a.to_string())
        }
        (Json::Number(e), Json::String(a)) => {
            decimal_norm(&e.to_string()).is_some()
                && decimal_norm(&e.to_string()) == decimal_norm(a)
        }
        (Json::String(e), Json::String(a)) => {
            if e == a {
                return true;
            }
            if let (Some(x), Some(y)) = (instant(e), instant(a)) {
                return x == y;
            }
            if let (Some(x), Some(y)) = (local(e), local(a)) {
                return x == y;
            }
            if e.contains('.') || a.contains('.') {
                if let (Some(x), Some(y)) = (decimal_norm(e), decimal_norm(a)) {
                    return x == y;
                }
            }
            let time = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok();
            if let (Some(x), Some(y)) = (time(e), time(a)) {
                return x == y;
            }
            false
        }
        (Json::String(e), Json::Array(a)) => {
            use base64::Engine as _;
            let bytes: Option<Vec<u8>> = a
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            base64::engine::general_purpose::STANDARD.decode(e).ok() == bytes
        }
        (Json::Object(_) | Json::Array(_), Json::String(a)) => {
            serde_json::from_str::<Json>(a).ok().as_ref() == Some(expected)
        }
        _ => false,
    }
}

/// Compare a SQLite sink table with expected rows (matched by `key` columns).
/// Returns a list of differences; empty means equal.
pub fn diff_table(db: &Path, table: &str, expected_rows: &[Json], key: &[&str]) -> Vec<String> {
    let actual = if table_exists(db, table) {
        query(db, &format!("SELECT * FROM \"{table}\""))
    } else {
        Vec::new()
    };
    diff_rows(table, &actual, expected_rows, key)
}

/// Compare rows read from any sink with expected rows (matched by `key`
/// columns). Returns a list of differences; empty means equal.
pub fn diff_rows(
    table: &str,
    actual: &[Map<String, Json>],
    expected_rows: &[Json],
    key: &[&str],
) -> Vec<String> {
    let key_of = |row: &Map<String, Json>| {
        key.iter()
            .map(|k| {
                let v = row.get(*k).map(|v| match v {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                });
                let v = v.unwrap_or_default();
                decimal_norm(&v).unwrap_or(v)
            })
            .collect::<Vec<_>>()
            .join("|")
    };
    let mut diffs = Vec::new();
    let mut by_key: std::collections::HashMap<String, &Map<String, Json>> =
        actual.iter().map(|r| (key_of(r), r)).collect();
    for e in expected_rows {
        let e = e.as_object().unwrap();
        let k = key_of(e);
        match by_key.remove(&k) {
            None => diffs.push(format!("{table}: missing row {k}")),
            Some(a) => {
                for (col, ev) in e {
                    match a.get(col) {
                        None => diffs.push(format!("{table} {k}: no column {col}")),
                        Some(av) if !value_matches(ev, av) => {
                            diffs.push(format!("{table} {k}.{col}: expected {ev}, got {av}"))
                        }
                        _ => {}
                    }
                }
                if a.len() != e.len() {
                    diffs.push(format!(
                        "{table} {k}: {} columns, expected {}",
                        a.len(),
                        e.len()
                    ));
                }
            }
        }
    }
    for k in by_key.keys() {
        diffs.push(format!("{table}: unexpected row {k}"));
    }
    diffs
}

/// What `orders_enriched` must make of the source's final orders, computed
/// by hand from `pg_expected.json`: status upper-cased, `placed_at` as UTC.
pub fn expected_orders_clean() -> Vec<Json> {
    expected(&fixture("pg_expected.json"))["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            json!({
                "order_id": o["order_id"],
                "customer_id": o["customer_id"],
                "amount": o["amount"],
                "status": o["status"].as_str().unwrap().to_uppercase(),
                "placed_at": format!("{}Z", o["placed_at"].as_str().unwrap()),
            })
        })
        .collect()
}

/// Primary keys of the fixture tables.
pub const PG_KEYS: &[(&str, &[&str])] = &[
    ("customers", &["id"]),
    ("products", &["id"]),
    ("orders", &["order_id"]),
    ("order_lines", &["order_id", "line_no"]),
];

/// Every fixture table equals `pg_expected.json`.
pub fn assert_pg_state(db: &Path) {
    let exp = expected(&fixture("pg_expected.json"));
    let mut diffs = Vec::new();
    for (table, key) in PG_KEYS {
        diffs.extend(diff_table(db, table, exp[*table].as_array().unwrap(), key));
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

// --- the dev stack (dev/stack up && dev/stack register) ---

pub const BROKERS: &str = "localhost:9092";

pub fn stack_ready() -> bool {
    match std::env::var("SLUICE_SKIP_STACK_TESTS").as_deref() {
        Ok("1") => {
            // `cargo test` shows a skipped test as passed: say it where it shows.
            println!("SKIPPED (SLUICE_SKIP_STACK_TESTS=1): this test needs the dev stack");
            eprintln!("SKIPPED (SLUICE_SKIP_STACK_TESTS=1): this test needs the dev stack");
            return false;
        }
        Ok("0") | Ok("") | Err(std::env::VarError::NotPresent) => {}
        Ok(other) => panic!("SLUICE_SKIP_STACK_TESTS={other:?}: set it to 1 to skip the tests that need the dev stack, or unset it"),
        Err(e) => panic!("SLUICE_SKIP_STACK_TESTS: {e}"),
    }
    let ok = Command::new("kcat")
        .args(["-b", BROKERS, "-L", "-m", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Kafka is not reachable at {BROKERS}: run `dev/stack up && dev/stack register` (dev/test does), \
         or set SLUICE_SKIP_STACK_TESTS=1 to skip the tests that need the stack"
    );
    true
}

/// Produce a kcat -J file into topics renamed `<prefix>.<schema>.<table>`,
/// keeping keys, partitions and tombstones. Returns the topic regex.
pub fn produce(file: &std::path::Path, prefix: &str) -> String {
    let mut by_topic: std::collections::BTreeMap<(String, i64), Vec<String>> =
        std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(file).unwrap().lines() {
        let r: Json = serde_json::from_str(line).unwrap();
        let topic = format!(
            "{prefix}.{}",
            r["topic"].as_str().unwrap().split_once('.').unwrap().1
        );
        let key = r["key"].as_str().unwrap_or("");
        let value = r["payload"].as_str().unwrap_or("");
        assert!(!key.contains('\t') && !value.contains('\n'));
        by_topic
            .entry((topic, r["partition"].as_i64().unwrap()))
            .or_default()
            .push(format!("{key}\t{value}"));
    }
    for ((topic, partition), lines) in by_topic {
        let mut child = Command::new("kcat")
            .args([
                "-b",
                BROKERS,
                "-P",
                "-K",
                "\t",
                "-Z",
                "-t",
                &topic,
                "-p",
                &partition.to_string(),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all((lines.join("\n") + "\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "kcat -P into {topic}");
    }
    format!(r"{prefix}\..*")
}

/// A name no earlier run used (topics, groups, databases).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{}x{}", std::process::id(), nanos % 1_000_000_000)
}
