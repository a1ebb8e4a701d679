#!/usr/bin/env bash
# Instruction counts of hfgate's per-request operations (benches/instructions.rs), counted by valgrind's
# callgrind and compared with bench/instructions.baseline. Counts do not depend on how busy the machine
# is, so a regression shows up as a number, not as noise. See bench/README.md, "Instruction counts".
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
BASELINE=$BENCH_DIR/instructions.baseline

usage() {
  cat <<EOF
Usage: bench/instructions.sh [--save] [--check] [--threshold PCT] [--no-build] [--list] [OPERATION...]

Builds the instruction benchmark (cargo bench --bench instructions --no-run), runs it once under
valgrind --tool=callgrind, collecting only inside its measure_<operation> functions, and prints
instructions per operation next to bench/instructions.baseline.

  --save           write the counts to bench/instructions.baseline (all operations only)
  --check          exit 1 when an operation's count grew more than the threshold over the baseline
  --threshold PCT  growth --check tolerates, in percent [\$BENCH_INSTR_THRESHOLD or 5]
  --no-build       use the benchmark binary cargo built last
  --list           print the operations (name, iterations, what one iteration does) and stop
  OPERATION        only these (default: all)

Environment: BENCH_WORKDIR [bench/.work] (the callgrind file goes to <workdir>/instructions/).
EOF
}

log() { printf '[instructions %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 2; }

SAVE=0 CHECK=0 BUILD=1 LIST=0 OPS=()
THRESHOLD=${BENCH_INSTR_THRESHOLD:-5}
while (($#)); do
  case "$1" in
    --save) SAVE=1 ;;
    --check) CHECK=1 ;;
    --no-build) BUILD=0 ;;
    --list) LIST=1 ;;
    --threshold) THRESHOLD=${2:?--threshold needs a percentage}; shift ;;
    --threshold=*) THRESHOLD=${1#--threshold=} ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "instructions.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) OPS+=("$1") ;;
  esac
  shift
done
[[ $THRESHOLD =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--threshold must be a percentage, got '$THRESHOLD'"
((SAVE == 0 || ${#OPS[@]} == 0)) || die "--save records every operation; run it without operation names"
((CHECK == 0 || SAVE == 1)) || [[ -f $BASELINE ]] || die "--check needs $BASELINE (make it with --save)"

for cmd in valgrind python3 cargo; do
  command -v "$cmd" >/dev/null 2>&1 || die "$cmd is needed (Debian: apt-get install valgrind python3; cargo from rustup)"
done

PARENT=${BENCH_WORKDIR:-$BENCH_DIR/.work}
# A work directory made here is marked like bench/run.sh marks its own, so run.sh may empty it later.
[[ -e $PARENT ]] || { mkdir -p "$PARENT" && touch "$PARENT/.hfgate-bench"; }
WORK=$PARENT/instructions
mkdir -p "$WORK"

# The binary cargo builds for `cargo bench --bench instructions` (bench profile: release + line tables,
# so callgrind sees the function names).
if ((BUILD)); then
  build_args=(bench --bench instructions --no-run --message-format=json-render-diagnostics)
  log "building (cargo ${build_args[*]})"
  (cd "$REPO" && nice cargo "${build_args[@]}") >"$WORK/build.json" || die "the build failed (see the messages above)"
  BIN=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "instructions" \
            and msg.get("executable"):
        print(msg["executable"])
' "$WORK/build.json" | tail -n 1)
  [[ -x ${BIN:-} ]] || die "cargo reported no instructions benchmark executable (see $WORK/build.json)"
else
  # The newest benchmark binary of the bench profile (cargo keeps one per build hash).
  BIN=$(find "${CARGO_TARGET_DIR:-$REPO/target}/release/deps" -maxdepth 1 -type f -name 'instructions-*' \
    -executable -printf '%T@ %p\n' 2>/dev/null | sort -n | tail -n 1 | cut -d' ' -f2-)
  [[ -n $BIN ]] || die "--no-build: no benchmark binary yet; run once without --no-build"
  log "using $BIN"
fi

if ((LIST)); then
  "$BIN" --list
  exit 0
fi

# Operation names and iteration counts, from the binary itself.
declare -A ITERATIONS=() WHAT=()
ALL_OPS=()
while read -r name iterations what; do
  ALL_OPS+=("$name")
  ITERATIONS[$name]=$iterations
  WHAT[$name]=$what
done < <("$BIN" --list)
((${#OPS[@]})) || OPS=("${ALL_OPS[@]}")
for op in "${OPS[@]}"; do
  [[ -n ${ITERATIONS[$op]:-} ]] || die "unknown operation '$op'; known: ${ALL_OPS[*]}"
done

# One run; collection is on only inside the measure_* functions (which never call each other), so each
# function's inclusive count is exactly its operation, N times.
toggles=()
for op in "${OPS[@]}"; do toggles+=("--toggle-collect=instructions::measure_$op"); done
OUT=$WORK/callgrind.out
rm -f "$OUT"
log "running ${#OPS[@]} operation(s) under callgrind (set-up included, this takes a little while)"
if ! valgrind --tool=callgrind --callgrind-out-file="$OUT" --collect-atstart=no "${toggles[@]}" \
  "$BIN" "${OPS[@]}" >"$WORK/program.txt" 2>"$WORK/valgrind.txt"; then
  die "the benchmark failed under valgrind: $(grep -v '^==' "$WORK/valgrind.txt" | tail -n 5 | tr '\n' ' ') (log: $WORK/valgrind.txt)"
fi

declare -A TOTAL=()
while read -r name count; do
  TOTAL[${name#instructions::measure_}]=$count
done < <(python3 "$BENCH_DIR/lib/callgrind.py" "$OUT" "${OPS[@]/#/instructions::measure_}")
declare -A RAN=()
while read -r _ name iterations _; do RAN[$name]=$iterations; done < <(grep '^measured ' "$WORK/program.txt")

declare -A BASE=()
if [[ -f $BASELINE ]]; then
  while read -r name count; do
    [[ -z $name || $name == \#* ]] || BASE[$name]=$count
  done <"$BASELINE"
fi

thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }
declare -A NOW=()
GREW=()
printf '%-32s %10s %16s %16s %9s\n' operation iterations instructions/op baseline change
for op in "${OPS[@]}"; do
  [[ ${RAN[$op]:-} == "${ITERATIONS[$op]}" ]] || die "operation $op did not run (output: $WORK/program.txt)"
  ((TOTAL[$op] > 0)) || die "callgrind counted nothing in measure_$op (file: $OUT)"
  NOW[$op]=$(((TOTAL[$op] + ITERATIONS[$op] / 2) / ITERATIONS[$op]))
  base=${BASE[$op]:-} change=new
  if [[ -n $base ]]; then
    change=$(awk -v a="${NOW[$op]}" -v b="$base" 'BEGIN { printf "%+.1f %%", (b > 0 ? 100 * (a - b) / b : 0) }')
    if awk -v a="${NOW[$op]}" -v b="$base" -v t="$THRESHOLD" 'BEGIN { exit !(b > 0 && 100 * (a - b) / b > t) }'; then
      GREW+=("$op ($change)")
    fi
  fi
  printf '%-32s %10s %16s %16s %9s\n' "$op" "${ITERATIONS[$op]}" "$(thousands "${NOW[$op]}")" \
    "$(thousands "${base:--}")" "$change"
done
echo
for op in "${OPS[@]}"; do printf '  %-32s %s\n' "$op" "${WHAT[$op]}"; done
echo
echo "Counts from valgrind's CPU model, which lacks some instruction-set extensions (SHA, AVX-512), so"
echo "crypto takes its portable paths: compare counts with counts, never with wall-clock time."

if ((SAVE)); then
  {
    echo "# Instructions per operation, from bench/instructions.sh --save (benches/instructions.rs)."
    echo "# $(rustc --version 2>/dev/null || echo rustc ?); $(valgrind --version); $(uname -m);" \
      "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)"
    for op in "${OPS[@]}"; do echo "$op ${NOW[$op]}"; done
  } >"$BASELINE"
  log "written: $BASELINE"
fi

if ((${#GREW[@]})); then
  log "grew more than $THRESHOLD % over the baseline: ${GREW[*]}"
  ((CHECK == 0)) || exit 1
fi
