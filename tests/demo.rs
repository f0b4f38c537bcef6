//! The README's first command, as a new user runs it: `examples/demo.sh`
//! from an unrelated working directory, with a clean `target/demo`. What it
//! lands must equal the source database's final state (`pg_expected.json`),
//! so the demo can never break silently again.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_demo_script_builds_runs_and_lands_the_source_state() {
    let root = workspace();
    let demo_dir = root.join("target/demo");
    if demo_dir.exists() {
        std::fs::remove_dir_all(&demo_dir).unwrap();
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(root.join("examples/demo.sh"))
        .current_dir(elsewhere.path())
        // as from a shell: no cargo-test variables leak into the script's builds
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("running examples/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "examples/demo.sh failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // it prints what landed: every table with its row count
    let exp = expected(&fixture("pg_expected.json"));
    for (table, _) in PG_KEYS {
        let rows = exp[*table].as_array().unwrap().len();
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .unwrap_or_else(|| panic!("no line for {table} in the demo's output:\n{stdout}"));
        assert!(
            line.contains(&format!(" {rows} rows")),
            "{table}: expected {rows} rows: {line}"
        );
    }
    assert!(stdout.contains("dead-lettered 0"), "{stdout}");

    let db = demo_dir.join("demo.db");
    assert!(db.is_file(), "the demo did not write {}", db.display());
    assert_pg_state(&db);
    // orders_enriched: the source's orders, normalised by hand
    let want = expected_orders_clean();
    let d = diff_table(&db, "orders_clean", &want, &["order_id"]);
    assert!(d.is_empty(), "{d:?}");
}
