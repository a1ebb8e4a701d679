#!/usr/bin/env bash
# Soak: hfgate under mixed valid, invalid, refused and streaming traffic for N minutes, with the IdP
# rotating keys and the upstream failing now and then (bench/soak/*.mjs). Fails on any unexpected
# outcome, memory growth after the warm-up, or an audit file that does not hold one line per request.
# See bench/README.md, "Soak". Loopback only; everything started is stopped on exit.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

usage() {
  cat <<EOF
Usage: bench/soak.sh [--minutes N] [--concurrency N] [--build]

  --minutes N      load duration, minutes; decimals allowed (0.5 for a smoke run) [10]
  --concurrency N  concurrent client connections [128]
  --build          run 'cargo build --release' first (default: only when the binary is missing)

Environment: BENCH_PROXY_CPU [0] (hfgate), BENCH_LOAD_CPU [1] (IdP, upstream and clients: one Node.js
process), SOAK_WORKDIR [bench/soak/.work], HFGATE_BIN [target/release/hfgate].
Output: a markdown report on stdout and in bench/results/soak-latest.md; exit status 0 only if it passed.
EOF
}

MINUTES=10 CONCURRENCY=128 BUILD=0
while (($#)); do
  case "$1" in
    --minutes) MINUTES=${2:-}; shift ;;
    --concurrency) CONCURRENCY=${2:-}; shift ;;
    --build) BUILD=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "soak.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ $MINUTES =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! python3 -c "import sys; sys.exit(0 if 0 < float('$MINUTES') <= 24*60 else 1)"; then
  echo "soak.sh: --minutes must be a number of minutes above 0 (at most a day), got '$MINUTES'" >&2
  exit 2
fi
[[ $CONCURRENCY =~ ^[0-9]+$ && $CONCURRENCY -ge 1 && $CONCURRENCY -le 4096 ]] ||
  { echo "soak.sh: --concurrency must be between 1 and 4096, got '$CONCURRENCY'" >&2; exit 2; }

PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
# Not under bench/.work, which bench/run.sh empties whenever it starts.
WORK=${SOAK_WORKDIR:-$BENCH_DIR/soak/.work}
HFGATE=${HFGATE_BIN:-$REPO/target/release/hfgate}
RESULTS_DIR=$BENCH_DIR/results

log() { printf '[soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for cmd in node taskset python3 timeout; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is required"
done
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
((NODE_MAJOR >= 18)) || die "Node.js 18 or newer is required (found $(node --version))"

cd "$REPO"
if ((BUILD)) || [[ ! -x $HFGATE ]]; then
  log "building hfgate (cargo build --release)"
  nice cargo build --release --quiet || die "cargo build --release failed"
fi
[[ -x $HFGATE ]] || die "no hfgate binary at $HFGATE"
if [[ -n $(find "$REPO/src" -newer "$HFGATE" -name '*.rs' -print -quit) ]]; then
  log "warning: $HFGATE is older than src/ (pass --build to rebuild)"
fi

# The work directory holds only what the soak writes; refuse to empty anything else.
if [[ -d $WORK && -n $(ls -A "$WORK") && ! -f $WORK/.soak ]]; then
  die "$WORK is not empty and was not made by the soak; set SOAK_WORKDIR to an empty directory"
fi
rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS_DIR"
touch "$WORK/.soak"

# Sockets: the clients' and the upstream's in hfgate, and the same on the load side.
if (($(ulimit -n) < CONCURRENCY * 4 + 1024)); then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

NODE_PID=""
cleanup() {
  local pid
  [[ -z $NODE_PID ]] || kill -TERM "$NODE_PID" 2>/dev/null || true
  pid=$(cat "$WORK/hfgate.pid" 2>/dev/null) || return 0
  if [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == hfgate ]]; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Load time, the checks before it (a hang and a stall take seconds), the drain and hfgate's stop (at most
# 45 s), reading the audit file, and slack for a loaded machine.
LIMIT=$(python3 -c "print(int(float('$MINUTES') * 60) + 240)")
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REPORT=$RESULTS_DIR/soak-$STAMP.md
log "soak: $MINUTES min, $CONCURRENCY concurrent clients; hfgate on CPU $PROXY_CPU, load on CPU $LOAD_CPU (at most ${LIMIT}s)"
{
  echo "# hfgate soak, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs, Linux $(uname -r); Node.js $(node --version)"
  echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- hfgate: $("$HFGATE" --version 2>/dev/null | head -n1 || echo unknown), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  echo
} >"$REPORT"
set +e
timeout --kill-after=15 "$LIMIT" taskset -c "$LOAD_CPU" node --max-old-space-size=4096 "$BENCH_DIR/soak/soak.mjs" \
  --minutes "$MINUTES" --concurrency "$CONCURRENCY" --workdir "$WORK" --hfgate "$HFGATE" --hfgate-cpu "$PROXY_CPU" \
  >>"$REPORT" &
NODE_PID=$!
wait "$NODE_PID"
STATUS=$?
NODE_PID=""
set -e
cp "$REPORT" "$RESULTS_DIR/soak-latest.md"
cat "$REPORT"
case $STATUS in
  0) log "passed; report: $REPORT (audit file, hfgate's log and the memory series in $WORK)" ;;
  124 | 137) die "the soak overran its ${LIMIT}s bound and was stopped" ;;
  *) die "the soak failed (exit $STATUS); report: $REPORT, hfgate's log: $WORK/hfgate.log" ;;
esac
