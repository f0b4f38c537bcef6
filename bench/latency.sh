#!/usr/bin/env bash
# Live latency probe (issue 12, item 5): Kafka append → sink commit, p50 and
# p99, with Sluice + mirror following a topic into PostgreSQL with the
# default settings, at each rate. Details: bench/latency.py.
# Installs what it needs: the dev stack (dev/stack up), confluent-kafka from
# PyPI into target/latency-venv.
# Usage: bench/latency.sh [RATES=100,1000] [SECONDS=30]
set -euo pipefail
cd "$(dirname "$0")/.."
rates=${1:-100,1000}
seconds=${2:-30}
dev/prereqs >/dev/null
cargo build --release --quiet -p sluice
cargo build --release --quiet --target wasm32-wasip2 -p mirror
venv=target/latency-venv
if ! "$venv/bin/python" -c "import confluent_kafka" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "confluent-kafka==2.6.1"
fi
dev/stack up
exec "$venv/bin/python" bench/latency.py target/release/sluice target/wasm32-wasip2/release "$rates" "$seconds"
