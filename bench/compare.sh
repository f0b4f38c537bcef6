#!/usr/bin/env bash
# Sluice beside the seed's Spark job, in one run (issue 12's harness): a
# Debezium topic of at least EVENTS change events of a PostgreSQL `orders`
# table (inserts, updates, deletes; schemas on), then, taking turns on it:
# Sluice + mirror into PostgreSQL, MariaDB and SQLite, Sluice's windowed
# aggregates, the seed's PySpark job (ETL upsert and the 5-minute window)
# and PostgreSQL's own COPY + merge. Every output is checked against the
# source before a rate is printed. Details: bench/compare.py.
# Installs what it needs: the dev stack (dev/stack up), PySpark from PyPI
# into target/bench-venv, Spark's Kafka source from Maven Central (Ivy).
# Usage: bench/compare.sh [EVENTS=305000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-305000}
rounds=${2:-3}
pyspark_version=4.0.0  # 4.0.1's spark-token-provider-kafka is not on Maven Central
dev/prereqs >/dev/null
cargo build --release --quiet -p sluice
cargo build --release --quiet --target wasm32-wasip2 -p mirror -p orders_events_5m -p orders_by_customer
venv=target/bench-venv
if ! "$venv/bin/python" -c "import pyspark, sys; sys.exit(pyspark.__version__ != '$pyspark_version')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "pyspark==$pyspark_version"
fi
dev/stack up
exec python3 bench/compare.py "$events" "$rounds" target/release/sluice \
  target/wasm32-wasip2/release "$venv/bin/python"
