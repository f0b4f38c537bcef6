#!/usr/bin/env bash
# The demo: real Debezium events captured from PostgreSQL → the example
# plugins (mirror, orders_enriched) → SQLite, then what landed.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 -p mirror -p orders_enriched
cargo build --release
rm -rf target/demo && mkdir -p target/demo/plugins
cp target/wasm32-wasip2/release/mirror.wasm target/wasm32-wasip2/release/orders_enriched.wasm target/demo/plugins/
target/release/sluice run examples/demo.toml --until-caught-up
