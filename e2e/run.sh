#!/usr/bin/env bash
# End-to-end tier of hfgate: a real OpenID Connect provider (oidc-provider),
# the huggingface_hub and openai clients, and the hfgate binary.
#
#   e2e/run.sh [pytest args...]
#
# Environment:
#   HFGATE_BIN   the hfgate binary (default: <repo>/target/debug/hfgate)
#   PYTHON       the interpreter that creates e2e/.venv (default: python3)
#   HFGATE_E2E_CHROMIUM  the browser of the sign-in tests (default: /usr/bin/chromium)
#
# Installs what the tier needs inside the repository (e2e/idp/node_modules,
# e2e/.venv), skipping work that is already up to date, then runs pytest and
# exits with its status. A missing peer is a failure, never a skip.
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
IDP_DIR="$E2E_DIR/idp"
VENV_DIR="$E2E_DIR/.venv"

die() {
  echo "e2e: error: $*" >&2
  exit 1
}

sha256_of() {
  cat "$@" | sha256sum | cut -d' ' -f1
}

# --- node + the IdP ----------------------------------------------------------
command -v node >/dev/null 2>&1 || die "node is not installed (Node.js >= 20 is required for the IdP)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js >= 20 is required, found $(node --version)"

if [ -f "$IDP_DIR/package-lock.json" ]; then
  npm_want="$(sha256_of "$IDP_DIR/package.json" "$IDP_DIR/package-lock.json")"
else
  npm_want="$(sha256_of "$IDP_DIR/package.json")"
fi
npm_stamp="$IDP_DIR/node_modules/.hfgate-e2e.sha256"
if [ ! -f "$npm_stamp" ] || [ "$(cat "$npm_stamp")" != "$npm_want" ]; then
  echo "e2e: installing the IdP's npm packages" >&2
  if [ -f "$IDP_DIR/package-lock.json" ]; then
    (cd "$IDP_DIR" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $IDP_DIR"
  else
    (cd "$IDP_DIR" && npm install --no-audit --no-fund --loglevel=error) || die "npm install failed in $IDP_DIR"
  fi
  echo "$npm_want" >"$npm_stamp"
fi
[ -f "$IDP_DIR/node_modules/oidc-provider/package.json" ] || die "oidc-provider is missing from $IDP_DIR/node_modules"
[ -f "$IDP_DIR/node_modules/playwright-core/package.json" ] || die "playwright-core is missing from $IDP_DIR/node_modules"

# --- the browser -------------------------------------------------------------
# The sign-in tests drive Chromium (Debian's package; playwright-core downloads no browser). Without it
# those tests fail with the reason; the others run.
CHROMIUM="${HFGATE_E2E_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] || echo "e2e: warning: no Chromium at $CHROMIUM (apt-get install chromium): the sign-in tests will fail" >&2

# --- python venv -------------------------------------------------------------
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is not installed"
py_want="$(
  {
    cat "$E2E_DIR/requirements.txt"
    "$PYTHON" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
)"
py_stamp="$VENV_DIR/.requirements.sha256"
if [ ! -x "$VENV_DIR/bin/python" ] || [ ! -f "$py_stamp" ] || [ "$(cat "$py_stamp")" != "$py_want" ]; then
  echo "e2e: installing the Python packages into $VENV_DIR" >&2
  rm -rf "$VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR" || die "cannot create a venv with $PYTHON (Debian: apt-get install python3-venv)"
  "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$E2E_DIR/requirements.txt" || die "pip install -r e2e/requirements.txt failed"
  echo "$py_want" >"$py_stamp"
fi

# --- the hfgate binary -------------------------------------------------------
HFGATE_BIN="${HFGATE_BIN:-$REPO_DIR/target/debug/hfgate}"
case "$HFGATE_BIN" in
  /*) ;;
  *) HFGATE_BIN="$PWD/$HFGATE_BIN" ;;
esac
[ -e "$HFGATE_BIN" ] || die "hfgate binary not found at $HFGATE_BIN (build it with 'cargo build' or set HFGATE_BIN)"
[ -x "$HFGATE_BIN" ] || die "hfgate binary at $HFGATE_BIN is not executable"
export HFGATE_BIN

# --- run ---------------------------------------------------------------------
cd "$E2E_DIR"
set +e
"$VENV_DIR/bin/python" -m pytest -q "$E2E_DIR/tests" "$@"
status=$?
set -e
exit "$status"
