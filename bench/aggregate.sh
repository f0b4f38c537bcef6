#!/usr/bin/env bash
# Windowed aggregation next to mirroring, on the same long stream, taking
# turns in one run: a generated Debezium stream of one `orders` table
# (schemas on; inserts, updates that move rows between customers and days,
# deletes; EVENTS change events over 3 partitions) → SQLite, with
# mirror.wasm, orders_daily.wasm (bench/guests: one state-correct daily
# window per customer, the first of orders_by_customer's three),
# orders_by_customer.wasm (daily, 7-day sliding and session windows,
# state-correct), orders_events_5m.wasm (the seed's append semantics) and
# order_history.wasm (keyed state per order, run in the commit). Prints events/s, peak RSS and the ratio to mirror (median of
# ROUNDS), and the state each aggregation held.
# Usage: bench/aggregate.sh [EVENTS=200000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-200000}
rounds=${2:-3}
cargo build --release --quiet
cargo build --release --quiet --target wasm32-wasip2 -p mirror -p orders_daily -p orders_by_customer -p orders_events_5m -p order_history
work=target/bench-aggregate && mkdir -p "$work"
stream="$work/orders-$events.jsonl"
[ -s "$stream" ] || python3 bench/gen_orders.py "$events" "$stream"
records=$(wc -l < "$stream")
changes=$(grep -c '"payload": "' "$stream" || true)
run() { # plugin round -> "seconds peak_kib", summary in $work/$1.txt
  local dir="$work/run-$1" && rm -rf "$dir" && mkdir -p "$dir/plugins"
  cp "target/wasm32-wasip2/release/$1.wasm" "$dir/plugins/"
  RUST_LOG=warn /usr/bin/time -f "%e %M" -o "$dir/time" target/release/sluice run \
    --source "file:$stream" --sink "sqlite:$dir/out.db" --plugins "$dir/plugins" \
    --until-caught-up > "$work/$1.txt"
  cat "$dir/time"
}
declare -A times rss
plugins=(mirror orders_daily orders_by_customer orders_events_5m order_history)
for r in $(seq "$rounds"); do
  for p in "${plugins[@]}"; do
    read -r t m < <(run "$p")
    times[$p]+="$t "
    rss[$p]+="$m "
  done
done
python3 - "$records" "$changes" "$work" "${plugins[@]}" <<PY
import sys, statistics
records, changes, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
plugins = sys.argv[4:]
times = {$(for p in "${plugins[@]}"; do printf '"%s": [%s], ' "$p" "$(echo "${times[$p]}" | sed 's/ $//; s/ /, /g')"; done)}
rss = {$(for p in "${plugins[@]}"; do printf '"%s": [%s], ' "$p" "$(echo "${rss[$p]}" | sed 's/ $//; s/ /, /g')"; done)}
base = statistics.median(times["mirror"])
print(f"{records} records ({changes} change events), median of {len(times['mirror'])} runs each, taking turns:")
print(f"{'pipeline':<22}{'events/s':>12}{'time s':>9}{'peak RSS MB':>13}{'vs mirror':>11}")
for p in plugins:
    t = statistics.median(times[p])
    print(f"{p:<22}{changes / t:>12,.0f}{t:>9.2f}{max(rss[p]) / 1024:>13.0f}{t / base:>10.2f}x")
for p in plugins[1:]:
    text = open(f"{work}/{p}.txt").read()
    if "operator state (" in text:
        state = text.split("operator state (")[-1].split(":", 1)[-1].split("sink tables:")[0]
        print(f"state held by {p}:" + state.rstrip())
import sqlite3
# Windowed groups' keys start with the window's bounds (two little-endian
# i64 µs): state per window is the group rows sharing them (session state is
# kept per group instead: no fixed windows); open windows still expire.
import struct
for p in plugins[1:]:
    db = sqlite3.connect(f"{work}/run-{p}/out.db")
    per = {}
    for op, k, size, expires in db.execute(
            "SELECT operator, k, length(k) + length(v), expires FROM sluice_state WHERE kind = 'g'"):
        start, end = struct.unpack("<qq", k[:16]) if len(k) >= 16 else (0, 0)
        if not (10**15 < start < end):
            continue
        w = per.setdefault(op, {}).setdefault((start, end), [0, 0, False])
        w[0] += 1
        w[1] += size
        w[2] |= expires is not None
    for op, windows in sorted(per.items()):
        n = len(windows)
        print(f"  {op}: {n} windows ({sum(w[2] for w in windows.values())} open), "
              f"{sum(w[0] for w in windows.values()) / n:,.0f} group rows and "
              f"{sum(w[1] for w in windows.values()) / n:,.0f} bytes per window")
db = sqlite3.connect(f"{work}/run-order_history/out.db")
rows, size = db.execute("SELECT count(*), coalesce(sum(length(k) + length(v)), 0) FROM sluice_state WHERE kind = 'k'").fetchone()
print(f"keyed state held by order_history: {rows} rows, {size} bytes")
PY
