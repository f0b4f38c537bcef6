#!/usr/bin/env bash
# The demo: real Debezium events captured from PostgreSQL → the example
# plugins (mirror, orders_enriched) → SQLite (target/demo/demo.db), then what
# landed.
#
# Needs Rust (rustup). dev/prereqs adds what else the build needs when it is
# missing: the wasm32-wasip2 target, and Debian's libcurl4-openssl-dev and
# cmake (librdkafka is built from source). Works from any directory; writes
# only under target/. The host is built in the dev profile, which the test
# suite shares; `cargo build --release` gives the fast binary (README).
set -euo pipefail
cd "$(dirname "$0")/.."
dev/prereqs
cargo build --release --target wasm32-wasip2 -p mirror -p orders_enriched
cargo build -p sluice
rm -rf target/demo && mkdir -p target/demo/plugins
cp target/wasm32-wasip2/release/mirror.wasm target/wasm32-wasip2/release/orders_enriched.wasm target/demo/plugins/
target/debug/sluice run examples/demo.toml --until-caught-up
