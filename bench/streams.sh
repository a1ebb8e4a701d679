#!/usr/bin/env bash
# Streaming benchmark: N concurrent SSE streams directly and through hfgate (benches/streams.rs).
# Builds both binaries, pins hfgate and the benchmark to different cores, prints a markdown report and
# keeps it in bench/results/. See bench/README.md, "Streaming". Loopback only; bounded.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

usage() {
  cat <<EOF
Usage: bench/streams.sh [--streams N] [--interval-ms MS] [--warmup S] [--duration S] [--rounds R] [--realtime] [--no-build]

Opens N concurrent server-sent-event streams to a local upstream, first directly, then through hfgate,
R times in alternation, and reports per-event latency (p50/p99/p99.9/max) of both paths, what hfgate
adds (median of the rounds), and hfgate's resident memory idle and with all N streams open.

  --streams N       concurrent streams per path [1000]
  --interval-ms MS  time between two events of one stream [100], i.e. N*1000/MS events/s in total
  --warmup S        seconds after all streams are open, discarded [5]
  --duration S      seconds measured per path and round [15]
  --rounds R        rounds of (direct, through hfgate) [3]
  --realtime        run hfgate with SCHED_FIFO priority (chrt -f 10): other processes on its core then
                    cannot delay its wake-ups, which separates the machine's scheduling delay from
                    hfgate's own latency (needs root or CAP_SYS_NICE)
  --no-build        use the binaries as built (default: cargo build first, which is quick when current)

Environment: BENCH_PROXY_CPU [0] (hfgate), BENCH_LOAD_CPU [1] (the benchmark: upstream and clients),
STREAMS_WORKDIR [\$TMPDIR/hfgate-streams], HFGATE_BIN [target/release/hfgate].
EOF
}

STREAMS=1000 INTERVAL_MS=100 WARMUP=5 DURATION=15 ROUNDS=3 BUILD=1 REALTIME=()
positive() { # positive NAME VALUE
  [[ $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || { echo "streams.sh: $1 must be a positive integer, got '$2'" >&2; exit 2; }
  echo "$2"
}
while (($#)); do
  case "$1" in
    --streams) STREAMS=$(positive --streams "${2:-}"); shift ;;
    --interval-ms) INTERVAL_MS=$(positive --interval-ms "${2:-}"); shift ;;
    --warmup) WARMUP=$(positive --warmup "${2:-}"); shift ;;
    --duration) DURATION=$(positive --duration "${2:-}"); shift ;;
    --rounds) ROUNDS=$(positive --rounds "${2:-}"); shift ;;
    --realtime) REALTIME=(--hfgate-realtime) ;;
    --no-build) BUILD=0 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "streams.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
# Not under bench/.work, which bench/run.sh empties whenever it starts.
WORK=${STREAMS_WORKDIR:-${TMPDIR:-/tmp}/hfgate-streams}
HFGATE=${HFGATE_BIN:-$REPO/target/release/hfgate}
RESULTS_DIR=$BENCH_DIR/results

log() { printf '[streams %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

NEEDED=(cargo taskset python3)
((${#REALTIME[@]} == 0)) || NEEDED+=(chrt)
for cmd in "${NEEDED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is required"
done
CPUS=$(nproc)
((CPUS >= 2)) || log "warning: only $CPUS CPU: hfgate and the benchmark share it"
[[ $PROXY_CPU != "$LOAD_CPU" ]] || log "warning: BENCH_PROXY_CPU and BENCH_LOAD_CPU are the same core"

cd "$REPO"
if ((BUILD)); then
  log "building hfgate (cargo build --release)"
  nice cargo build --release --quiet || die "cargo build --release failed"
fi
# The benchmark binary's path comes from cargo's own build report.
log "building the benchmark (cargo bench --bench streams --no-run)"
BENCH_EXE=$(nice cargo bench --bench streams --no-run --message-format=json --quiet 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "streams" and msg.get("executable"):
        print(msg["executable"])
') || true
[[ -n $BENCH_EXE && -x $BENCH_EXE ]] || die "cargo bench --bench streams --no-run did not produce the benchmark (run it to see why)"
[[ -x $HFGATE ]] || die "no hfgate binary at $HFGATE"

# Per stream: one client socket and one upstream socket here, two sockets in hfgate.
NEED_FILES=$((STREAMS * 2 + 256))
if (($(ulimit -n) < NEED_FILES)); then
  HARD=$(ulimit -Hn)
  [[ $HARD == unlimited ]] || ((HARD >= NEED_FILES)) || die "$STREAMS streams need $NEED_FILES open files; the hard limit is $HARD"
  ulimit -n "$NEED_FILES"
fi

mkdir -p "$WORK" "$RESULTS_DIR"
rm -f "$WORK/hfgate.pid"
cleanup() {
  # The benchmark stops its hfgate itself; this covers it being killed first.
  local pid
  pid=$(cat "$WORK/hfgate.pid" 2>/dev/null) || return 0
  if [[ -n $pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == hfgate ]]; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REPORT=$RESULTS_DIR/streams-$STAMP.md
# Per round two paths of (opening + warm-up + measurement + 2 s), hfgate's start and stop, and slack.
LIMIT=$(((WARMUP + DURATION + 10) * 2 * ROUNDS + 240))
log "running: $STREAMS streams, one event per ${INTERVAL_MS} ms each; hfgate on CPU $PROXY_CPU, benchmark on CPU $LOAD_CPU (at most ${LIMIT}s)"
{
  echo "# hfgate streaming benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $CPUS CPUs, Linux $(uname -r)"
  echo "- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- hfgate: $("$HFGATE" --version 2>/dev/null | head -n1 || echo unknown), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  echo "- hfgate pinned to CPU $PROXY_CPU$( ((${#REALTIME[@]} == 0)) || echo ' with SCHED_FIFO priority 10'); upstream and clients (one process) to CPU $LOAD_CPU"
  echo
} >"$REPORT"
set +e
timeout --kill-after=10 "$LIMIT" taskset -c "$LOAD_CPU" "$BENCH_EXE" \
  --streams "$STREAMS" --interval-ms "$INTERVAL_MS" --warmup "$WARMUP" --duration "$DURATION" --rounds "$ROUNDS" \
  --hfgate "$HFGATE" --hfgate-cpu "$PROXY_CPU" "${REALTIME[@]}" --workdir "$WORK" >>"$REPORT"
STATUS=$?
set -e
cp "$REPORT" "$RESULTS_DIR/streams-latest.md"
cat "$REPORT"
case $STATUS in
  0) log "report: $REPORT" ;;
  124 | 137) die "the benchmark did not finish within ${LIMIT}s (hfgate's log: $WORK/hfgate.log)" ;;
  3) die "events were lost or hfgate's audit count is wrong (see above; hfgate's log: $WORK/hfgate.log)" ;;
  *) die "the benchmark failed (exit $STATUS; hfgate's log: $WORK/hfgate.log)" ;;
esac
