//! Debezium streams as kcat `-J` lines: read, write, and the variants a
//! real pipeline meets (a stretch Debezium delivered again).

use std::path::{Path, PathBuf};

use serde_json::{json, Value as Json};

/// kcat -J lines of a file.
pub fn lines(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn write_lines(dir: &Path, name: &str, lines: &[Json]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// The Debezium envelope of a line (`payload` of the value), if any.
pub fn envelope(line: &Json) -> Option<Json> {
    let v: Json = serde_json::from_str(line["payload"].as_str()?).unwrap();
    Some(v)
}

pub fn set_envelope(line: &mut Json, value: &Json) {
    line["payload"] = Json::String(value.to_string());
}

pub fn is_orders(line: &Json) -> bool {
    line["topic"].as_str().unwrap().ends_with(".orders")
}

/// The stream with the middle third of its orders events sent again right
/// after itself (same source positions, new Kafka offsets), as Debezium
/// does after a connector restart.
pub fn redeliver_middle_third(original: &[Json]) -> Vec<Json> {
    let orders: Vec<usize> = (0..original.len())
        .filter(|&i| is_orders(&original[i]) && !original[i]["payload"].is_null())
        .collect();
    // Re-send the middle third of the orders topic right after itself.
    let (from, to) = (orders[orders.len() / 3], orders[2 * orders.len() / 3]);
    let mut stream = Vec::new();
    let mut offset = 0;
    let resend = |line: &Json, stream: &mut Vec<Json>, offset: &mut i64| {
        let mut l = line.clone();
        if is_orders(&l) {
            l["offset"] = json!(*offset);
            *offset += 1;
        }
        stream.push(l);
    };
    for (i, line) in original.iter().enumerate() {
        resend(line, &mut stream, &mut offset);
        if i == to {
            for again in &original[from..=to] {
                if is_orders(again) {
                    resend(again, &mut stream, &mut offset);
                }
            }
        }
    }
    stream
}
