#!/usr/bin/env bash
# Runs every test tier: formatting and lints, unit and integration tests (real sockets on 127.0.0.1),
# every fuzz target for a bounded time, and the end-to-end tier against real peers (oidc-provider as
# the IdP, the huggingface_hub and openai Python clients, headless Chromium for browser sign-in). Installs
# what the tiers need: Debian packages if missing (chromium among them), cargo-fuzz, and npm and pip
# packages into the repository (e2e/idp/node_modules, e2e/.venv).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The end-to-end sign-in tests drive Debian's Chromium (e2e/idp/browser.mjs, playwright-core).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 1; }

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "==> unit and integration tests"
cargo test --locked
echo "==> fuzz targets, a few seconds each (FUZZ_SECONDS=600 scripts/fuzz.sh for a long run)"
./scripts/fuzz.sh
echo "==> end-to-end tests (oidc-provider, huggingface_hub, openai, chromium)"
cargo build --locked --bin hfgate
HFGATE_BIN="$PWD/target/debug/hfgate" e2e/run.sh
