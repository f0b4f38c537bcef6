#!/usr/bin/env bash
# End-to-end throughput: the fixture stream repeated N times (offsets
# renumbered, so every record is new to the sink) → mirror.wasm → SQLite.
# Usage: bench/e2e.sh [N=100] [schemas|plain]   Prints records/s of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100}
kind=${2:-schemas}
cargo build --release --quiet
cargo build --release --quiet --target wasm32-wasip2 -p mirror
work=target/bench-e2e && rm -rf "$work" && mkdir -p "$work/plugins"
cp target/wasm32-wasip2/release/mirror.wasm "$work/plugins/"
python3 - "$n" "tests/fixtures/debezium-pg/pg_events.$kind.jsonl" "$work/events.jsonl" <<'PY'
import json, sys
n, src, dst = int(sys.argv[1]), sys.argv[2], sys.argv[3]
lines = [json.loads(l) for l in open(src)]
next_off = {}
with open(dst, "w") as out:
    for _ in range(n):
        for r in lines:
            k = (r["topic"], r["partition"])
            r = dict(r, offset=next_off.get(k, 0))
            next_off[k] = r["offset"] + 1
            out.write(json.dumps(r) + "\n")
PY
records=$(wc -l < "$work/events.jsonl")
cfg=()
[ "$kind" = plain ] && cfg=(examples/pg-plain.toml)
start=$(date +%s.%N)
RUST_LOG=warn target/release/sluice run "${cfg[@]}" --source "file:$work/events.jsonl" \
  --sink "sqlite:$work/out.db" --plugins "$work/plugins" --until-caught-up --max-batch 1000 >/dev/null
end=$(date +%s.%N)
python3 -c "r=$records; t=$end-$start; print(f'{r} records ($kind) in {t:.2f}s: {r/t:,.0f} records/s end to end')"
