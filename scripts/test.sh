#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, unit tests, and the end-to-end tests that
# start the real controller and Envoy on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_envoy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked
