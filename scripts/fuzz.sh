#!/usr/bin/env bash
# Runs hfgate's fuzz targets (fuzz/, cargo-fuzz) for a bounded time each.
#
#   scripts/fuzz.sh                       every target, FUZZ_SECONDS each (default 8)
#   scripts/fuzz.sh token path            some targets
#   FUZZ_SECONDS=600 scripts/fuzz.sh      a long run
#   FUZZ_ARGS="-jobs=2 -workers=2" ...    extra libFuzzer options
#   FUZZ_RELEASE=1                        optimized build (slower to build, faster per input)
#
# Each run starts from the committed seeds (fuzz/corpus/<target>/) and crash reproducers
# (fuzz/regressions/<target>/); inputs it finds go to fuzz/corpus-local/<target>/, which git ignores, so a
# run never changes the tree. A crash, a failed check, a hang or a memory blow-up fails the script and
# names the reproducer to keep in fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-8}"
all_targets=(token path classify config shorthand cookie)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
for target in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $target "* ]] || { echo "unknown fuzz target '$target' (${all_targets[*]})" >&2; exit 2; }
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes unstable rustc flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them. No
# sanitizer: hfgate has no unsafe code, and the build is faster without one. The dev profile
# (fuzz/Cargo.toml) trades speed per input for a build that fits in the test command; FUZZ_RELEASE=1
# builds optimized, for long runs. FUZZ_TARGET_DIR keeps the build somewhere that outlives the checkout.
export RUSTC_BOOTSTRAP=1
build=(--sanitizer none --codegen-units 16)
if [ "${FUZZ_RELEASE:-0}" = 1 ]; then build+=(--release); else build+=(--dev); fi
[ -z "${FUZZ_TARGET_DIR:-}" ] || build+=(--target-dir "$FUZZ_TARGET_DIR")

echo "==> building fuzz targets"
cargo fuzz build "${build[@]}"

logs=fuzz/target/logs
mkdir -p "$logs"
passed=0
failed=()
for target in "${targets[@]}"; do
  local_corpus="fuzz/corpus-local/$target"
  mkdir -p "$local_corpus" "fuzz/corpus/$target" "fuzz/regressions/$target" "fuzz/artifacts/$target"
  options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ -f "fuzz/dict/$target.dict" ] && options+=(-dict="fuzz/dict/$target.dict")
  # shellcheck disable=SC2206 # FUZZ_ARGS is a list of options, split on purpose.
  options+=(${FUZZ_ARGS:-})
  log="$logs/$target.log"
  echo "==> fuzzing $target for ${seconds}s"
  if cargo fuzz run "${build[@]}" "$target" "$local_corpus" "fuzz/corpus/$target" "fuzz/regressions/$target" \
    -- "${options[@]}" >"$log" 2>&1; then
    passed=$((passed + 1))
    awk '/^stat::number_of_executed_units:/ { runs = $2 } /^stat::new_units_added:/ { found = $2 }
      END { printf "    %s inputs run, %s new ones kept in fuzz/corpus-local/\n", runs, found }' "$log"
  else
    failed+=("$target")
    tail -n 60 "$log"
    reproducer=$(grep -oE 'fuzz/artifacts/[^ ]+' "$log" | tail -n 1 || true)
    [ -n "$reproducer" ] ||
      reproducer=$(find "fuzz/artifacts/$target" -type f -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
    echo "!! fuzz target $target failed; reproducer: ${reproducer:-none written (see $log)}"
    echo "!! replay: cargo fuzz run ${build[*]} $target $reproducer"
    echo "!! keep it: cp $reproducer fuzz/regressions/$target/  (tests/fuzz_corpus.rs replays it)"
  fi
done

echo "fuzz: $passed passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
