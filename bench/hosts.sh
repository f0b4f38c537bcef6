#!/usr/bin/env bash
# What sharing a pipeline between hosts costs for a join whose two topics
# are keyed differently (orders by order id, customers by customer id): the
# generated orders + customers stream (bench/gen_orders.py --customers, 3
# partitions a topic) is produced into Kafka once, then orders_with_customer
# runs into a fresh PostgreSQL database with one host, and with two hosts of
# the same pipeline started together (one consumer group: each host gets some
# partitions; the join state lives in the sink and the hosts' stateful
# commits take turns on it, a turn the other host moved dropping the cache).
# Each run's table is checked against the join computed here from the
# stream's final rows; the wall time until every host is caught up is
# printed per setup (median of ROUNDS, taking turns).
# Needs the dev stack (dev/stack up). Usage: bench/hosts.sh [EVENTS=100000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-100000}
rounds=${2:-3}
cargo build --release --quiet
cargo build --release --quiet --target wasm32-wasip2 -p orders_with_customer
work=target/bench-hosts && mkdir -p "$work/plugins"
cp target/wasm32-wasip2/release/orders_with_customer.wasm "$work/plugins/"
stream="$work/orders-customers-$events.jsonl"
[ -s "$stream" ] || python3 bench/gen_orders.py "$events" "$stream" 3 --customers
prefix="benchhosts$(date +%s)"
python3 - "$stream" "$prefix" <<'PY'
import json, subprocess, sys
stream, prefix = sys.argv[1], sys.argv[2]
parts = {}
for line in open(stream):
    r = json.loads(line)
    topic = prefix + "." + r["topic"].split(".", 1)[1]
    parts.setdefault((topic, r["partition"]), []).append(f'{r["key"]}\t{r["payload"] or ""}')
for (topic, p), lines in sorted(parts.items()):
    subprocess.run(["kcat", "-b", "localhost:9092", "-P", "-K", "\t", "-Z", "-t", topic, "-p", str(p)],
                   input=("\n".join(lines) + "\n").encode(), check=True)
PY
export PGPASSWORD=sluice
psql_admin() { psql -q -h localhost -U sluice -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
: > "$work/runs.txt"
for round in $(seq "$rounds"); do
  for hosts in 1 2; do
    db="bench_hosts_${hosts}"
    psql_admin "DROP DATABASE IF EXISTS $db" && psql_admin "CREATE DATABASE $db"
    start=$(date +%s.%N)
    pids=()
    for h in $(seq "$hosts"); do
      RUST_LOG=warn target/release/sluice run --source kafka://localhost:9092 \
        --topics "^$prefix\\.public\\.(orders|customers)\$" --name "$prefix-$round-$hosts" \
        --instance-id "host-$h" --dlq-topic "" --sink "postgres://sluice:sluice@localhost:5432/$db" \
        --plugins "$work/plugins" --until-caught-up > "$work/host-$hosts-$h.txt" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    end=$(date +%s.%N)
    psql -q -h localhost -U sluice -d "$db" -At -F $'\t' \
      -c "SELECT order_id, customer_id, amount, customer_name, customer_segment FROM orders_with_customer" \
      > "$work/result-$hosts.tsv"
    echo "$hosts $(python3 -c "print($end - $start)")" >> "$work/runs.txt"
    python3 - "$stream" "$work/result-$hosts.tsv" "$hosts" <<'PY'
import base64, json, sys
from decimal import Decimal
stream, result, hosts = sys.argv[1], sys.argv[2], sys.argv[3]
tables = {"orders": {}, "customers": {}}
for line in open(stream):
    r = json.loads(line)
    if r["payload"] is None:
        continue
    p = json.loads(r["payload"])["payload"]
    t = r["topic"].rsplit(".", 1)[1]
    k = tuple(json.loads(r["key"])["payload"].values())
    if p["op"] == "d":
        tables[t].pop(k, None)
    else:
        tables[t][k] = p["after"]
def amount(b64):
    return Decimal(int.from_bytes(base64.b64decode(b64), "big", signed=True)).scaleb(-2)
customers = {c["id"]: c for c in tables["customers"].values()}
want = {}
for o in tables["orders"].values():
    c = customers.get(o["customer_id"])
    want[o["order_id"]] = (o["customer_id"], amount(o["amount"]), c and c["name"], c and c["segment"])
got = {}
for line in open(result):
    oid, cid, amt, name, seg = line.rstrip("\n").split("\t")
    got[int(oid)] = (int(cid), Decimal(amt), name or None, seg or None)
if got != want:
    bad = [k for k in set(got) | set(want) if got.get(k) != want.get(k)][:5]
    sys.exit(f"{hosts} host(s): WRONG result: {len(got)} rows, {len(want)} expected; e.g. {bad}")
PY
    psql_admin "DROP DATABASE $db"
  done
done
python3 - "$work/runs.txt" "$stream" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    hosts, secs = line.split()
    runs.setdefault(int(hosts), []).append(float(secs))
changes = sum(1 for l in open(sys.argv[2]) if '"payload": "' in l)
one = statistics.median(runs[1])
for hosts, secs in sorted(runs.items()):
    m = statistics.median(secs)
    print(f"{hosts} host(s): {changes / m:,.0f} events/s, median {m:.1f} s "
          f"({', '.join(f'{s:.1f}' for s in secs)}); {m / one:.2f}x one host's time; result checked")
PY
