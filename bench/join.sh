#!/usr/bin/env bash
# Joins next to mirroring, on the same long stream, taking turns in one run:
# a generated Debezium stream of `orders` and `customers` (schemas on; the
# 2,000 customers first, then order inserts, updates that move orders
# between customers and days, deletes, and one change in ten a customer
# moving to another segment; EVENTS change events over 3 partitions) →
# SQLite, with mirror.wasm (both tables), orders_with_customer.wasm (a left
# join written as a table) and revenue_by_segment.wasm (an inner join
# feeding a daily aggregation per segment). Each join's table is checked
# against the same join computed here from the stream's final rows before
# a rate is printed. Prints events/s, peak RSS, the ratio to mirror (median
# of ROUNDS) and the join state held.
# Usage: bench/join.sh [EVENTS=200000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-200000}
rounds=${2:-3}
cargo build --release --quiet
cargo build --release --quiet --target wasm32-wasip2 -p mirror -p orders_with_customer -p revenue_by_segment
work=target/bench-join && mkdir -p "$work"
stream="$work/orders-customers-$events.jsonl"
[ -s "$stream" ] || python3 bench/gen_orders.py "$events" "$stream" 3 --customers
records=$(wc -l < "$stream")
changes=$(grep -c '"payload": "' "$stream" || true)
run() { # plugin -> "seconds peak_kib", summary in $work/$1.txt
  local dir="$work/run-$1" && rm -rf "$dir" && mkdir -p "$dir/plugins"
  cp "target/wasm32-wasip2/release/$1.wasm" "$dir/plugins/"
  RUST_LOG=warn /usr/bin/time -f "%e %M" -o "$dir/time" target/release/sluice run \
    --source "file:$stream" --sink "sqlite:$dir/out.db" --plugins "$dir/plugins" \
    --until-caught-up > "$work/$1.txt"
  cat "$dir/time"
}
declare -A times rss
plugins=(mirror orders_with_customer revenue_by_segment)
for r in $(seq "$rounds"); do
  for p in "${plugins[@]}"; do
    read -r t m < <(run "$p")
    times[$p]+="$t "
    rss[$p]+="$m "
  done
done
python3 - "$records" "$changes" "$work" "$stream" "${plugins[@]}" <<PY
import sys, statistics, json, base64, sqlite3, datetime
from decimal import Decimal
records, changes, work, stream = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
plugins = sys.argv[5:]
times = {$(for p in "${plugins[@]}"; do printf '"%s": [%s], ' "$p" "$(echo "${times[$p]}" | sed 's/ $//; s/ /, /g')"; done)}
rss = {$(for p in "${plugins[@]}"; do printf '"%s": [%s], ' "$p" "$(echo "${rss[$p]}" | sed 's/ $//; s/ /, /g')"; done)}

# The truth: the tables' final rows from the stream, joined here.
tables = {"orders": {}, "customers": {}}
for line in open(stream):
    r = json.loads(line)
    if r["payload"] is None:
        continue
    p = json.loads(r["payload"])["payload"]
    t = r["topic"].rsplit(".", 1)[1]
    key = json.loads(r["key"])["payload"]
    k = tuple(key.values())
    if p["op"] == "d":
        tables[t].pop(k, None)
    else:
        tables[t][k] = p["after"]
def amount(b64):
    return Decimal(int.from_bytes(base64.b64decode(b64), "big", signed=True)).scaleb(-2)
customers = {c["id"]: c for c in tables["customers"].values()}
left = {}
revenue = {}
for o in tables["orders"].values():
    c = customers.get(o["customer_id"])
    left[o["order_id"]] = (o["customer_id"], amount(o["amount"]), c and c["name"], c and c["segment"])
    if c:
        day = datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=o["placed_at"])
        g = revenue.setdefault((day.date().isoformat(), c["segment"]), [0, Decimal(0)])
        g[0] += 1
        g[1] += amount(o["amount"])

def check(p):
    db = sqlite3.connect(f"{work}/run-{p}/out.db")
    if p == "orders_with_customer":
        got = {r[0]: (r[1], Decimal(r[2]), r[3], r[4]) for r in db.execute(
            "SELECT order_id, customer_id, amount, customer_name, customer_segment FROM orders_with_customer")}
        return got == left, f"{len(got)} rows, {len(left)} expected"
    if p == "revenue_by_segment":
        got = {(r[0][:10], r[1]): [r[2], Decimal(r[3])] for r in db.execute(
            "SELECT window_start, segment, orders, amount_sum FROM revenue_by_segment_daily")}
        return got == revenue, f"{len(got)} groups, {len(revenue)} expected"
    n = db.execute("SELECT count(*) FROM orders").fetchone()[0] + db.execute("SELECT count(*) FROM customers").fetchone()[0]
    want = len(tables["orders"]) + len(tables["customers"])
    return n == want, f"{n} rows, {want} expected"

base = statistics.median(times["mirror"])
print(f"{records} records ({changes} change events: orders and customers), median of {len(times['mirror'])} runs each, taking turns:")
print(f"{'pipeline':<22}{'events/s':>12}{'time s':>9}{'peak RSS MB':>13}{'vs mirror':>11}  check")
ok = True
for p in plugins:
    good, what = check(p)
    ok &= good
    t = statistics.median(times[p])
    rate = f"{changes / t:>12,.0f}" if good else f"{'WRONG':>12}"
    print(f"{p:<22}{rate}{t:>9.2f}{max(rss[p]) / 1024:>13.0f}{t / base:>10.2f}x  {'ok' if good else 'WRONG'}: {what}")
for p in plugins[1:]:
    text = open(f"{work}/{p}.txt").read()
    if "operator state (" in text:
        state = text.split("operator state (")[-1].split(":", 1)[-1].split("sink tables:")[0]
        print(f"state held by {p}:" + state.rstrip())
sys.exit(0 if ok else 1)
PY
