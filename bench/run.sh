#!/usr/bin/env bash
# Side-by-side benchmark: hfgate against a direct upstream, nginx (plain proxy) and HAProxy (jwt_verify).
# See bench/README.md. Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
ALL_TARGETS=(direct nginx bare haproxy-rs256 hfgate-rs256 hfgate-5rules hfgate-500rules haproxy-es256 hfgate-es256
  haproxy-rs256-distinct hfgate-rs256-distinct haproxy-es256-distinct hfgate-es256-distinct)
# The rule targets: hfgate-rs256's configuration plus 40 more routes and this many [[allow]]/[[deny]] rules.
# hfgate-5rules is the full pipeline (authentication, a Cedar decision, the audit line, metrics) that the
# requirements compare with HAProxy and nginx; the distinct-token hfgate targets run the same configuration.
declare -A RULE_COUNT=([hfgate-5rules]=5 [hfgate-500rules]=500 [hfgate-rs256-distinct]=5 [hfgate-es256-distinct]=5)
# Pool tokens live 23 h: below hfgate's default max_token_lifetime (24 h), so a cached pool serves a day.
POOL_LIFETIME=82800

usage() {
  cat <<EOF
Usage: bench/run.sh [--quick] [--build] [--targets LIST] [--help]

Measures, in one run, requests/s and p50/p99 latency of:
  direct          the fast upstream (nginx returning a small JSON body), no proxy
  nginx           nginx as a plain reverse proxy (no authentication; the token is passed on)
  bare            hfgate's HTTP path with none of its work (examples/bare_proxy.rs): same runtime, server
                  and upstream connections, no token check, decision, audit or header rewriting
  haproxy-rs256   HAProxy 2.6 checking an RS256 JWT with jwt_verify
  haproxy-es256   HAProxy 2.6 checking an ES256 JWT with jwt_verify
  hfgate-rs256    hfgate checking the same RS256 JWT
  hfgate-es256    hfgate checking the same ES256 JWT
  hfgate-5rules   hfgate-rs256 plus 40 routes and 5 authorization rules (one permits the request):
                  the full pipeline (authentication, Cedar decision, audit line, metrics)
  hfgate-500rules the same with 500 rules (bench/lib/rules.py); the ratio to hfgate-5rules is reported
  haproxy-rs256-distinct, haproxy-es256-distinct
                  HAProxy as above, a different valid token on every request
  hfgate-rs256-distinct, hfgate-es256-distinct
                  hfgate-5rules' configuration, a different valid token on every request
The proxy under test and the upstream run on CPU \$BENCH_PROXY_CPU (0); wrk alone on CPU \$BENCH_LOAD_CPU (1).
Distinct tokens: BENCH_DISTINCT_TOKENS per algorithm, kept in \$BENCH_TOKEN_CACHE for later runs.

Options:
  --quick         short smoke run (1 s warm-up, 3 s measurement) unless the env overrides
  --build         build hfgate (cargo build --release) and the bare proxy (--example bare_proxy) first
                  when missing or older than their sources
  --targets LIST  comma-separated subset of: ${ALL_TARGETS[*]}

Environment (defaults in brackets):
  BENCH_DURATION [10]  seconds measured per target      BENCH_WARMUP [2]   warm-up seconds
  BENCH_CONNECTIONS [64]  open connections               BENCH_THREADS [1]  wrk threads
  BENCH_ROUNDS [1]     times the whole target list is measured; medians are reported
  BENCH_PROXY_CPU [0]  BENCH_LOAD_CPU [1]                BENCH_PORT_BASE [18400]
  BENCH_DISTINCT_TOKENS [20000 x (warm-up + duration in s), at least 20000]
  BENCH_TOKEN_CACHE [bench/.token-cache; "off": make keys and tokens in the work directory each run]
  BENCH_WORKDIR [bench/.work]  HFGATE_BIN [target/release/hfgate]
  BARE_BIN [target/release/examples/bare_proxy]
Output: a markdown table on stdout and in bench/results/latest.md.
EOF
}

# ---------------------------------------------------------------- options

QUICK=0
BUILD=0
TARGETS_ARG=""
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --build) BUILD=1 ;;
    --targets) TARGETS_ARG=${2:?--targets needs a list}; shift ;;
    --targets=*) TARGETS_ARG=${1#--targets=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

seconds() { # "10" or "10s" -> 10
  local name=$1 value=${2%s}
  [[ $value =~ ^[0-9]+$ && $value -gt 0 ]] || { echo "run.sh: $name must be a positive number of seconds, got '$2'" >&2; exit 2; }
  echo "$value"
}
count() {
  local name=$1 value=$2
  [[ $value =~ ^[0-9]+$ && $value -gt 0 ]] || { echo "run.sh: $name must be a positive integer, got '$2'" >&2; exit 2; }
  echo "$value"
}

if ((QUICK)); then
  DURATION=$(seconds BENCH_DURATION "${BENCH_DURATION:-3}")
  WARMUP=$(seconds BENCH_WARMUP "${BENCH_WARMUP:-1}")
else
  DURATION=$(seconds BENCH_DURATION "${BENCH_DURATION:-10}")
  WARMUP=$(seconds BENCH_WARMUP "${BENCH_WARMUP:-2}")
fi
CONNECTIONS=$(count BENCH_CONNECTIONS "${BENCH_CONNECTIONS:-64}")
THREADS=$(count BENCH_THREADS "${BENCH_THREADS:-1}")
ROUNDS=$(count BENCH_ROUNDS "${BENCH_ROUNDS:-1}")
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
PORT_BASE=$(count BENCH_PORT_BASE "${BENCH_PORT_BASE:-18400}")
WORK=${BENCH_WORKDIR:-$BENCH_DIR/.work}
HFGATE=${HFGATE_BIN:-$REPO/target/release/hfgate}
BARE=${BARE_BIN:-$REPO/target/release/examples/bare_proxy}
RESULTS_DIR=$BENCH_DIR/results
# Enough distinct tokens for 20,000 requests/s over the warm-up and the measurement of one target
# (signing them takes about 30 s on two idle cores for a full run); never fewer than the 20,000 asked for.
DISTINCT_TOKENS=$(count BENCH_DISTINCT_TOKENS "${BENCH_DISTINCT_TOKENS:-$((20000 * (WARMUP + DURATION)))}")
((DISTINCT_TOKENS >= 20000)) || DISTINCT_TOKENS=20000
TOKEN_CACHE=${BENCH_TOKEN_CACHE:-$BENCH_DIR/.token-cache}

ISSUER="https://bench.example"
AUDIENCE="hfgate-bench"

if [[ -n $TARGETS_ARG ]]; then
  IFS=, read -r -a TARGETS <<<"$TARGETS_ARG"
  for t in "${TARGETS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { echo "run.sh: unknown target '$t' (known: ${ALL_TARGETS[*]})" >&2; exit 2; }
  done
else
  TARGETS=("${ALL_TARGETS[@]}")
fi
wants() { [[ " ${TARGETS[*]} " == *" $1"* ]]; } # a prefix: wants haproxy / wants hfgate
target_stem() { # the token algorithm of a target: rs256, es256, or nothing
  case "$1" in
    *rs256* | hfgate-*rules | nginx | bare) echo rs256 ;;
    *es256*) echo es256 ;;
  esac
}

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- packages

ensure_packages() {
  local -A pkg_for=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl [openssl]=openssl
    [python3]=python3 [taskset]=util-linux)
  local missing=() cmd
  for cmd in "${!pkg_for[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null 2>&1 || die "missing commands from packages: ${missing[*]} (no apt-get to install them)"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo)
  log "installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
ensure_packages

if wants haproxy; then
  hv=$(haproxy -v 2>/dev/null || true)
  hv=${hv%%$'\n'*}
  [[ $hv =~ version\ ([0-9]+)\.([0-9]+) ]] || die "cannot read the HAProxy version from: $hv"
  ((BASH_REMATCH[1] > 2 || (BASH_REMATCH[1] == 2 && BASH_REMATCH[2] >= 5))) \
    || die "HAProxy >= 2.5 is needed for jwt_verify; found: $hv"
  hvv=$(haproxy -vv 2>/dev/null || true)
  [[ $hvv == *USE_OPENSSL=1* ]] || die "this HAProxy is built without OpenSSL, so it has no jwt_verify"
fi

ncpu=$(nproc)
((PROXY_CPU < ncpu && LOAD_CPU < ncpu)) || die "CPUs $PROXY_CPU and $LOAD_CPU must exist (nproc = $ncpu)"
((PROXY_CPU != LOAD_CPU)) || log "warning: proxy and load generator share CPU $PROXY_CPU"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- hfgate binary

HFGATE_STATUS=ok # ok | skip:<reason>
stale() { # stale BINARY [MORE_SOURCES...]: missing, or older than the sources it is built from
  local binary=$1
  shift
  [[ ! -x $binary ]] && return 0
  [[ -n $(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" "$@" -newer "$binary" -print -quit 2>/dev/null) ]]
}
if wants hfgate; then
  if ((BUILD)) && [[ -z ${HFGATE_BIN:-} ]] && stale "$HFGATE"; then
    command -v cargo >/dev/null 2>&1 || die "--build needs cargo on PATH"
    log "building hfgate (cargo build --release)"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
  fi
  if [[ ! -x $HFGATE ]]; then
    HFGATE_STATUS="skip:no binary at $HFGATE (run 'cargo build --release' or pass --build)"
  elif ! [[ $("$HFGATE" --help 2>&1 || true) =~ (^|[[:space:]])serve[[:space:]] ]]; then
    HFGATE_STATUS="skip:'$HFGATE --help' lists no 'serve' subcommand"
  elif stale "$HFGATE"; then
    log "warning: $HFGATE is older than the sources; measuring it anyway (use --build to rebuild)"
  fi
  [[ $HFGATE_STATUS == ok ]] || log "hfgate targets skipped: ${HFGATE_STATUS#skip:}"
fi
BARE_STATUS=ok # ok | skip:<reason>
if wants bare; then
  if ((BUILD)) && [[ -z ${BARE_BIN:-} ]] && stale "$BARE" "$REPO/examples"; then
    log "building the bare proxy (cargo build --release --example bare_proxy)"
    (cd "$REPO" && cargo build --release --example bare_proxy) || die "cargo build --release --example bare_proxy failed"
  fi
  [[ -x $BARE ]] || BARE_STATUS="skip:no binary at $BARE (run 'cargo build --release --example bare_proxy' or pass --build)"
  [[ $BARE_STATUS == ok ]] || log "bare target skipped: ${BARE_STATUS#skip:}"
fi

# ---------------------------------------------------------------- processes

PIDS=()
LAST_PID=""

start_bg() { # start_bg NAME CPU CMD... ; sets LAST_PID
  local name=$1 cpu=$2
  shift 2
  taskset -c "$cpu" "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

stop_pid() {
  local pid=$1 children i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; forget_pid "$pid"; return 0; }
  children=$(pgrep -P "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
  for i in $children; do kill -KILL "$i" 2>/dev/null || true; done
  forget_pid "$pid"
}

forget_pid() {
  local kept=() p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  PIDS=("${kept[@]+"${kept[@]}"}")
}

cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$pid"; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
EOF
}
NEXT_PORT=$PORT_BASE
next_port() { # sets PORT
  while ! port_free "$NEXT_PORT"; do
    NEXT_PORT=$((NEXT_PORT + 1))
    ((NEXT_PORT < PORT_BASE + 200)) || die "no free port in $PORT_BASE..$((PORT_BASE + 199))"
  done
  PORT=$NEXT_PORT
  NEXT_PORT=$((NEXT_PORT + 1))
}

render() { # render TEMPLATE OUT KEY=VALUE...
  local template=$1 out=$2 kv expr=()
  shift 2
  for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
  sed "${expr[@]}" "$template" >"$out"
  ! grep -q '@[A-Z_]*@' "$out" || die "unrendered placeholder in $out"
}

# wait_http PID URL TIMEOUT: 0 once URL answers 200; 1 when the time runs out; 2 when the process dies
wait_http() {
  local pid=$1 url=$2 deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 2
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true) == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- setup: keys, tokens, configs

# The work directory is recreated on every run; refuse to empty a directory this script did not make.
if [[ -n ${BENCH_WORKDIR:-} && -e $WORK && ! -e $WORK/.hfgate-bench && -n $(ls -A "$WORK" 2>/dev/null) ]]; then
  die "$WORK exists, is not empty and was not made by this benchmark; choose another BENCH_WORKDIR"
fi
rm -rf "$WORK"
mkdir -p "$WORK/keys" "$RESULTS_DIR"
touch "$WORK/.hfgate-bench"
RUN=$WORK/run
mkdir -p "$RUN"/{upstream-nginx.tmp,proxy-nginx.tmp}

# Keys live with the distinct-token pool in the cache (a pool is only valid with the keys that signed
# it), or are made for this run when the cache is off.
if [[ $TOKEN_CACHE == off ]]; then
  POOL_BASE=$WORK
else
  POOL_BASE=$TOKEN_CACHE
  mkdir -p "$POOL_BASE/keys" "$POOL_BASE/tokens" || die "cannot create the token cache $TOKEN_CACHE"
fi
declare -A KEYGEN=([rs256]="-algorithm RSA -pkeyopt rsa_keygen_bits:2048" [es256]="-algorithm EC -pkeyopt ec_paramgen_curve:P-256")
for stem in rs256 es256; do
  [[ -s $POOL_BASE/keys/$stem.key.pem ]] && continue
  log "generating the ${stem^^} key in $POOL_BASE/keys"
  # shellcheck disable=SC2086 # KEYGEN holds several arguments
  openssl genpkey ${KEYGEN[$stem]} -out "$POOL_BASE/keys/$stem.key.pem.tmp" 2>/dev/null \
    || die "openssl genpkey failed for $stem"
  mv "$POOL_BASE/keys/$stem.key.pem.tmp" "$POOL_BASE/keys/$stem.key.pem"
  rm -f "$POOL_BASE/tokens/$stem-distinct.meta" # a new key invalidates its pool
done
[[ $POOL_BASE == "$WORK" ]] || cp "$POOL_BASE"/keys/{rs256,es256}.key.pem "$WORK/keys/"
log "writing the JWKS and the fixed tokens"
python3 "$BENCH_DIR/lib/jwt.py" setup --dir "$WORK" --iss "$ISSUER" --aud "$AUDIENCE"

# The distinct-token pools, for the algorithms of the distinct targets asked for. A cached pool is used
# when it was signed by these keys for this issuer and audience, is large enough, and outlives the run.
POOL_DIR=$POOL_BASE/tokens
POOL_STEMS=()
for target in "${TARGETS[@]}"; do
  if [[ $target == *-distinct && " ${POOL_STEMS[*]-} " != *" $(target_stem "$target") "* ]]; then
    POOL_STEMS+=("$(target_stem "$target")")
  fi
done
pool_meta() { # the cache record of a pool: what it must match to be used again
  printf 'version=1\niss=%s\naud=%s\nkey=%s\n' "$ISSUER" "$AUDIENCE" \
    "$(sha256sum "$POOL_BASE/keys/$1.key.pem" | cut -d' ' -f1)"
}
pool_usable() { # pool_usable STEM NEEDED_UNTIL
  local meta=$POOL_DIR/$1-distinct.meta count exp
  [[ -f $meta && -s $POOL_DIR/$1-distinct.txt && -s $POOL_DIR/$1-distinct-check.jwt ]] || return 1
  [[ $(grep -v -e '^count=' -e '^exp=' "$meta") == "$(pool_meta "$1" | sed '/^$/d')" ]] || return 1
  count=$(sed -n 's/^count=//p' "$meta")
  exp=$(sed -n 's/^exp=//p' "$meta")
  [[ $count =~ ^[0-9]+$ && $exp =~ ^[0-9]+$ ]] && ((count >= DISTINCT_TOKENS && exp >= $2))
}
if ((${#POOL_STEMS[@]})); then
  # The tokens must stay valid until the last target has run (generously estimated).
  needed_until=$(($(date +%s) + 600 + ROUNDS * ${#TARGETS[@]} * (WARMUP + DURATION + 20)))
  missing=()
  for stem in "${POOL_STEMS[@]}"; do
    pool_usable "$stem" "$needed_until" || missing+=("$stem")
  done
  if ((${#missing[@]})); then
    log "signing $DISTINCT_TOKENS distinct tokens per algorithm for ${missing[*]} (into $POOL_DIR)"
    for stem in "${missing[@]}"; do rm -f "$POOL_DIR/$stem-distinct.meta"; done
    pool_exp=$(($(date +%s) + POOL_LIFETIME)) # no later than the tokens' own exp
    pool_started=$SECONDS
    python3 "$BENCH_DIR/lib/jwt.py" pool --dir "$POOL_BASE" --iss "$ISSUER" --aud "$AUDIENCE" \
      --count "$DISTINCT_TOKENS" --lifetime "$POOL_LIFETIME" --algs "$(IFS=,; echo "${missing[*]}")" \
      2>"$RUN/token-pool.log" || die "bench/lib/jwt.py pool failed: $(tail -n 5 "$RUN/token-pool.log")"
    while read -r line; do log "$line"; done <"$RUN/token-pool.log"
    POOL_SECONDS=$((SECONDS - pool_started))
    for stem in "${missing[@]}"; do
      { pool_meta "$stem"; echo "count=$DISTINCT_TOKENS"; echo "exp=$pool_exp"; } >"$POOL_DIR/$stem-distinct.meta"
    done
  else
    log "distinct tokens: using the pools in $POOL_DIR (${POOL_STEMS[*]})"
  fi
fi

next_port; UPSTREAM_PORT=$PORT
next_port; JWKS_PORT=$PORT
next_port; NGINX_PORT=$PORT
next_port; BARE_PORT=$PORT
declare -A HAPROXY_PORT=()
next_port; HAPROXY_PORT[rs256]=$PORT
next_port; HAPROXY_PORT[es256]=$PORT
next_port; HFGATE_PORT=$PORT
next_port; HFGATE_ADMIN_PORT=$PORT

render "$BENCH_DIR/conf/upstream-nginx.conf.in" "$RUN/upstream-nginx.conf" \
  RUN="$RUN" WORK="$WORK" UPSTREAM_PORT="$UPSTREAM_PORT" JWKS_PORT="$JWKS_PORT"
render "$BENCH_DIR/conf/proxy-nginx.conf.in" "$RUN/proxy-nginx.conf" \
  RUN="$RUN" UPSTREAM_PORT="$UPSTREAM_PORT" PROXY_PORT="$NGINX_PORT"
for alg in RS256 ES256; do
  lc=${alg,,}
  render "$BENCH_DIR/conf/haproxy.cfg.in" "$RUN/haproxy-$lc.cfg" \
    RUN="$RUN" ALG="$alg" ALG_LC="$lc" ISSUER="$ISSUER" AUDIENCE="$AUDIENCE" \
    PUBKEY="$WORK/keys/$lc.pub.pem" PROXY_PORT="${HAPROXY_PORT[$lc]}" UPSTREAM_PORT="$UPSTREAM_PORT"
done
AUDIT_PATH=$RUN/audit.jsonl
render "$BENCH_DIR/conf/hfgate.toml.in" "$RUN/hfgate.toml" \
  PROXY_PORT="$HFGATE_PORT" ADMIN_PORT="$HFGATE_ADMIN_PORT" AUDIT_PATH="$AUDIT_PATH" \
  ISSUER="$ISSUER" AUDIENCE="$AUDIENCE" JWKS_PORT="$JWKS_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
# The rule configurations: the same file, then the generated routes and rules (deterministic; see
# rules.py), one per rule count the chosen targets use.
declare -A RULE_CONFIGS=()
for target in "${TARGETS[@]}"; do
  if [[ -n ${RULE_COUNT[$target]:-} ]]; then RULE_CONFIGS[${RULE_COUNT[$target]}]=1; fi
done
for n in "${!RULE_CONFIGS[@]}"; do
  { cat "$RUN/hfgate.toml"; echo; python3 "$BENCH_DIR/lib/rules.py" --rules "$n" \
      --upstream "http://127.0.0.1:$UPSTREAM_PORT" --summary 2>"$RUN/hfgate-${n}rules.txt"; } >"$RUN/hfgate-${n}rules.toml" \
    || die "bench/lib/rules.py failed: $(cat "$RUN/hfgate-${n}rules.txt")"
  log "hfgate-${n}rules.toml: $(<"$RUN/hfgate-${n}rules.txt")"
done

nginx -t -q -p "$RUN" -e "$RUN/nginx-t.log" -c "$RUN/upstream-nginx.conf" || die "upstream nginx config rejected"
nginx -t -q -p "$RUN" -e "$RUN/nginx-t.log" -c "$RUN/proxy-nginx.conf" || die "proxy nginx config rejected"
for alg in rs256 es256; do
  haproxy -c -q -f "$RUN/haproxy-$alg.cfg" || die "HAProxy config haproxy-$alg.cfg rejected"
done

# The upstream (and the JWKS) stay up for the whole run, on the proxy's core: the load generator keeps
# the other core to itself, so it is never what limits a proxy.
start_bg upstream-nginx "$PROXY_CPU" nginx -p "$RUN" -e "$RUN/upstream-nginx.error.log" -c "$RUN/upstream-nginx.conf"
UPSTREAM_PID=$LAST_PID
for url in "http://127.0.0.1:$UPSTREAM_PORT/" "http://127.0.0.1:$JWKS_PORT/jwks.json"; do
  wait_http "$UPSTREAM_PID" "$url" 10 || die "the upstream nginx does not serve $url (log: $RUN/upstream-nginx.log, $RUN/upstream-nginx.error.log)"
done

# ---------------------------------------------------------------- per-target start, checks, load

# Functions below report a failure by setting FAIL_MSG and returning 1 (no subshells: they start processes).
# TARGET_TOKENS: how wrk authenticates: "" (no token), fixed (the valid token on every request) or
# distinct (a different pool token on every request).
TARGET_PID="" TARGET_URL="" TARGET_TOKEN_STEM="" TARGET_TOKENS="" FAIL_MSG=""
log_tail() { tail -n "${2:-5}" "$RUN/$1.log" 2>/dev/null | tr '\n' ' ' || true; }

start_target() { # sets TARGET_PID TARGET_URL TARGET_TOKEN_STEM TARGET_TOKENS
  local target=$1 rc=0
  TARGET_PID="" TARGET_TOKEN_STEM="" TARGET_TOKENS=""
  if [[ $target != direct ]]; then
    TARGET_TOKEN_STEM=$(target_stem "$target")
    TARGET_TOKENS=fixed
    [[ $target != *-distinct ]] || TARGET_TOKENS=distinct
  fi
  case "$target" in
    direct)
      TARGET_PID=$UPSTREAM_PID
      TARGET_URL="http://127.0.0.1:$UPSTREAM_PORT/"
      ;;
    nginx)
      start_bg "$target" "$PROXY_CPU" nginx -p "$RUN" -e "$RUN/proxy-nginx.error.log" -c "$RUN/proxy-nginx.conf"
      TARGET_PID=$LAST_PID
      TARGET_URL="http://127.0.0.1:$NGINX_PORT/"
      wait_http "$TARGET_PID" "$TARGET_URL" 10 || rc=$?
      case $rc in
        1) FAIL_MSG="nginx did not answer 200 within 10 s"; return 1 ;;
        2) FAIL_MSG="nginx exited during start-up: $(log_tail "$target") $(tail -n 3 "$RUN/proxy-nginx.error.log" 2>/dev/null)"; return 1 ;;
      esac
      ;;
    bare)
      start_bg "$target" "$PROXY_CPU" "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UPSTREAM_PORT"
      TARGET_PID=$LAST_PID
      TARGET_URL="http://127.0.0.1:$BARE_PORT/"
      wait_http "$TARGET_PID" "$TARGET_URL" 10 || rc=$?
      case $rc in
        1) FAIL_MSG="the bare proxy did not answer 200 within 10 s"; return 1 ;;
        2) FAIL_MSG="the bare proxy exited during start-up: $(log_tail "$target")"; return 1 ;;
      esac
      ;;
    haproxy-*)
      local alg=$TARGET_TOKEN_STEM
      start_bg "$target" "$PROXY_CPU" haproxy -db -f "$RUN/haproxy-$alg.cfg"
      TARGET_PID=$LAST_PID
      TARGET_URL="http://127.0.0.1:${HAPROXY_PORT[$alg]}/"
      local deadline=$((SECONDS + 10))
      until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$TARGET_URL" || true) == 401 ]]; do
        kill -0 "$TARGET_PID" 2>/dev/null || { FAIL_MSG="haproxy exited during start-up: $(log_tail "$target")"; return 1; }
        ((SECONDS < deadline)) || { FAIL_MSG="haproxy did not answer 401 (no token) within 10 s"; return 1; }
        sleep 0.1
      done
      ;;
    hfgate-*)
      local config=$RUN/hfgate.toml
      if [[ -n ${RULE_COUNT[$target]:-} ]]; then
        config=$RUN/hfgate-${RULE_COUNT[$target]}rules.toml
        # A binary that cannot read the rules fails here, with its own words, not at start-up.
        if ! env -u RUST_LOG "$HFGATE" check --config "$config" >"$RUN/$target.check.log" 2>&1; then
          FAIL_MSG="'hfgate check --config $config' exited non-zero: $(head -c 400 "$RUN/$target.check.log" | tr '\n' ' ')"
          return 1
        fi
      fi
      rm -f "$AUDIT_PATH"
      start_bg "$target" "$PROXY_CPU" env -u RUST_LOG "$HFGATE" serve --config "$config"
      TARGET_PID=$LAST_PID
      TARGET_URL="http://127.0.0.1:$HFGATE_PORT/"
      wait_http "$TARGET_PID" "http://127.0.0.1:$HFGATE_ADMIN_PORT/readyz" 30 || rc=$?
      case $rc in
        1) FAIL_MSG="GET http://127.0.0.1:$HFGATE_ADMIN_PORT/readyz did not return 200 within 30 s; log: $(log_tail "$target" 3)"; return 1 ;;
        2) FAIL_MSG="'hfgate serve --config $config' exited during start-up; log: $(log_tail "$target")"; return 1 ;;
      esac
      ;;
  esac
}

stop_target() {
  [[ -z $TARGET_PID || $TARGET_PID == "$UPSTREAM_PID" ]] || stop_pid "$TARGET_PID"
  TARGET_PID=""
}

# expect LABEL STATUS [TOKEN_FILE [METHOD]] : one request, status (and body for 200) must match
expect() {
  local label=$1 want=$2 token_file=${3:-} method=${4:-GET} got auth=()
  if [[ -n $token_file ]]; then
    local path=$WORK/tokens/$token_file.jwt
    [[ $token_file != *-distinct-check ]] || path=$POOL_DIR/$token_file.jwt
    auth=(-H "Authorization: Bearer $(<"$path")")
  fi
  got=$(curl -sS --max-time 5 -X "$method" -o "$RUN/check.body" -w '%{http_code}' "${auth[@]+"${auth[@]}"}" "$TARGET_URL" 2>&1) || got="curl failed: $got"
  if [[ $got != "$want" ]]; then
    FAIL_MSG="check '$label': $method $TARGET_URL expected $want, got $got: $(head -c 300 "$RUN/check.body" 2>/dev/null | tr '\n' ' ')"
    return 1
  fi
  if [[ $want == 200 && $(<"$RUN/check.body") != '{"ok":true}' ]]; then
    FAIL_MSG="check '$label': 200 but the body is not the upstream's: $(head -c 300 "$RUN/check.body" | tr '\n' ' ')"
    return 1
  fi
}

check_target() { # check_target TARGET
  local target=$1 stem=$TARGET_TOKEN_STEM kind
  if [[ -z $stem ]]; then
    expect "no auth" 200
    return
  fi
  if [[ $target == nginx || $target == bare ]]; then
    # They check nothing: the token makes their requests the same as everyone else's.
    expect "token passed through" 200 "$stem-valid"
    return
  fi
  expect "valid token" 200 "$stem-valid" || return 1
  if [[ $TARGET_TOKENS == distinct ]]; then
    # Signed like the pool (which no check touches, so the load starts with unused tokens).
    expect "distinct-pool token" 200 "$stem-distinct-check" || return 1
  fi
  expect "no token" 401 || return 1
  for kind in tampered expired wrong-aud wrong-iss; do
    expect "$kind token" 401 "$stem-$kind" || return 1
  done
  if [[ -n ${RULE_COUNT[$target]:-} ]]; then
    # The policy must decide: a group no rule names is refused, and so is a write by the bench group.
    expect "groups [nobody]" 403 "$stem-nobody" || return 1
    expect "write (POST) by groups [bench]" 403 "$stem-valid" POST || return 1
  fi
}

cpu_ticks() { # "busy total" of one CPU from /proc/stat
  awk -v cpu="cpu$1" '$1 == cpu { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
proc_ticks() { # utime+stime of a process and its direct children
  local pid sum=0 fields
  for pid in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    read -r -a f <<<"$fields"
    sum=$((sum + f[11] + f[12]))
  done
  echo "$sum"
}
CHILD_TICKS=0
children_ticks() { # sets CHILD_TICKS: user+sys of this shell's reaped children (wrk, via timeout), in clock ticks
  times >"$RUN/times.txt" # not in a $(...) subshell: that would report the subshell's children
  CHILD_TICKS=$(awk -v hz="$CLK_TCK" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
    printf "%d", t * hz }' "$RUN/times.txt")
}
thread_count() {
  local pid n=0
  for pid in "$1" $(pgrep -P "$1" 2>/dev/null || true); do
    n=$((n + $(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)))
  done
  echo "$n"
}

run_wrk() { # run_wrk SECONDS OUTFILE [FIRST_POOL_TOKEN]
  local args=(-s "$BENCH_DIR/lib/report.lua") pid rc=0
  case $TARGET_TOKENS in
    fixed) args+=(-H "Authorization: Bearer $(<"$WORK/tokens/$TARGET_TOKEN_STEM-valid.jwt")" "$TARGET_URL") ;;
    distinct)
      args=(-s "$BENCH_DIR/lib/distinct.lua" "$TARGET_URL" -- "$POOL_DIR/$TARGET_TOKEN_STEM-distinct.txt" "${3:-0}" "$THREADS") ;;
    *) args+=("$TARGET_URL") ;;
  esac
  # In the background and waited for, so that Ctrl-C ends the run at once (the trap stops wrk too).
  timeout --kill-after=5 $(($1 + 60)) taskset -c "$LOAD_CPU" \
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "${1}s" --timeout 5s --latency "${args[@]}" >"$2" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || rc=$?
  forget_pid "$pid"
  return "$rc"
}

TSV=$RUN/results.tsv
COLUMNS_TSV=(round target status requests duration_us p50_us p99_us err_socket err_status cpu_proxy cpu_load
  proc_cpu upstream_cpu threads audit_lines other_proxy other_load tokens_sent tokens_reused tokens_pool
  audit_subjects note)
(IFS=$'\t'; echo "${COLUMNS_TSV[*]}") >"$TSV"
record() { # record ROUND TARGET STATUS NOTE [fields...] (the fields between status and note, in order)
  local round=$1 target=$2 status=$3 note=$4 fields=() i
  shift 4
  fields=("$@")
  for ((i = ${#fields[@]}; i < ${#COLUMNS_TSV[@]} - 4; i++)); do fields+=(-); done
  (IFS=$'\t'; echo "$round"$'\t'"$target"$'\t'"$status"$'\t'"${fields[*]}"$'\t'"${note//$'\t'/ }") >>"$TSV"
}

CLK_TCK=$(getconf CLK_TCK)
FAILED=0

bench_line() { # bench_line PREFIX FILE KEY: one key=value field of wrk's BENCH_RESULT / BENCH_TOKENS line
  sed -n "s/^$1 .*\b$3=\([0-9]*\).*/\1/p" "$2" | head -n 1
}

measure() { # measure ROUND TARGET
  local round=$1 target=$2
  if [[ $target == hfgate-* && $HFGATE_STATUS != ok ]]; then
    record "$round" "$target" skipped "${HFGATE_STATUS#skip:}"
    return 0
  fi
  if [[ $target == bare && $BARE_STATUS != ok ]]; then
    record "$round" "$target" skipped "${BARE_STATUS#skip:}"
    return 0
  fi
  log "round $round: $target"
  if ! start_target "$target" || ! check_target "$target"; then
    log "$target: $FAIL_MSG"
    record "$round" "$target" failed "$FAIL_MSG"
    stop_target
    FAILED=1
    return 0
  fi

  local out=$RUN/wrk-$target-r$round first_token=0
  run_wrk "$WARMUP" "$out.warmup.txt" 0 || { record "$round" "$target" failed "wrk warm-up failed: $(tail -n 3 "$out.warmup.txt" | tr '\n' ' ')"; stop_target; FAILED=1; return 0; }
  if [[ $TARGET_TOKENS == distinct ]]; then
    # The measurement starts where the warm-up stopped: the same process never sees a token twice.
    first_token=$(bench_line BENCH_TOKENS "$out.warmup.txt" next)
    [[ -n $first_token ]] || { record "$round" "$target" failed "no BENCH_TOKENS line in $out.warmup.txt"; stop_target; FAILED=1; return 0; }
  fi

  # CPU accounting over the measurement: both cores from /proc/stat, and what our own processes used
  # (the proxy under test and the upstream on the proxy core; wrk on the load core, counted through
  # this shell's reaped-children times).
  local p0 l0 pr0 up0 ch0 p1 l1 pr1 up1 ch1 threads
  read -r -a p0 <<<"$(cpu_ticks "$PROXY_CPU")"
  read -r -a l0 <<<"$(cpu_ticks "$LOAD_CPU")"
  pr0=$(proc_ticks "$TARGET_PID")
  up0=$(proc_ticks "$UPSTREAM_PID")
  children_ticks
  ch0=$CHILD_TICKS
  if ! run_wrk "$DURATION" "$out.txt" "$first_token"; then
    record "$round" "$target" failed "wrk failed: $(tail -n 3 "$out.txt" | tr '\n' ' ')"
    stop_target; FAILED=1; return 0
  fi
  children_ticks
  ch1=$CHILD_TICKS
  read -r -a p1 <<<"$(cpu_ticks "$PROXY_CPU")"
  read -r -a l1 <<<"$(cpu_ticks "$LOAD_CPU")"
  pr1=$(proc_ticks "$TARGET_PID")
  up1=$(proc_ticks "$UPSTREAM_PID")
  threads=$(thread_count "$TARGET_PID")

  local line
  line=$(grep '^BENCH_RESULT ' "$out.txt" || true)
  [[ -n $line ]] || { record "$round" "$target" failed "no result line in $out.txt"; stop_target; FAILED=1; return 0; }
  local -A r=()
  local kv
  for kv in ${line#BENCH_RESULT }; do r[${kv%%=*}]=${kv#*=}; done

  local cpu_proxy cpu_load proc_cpu upstream_cpu other_proxy other_load ours_proxy sock_err status=ok note=""
  local tokens_sent=- tokens_reused=- tokens_pool=- pool_lines
  pct() { awk -v a="$1" -v t="$2" 'BEGIN { v = t > 0 ? 100 * a / t : 0; printf "%.0f", v < 0 ? 0 : v }'; }
  cpu_proxy=$(pct "$((p1[0] - p0[0]))" "$((p1[1] - p0[1]))")
  cpu_load=$(pct "$((l1[0] - l0[0]))" "$((l1[1] - l0[1]))")
  proc_cpu=$(pct "$((pr1 - pr0))" "$((p1[1] - p0[1]))")
  upstream_cpu=$(pct "$((up1 - up0))" "$((p1[1] - p0[1]))")
  ours_proxy=$((pr1 - pr0 + up1 - up0))
  [[ $target == direct ]] && ours_proxy=$((up1 - up0)) # the measured process is the upstream
  other_proxy=$(pct "$((p1[0] - p0[0] - ours_proxy))" "$((p1[1] - p0[1]))")
  other_load=$(pct "$((l1[0] - l0[0] - (ch1 - ch0)))" "$((l1[1] - l0[1]))")
  sock_err=$((r[err_connect] + r[err_read] + r[err_write] + r[err_timeout]))
  # Busy time on a core that none of our processes accounts for was someone else's.
  if ((other_proxy > 15)); then
    note="other processes used ~${other_proxy} % of CPU $PROXY_CPU"
  fi
  if ((other_load > 15)); then
    note="${note:+$note; }other processes used ~${other_load} % of CPU $LOAD_CPU"
  fi
  if ((r[err_status] > 0)); then
    status=invalid
    note="${r[err_status]} non-2xx responses under load${note:+; $note}"
  elif ((sock_err > 0)); then
    note="$sock_err socket errors${note:+; $note}"
  fi
  if [[ $TARGET_TOKENS == distinct ]]; then
    tokens_sent=$(bench_line BENCH_TOKENS "$out.txt" sent)
    tokens_reused=$(bench_line BENCH_TOKENS "$out.txt" reused)
    tokens_pool=$(bench_line BENCH_TOKENS "$out.txt" pool)
    if [[ -z $tokens_sent || -z $tokens_reused ]]; then
      tokens_sent=- tokens_reused=-
      note="${note:+$note; }no BENCH_TOKENS line in $out.txt"
    elif ((tokens_reused > 0)); then
      if [[ $target == haproxy-* ]]; then # it verifies every token every time: reuse changes nothing
        note="${note:+$note; }$tokens_reused of $tokens_sent requests reused a token (pool $tokens_pool; HAProxy keeps no token cache)"
      else
        note="${note:+$note; }$tokens_reused of $tokens_sent requests reused a token (pool $tokens_pool; raise BENCH_DISTINCT_TOKENS)"
      fi
    fi
  fi

  local audit_lines=- audit_subjects=-
  if [[ $target == hfgate-* ]]; then
    stop_target # flushes the audit sink before counting
    if [[ -f $AUDIT_PATH ]]; then
      audit_lines=$(wc -l <"$AUDIT_PATH")
      if [[ $TARGET_TOKENS == distinct ]]; then
        # Each pool token has its own sub: hfgate's own record of how many different tokens it
        # authenticated, against how many requests carried a pool token (warm-up included).
        read -r pool_lines audit_subjects < <(awk -v prefix="bench-$TARGET_TOKEN_STEM-" '
          { i = index($0, "\"subject\":\"" prefix); if (!i) next
            s = substr($0, i + 11); s = substr(s, 1, index(s, "\"") - 1); n++; if (!(s in seen)) { seen[s]; d++ } }
          END { print n + 0, d + 0 }' "$AUDIT_PATH")
        if ((audit_subjects < pool_lines)); then
          note="${note:+$note; }the audit shows $pool_lines pool-token requests from only $audit_subjects tokens"
        fi
      fi
      # Keep a sample for inspection, not hundreds of megabytes.
      head -n 20 "$AUDIT_PATH" >"$RUN/audit-$target.sample.jsonl" || true
      rm -f "$AUDIT_PATH"
      if ((audit_lines < r[requests])); then
        note="${note:+$note; }audit has $audit_lines lines for ${r[requests]} measured requests"
      fi
    else
      audit_lines=0
      note="${note:+$note; }no audit file at $AUDIT_PATH"
    fi
  else
    stop_target
  fi
  record "$round" "$target" "$status" "$note" "${r[requests]}" "${r[duration_us]}" "${r[p50_us]}" "${r[p99_us]}" \
    "$sock_err" "${r[err_status]}" "$cpu_proxy" "$cpu_load" "$proc_cpu" "$upstream_cpu" "$threads" "$audit_lines" \
    "$other_proxy" "$other_load" "$tokens_sent" "$tokens_reused" "$tokens_pool" "$audit_subjects"
  log "$target: $(awk -v n="${r[requests]}" -v us="${r[duration_us]}" 'BEGIN { printf "%.0f", n / (us / 1e6) }') req/s, p50 $((r[p50_us])) us, p99 $((r[p99_us])) us${note:+ ($note)}"
}

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# How busy the machine is without us: one second of all CPUs, before the first target starts.
read -r -a i0 <<<"$(awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat)"
sleep 1
read -r -a i1 <<<"$(awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat)"
IDLE_BUSY=$(((i1[0] - i0[0]) * 100 / (i1[1] - i0[1] > 0 ? i1[1] - i0[1] : 1)))
((IDLE_BUSY <= 10)) \
  || log "warning: the machine is ${IDLE_BUSY} % busy before the run; other processes will skew the numbers"
for ((round = 1; round <= ROUNDS; round++)); do
  for target in "${TARGETS[@]}"; do
    measure "$round" "$target"
  done
done

# ---------------------------------------------------------------- report

first_line() { local out; out=$("$@" 2>&1 || true); echo "${out%%$'\n'*}"; }
META=$RUN/meta.txt
{
  echo "date=$STARTED"
  echo "host=$(uname -srm)"
  echo "cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n1)"
  echo "nproc=$ncpu"
  echo "idle=${IDLE_BUSY} % of all CPUs (1 s sample)"
  echo "nginx=$(first_line nginx -v)"
  echo "haproxy=$(first_line haproxy -v)"
  echo "wrk=$(first_line wrk -v)"
  echo "openssl=$(first_line openssl version)"
  if [[ $HFGATE_STATUS == ok ]] && wants hfgate; then
    echo "hfgate=$(first_line "$HFGATE" --version) ($HFGATE, built $(date -u -r "$HFGATE" +%Y-%m-%dT%H:%M:%SZ))"
  fi
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)
  [[ -z $(git -C "$REPO" status --porcelain 2>/dev/null || true) ]] || commit+=" (uncommitted changes)"
  echo "commit=$commit"
  echo "load=wrk -t $THREADS -c $CONNECTIONS, ${WARMUP} s warm-up + ${DURATION} s measured per target, $ROUNDS round(s)"
  echo "pinning=proxy under test and the upstream on CPU $PROXY_CPU; wrk alone on CPU $LOAD_CPU"
  if ((${#POOL_STEMS[@]})); then
    echo "tokens=distinct-token targets: pools of $(for stem in "${POOL_STEMS[@]}"; do
      printf '%s %s, ' "$(wc -l <"$POOL_DIR/$stem-distinct.txt")" "${stem^^}"; done | sed 's/, $//') tokens${POOL_SECONDS:+ (signed in $POOL_SECONDS s this run)}"
  fi
} >"$META"

stamp=$(date -u +%Y%m%d-%H%M%S)
python3 "$BENCH_DIR/lib/report.py" "$TSV" "$META" | tee "$RESULTS_DIR/latest.md"
cp "$RESULTS_DIR/latest.md" "$RESULTS_DIR/$stamp.md"
cp "$TSV" "$RESULTS_DIR/$stamp.tsv"
log "written: $RESULTS_DIR/latest.md (raw rows: $RESULTS_DIR/$stamp.tsv; logs: $RUN)"
((FAILED == 0)) || die "at least one target failed its checks; its row says why"
