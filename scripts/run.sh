#!/usr/bin/env bash
# Installs what is missing, builds, and runs the gateway in the foreground:
# management API on 127.0.0.1:9090, Envoy on :8080, the policy engine on 127.0.0.1:9001, SQLite under
# ./data. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
ensure_envoy
cargo build --release -p gateway-controller -p gateway-policy-engine
exec target/release/gateway-controller --config "${APIP_GW_CONFIG:-config.toml}" "$@"
