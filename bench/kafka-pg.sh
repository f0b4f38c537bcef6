#!/usr/bin/env bash
# Kafka → mirror.wasm → PostgreSQL throughput on the dev stack: each binary
# replays the PostgreSQL connector's topics (whatever they hold; run
# tests/cdc.rs first for a long stream) whole into a fresh sink database,
# under a new pipeline name, until caught up. Binaries take turns, so both
# are measured in one run on the same data.
# Usage: bench/kafka-pg.sh [ROUNDS=3] [BINARY ...]  (default: target/release/sluice)
# Prints records/s per run and the median per binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --quiet -p sluice
  bins=(target/release/sluice)
fi
cargo build --release --quiet --target wasm32-wasip2 -p mirror
work=target/bench-kafka-pg && rm -rf "$work" && mkdir -p "$work/plugins"
cp target/wasm32-wasip2/release/mirror.wasm "$work/plugins/"
export PGPASSWORD=sluice
psql_admin() { psql -q -h localhost -U sluice -d postgres -v ON_ERROR_STOP=1 -c "$1"; }
topics='^pgserver1\.public\.(customers|orders)$'
for round in $(seq "$rounds"); do
  for i in "${!bins[@]}"; do
    db="bench_kafka_pg_$i"
    psql_admin "DROP DATABASE IF EXISTS $db" && psql_admin "CREATE DATABASE $db"
    # the summary's first line: "read N records in S s (...)"
    out=$(RUST_LOG=error "${bins[$i]}" run --source kafka://localhost:9092 --topics "$topics" \
      --name "bench-$round-$i" --dlq-topic "" --sink "postgres://sluice:sluice@localhost:5432/$db" \
      --plugins "$work/plugins" --until-caught-up)
    line=${out%%$'\n'*}
    echo "$i ${bins[$i]} round $round: $line" | tee -a "$work/runs.txt"
    psql_admin "DROP DATABASE $db"
  done
done
python3 - "$work/runs.txt" "${bins[@]}" <<'PY'
import re, statistics, sys
runs, bins = sys.argv[1], sys.argv[2:]
rates = {}
for line in open(runs):
    m = re.match(r"(\d+) \S+ round \d+: read (\d+) records in ([\d.]+)s", line)
    if m:
        rates.setdefault(int(m[1]), []).append(int(m[2]) / float(m[3]))
base = None
for i, b in enumerate(bins):
    med = statistics.median(rates[i])
    base = base or med
    print(f"{b}: median {med:,.0f} records/s over {len(rates[i])} runs "
          f"({', '.join(f'{r:,.0f}' for r in rates[i])}); {med / base:.2f}x the first")
PY
