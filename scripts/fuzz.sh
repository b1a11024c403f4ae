#!/usr/bin/env bash
# Builds libFuzzer targets (CMake preset "fuzz": clang, ASan, UBSan) and runs them side by side, each from its
# committed corpus (tests/fuzz/corpus/<target>) for SECONDS (default 60), or for FUZZ_RUNS executions when that is set.
# TARGETS default to both: safetensors and api_sequence.
# New inputs go to build/fuzz/work/<target>, findings (crash-*, leak-*, timeout-*, oom-*) to
# build/fuzz/findings/<target>; any finding fails the script.
#   scripts/fuzz.sh                    60 s per target
#   scripts/fuzz.sh 60 safetensors     one target (what CI runs: the API-sequence target's build takes 3 - 7 minutes)
#   scripts/fuzz.sh 1800               half an hour per target
#   FUZZ_RUNS=10000000 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(safetensors api_sequence)
exes=()
for t in "${targets[@]}"; do exes+=("${t}_fuzzer"); done
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz --target "${exes[@]}"

declare -A max_len=([safetensors]=4096 [api_sequence]=1024)
pids=()
for t in "${targets[@]}"; do
  work=build/fuzz/work/$t findings=build/fuzz/findings/$t
  mkdir -p "$work" "$findings"
  limit=(-max_total_time="$seconds")
  [[ -n ${FUZZ_RUNS:-} ]] && limit=(-runs="$FUZZ_RUNS")
  build/fuzz/tests/fuzz/${t}_fuzzer "${limit[@]}" -max_len="${max_len[$t]}" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$findings/" "$work" "tests/fuzz/corpus/$t" >"build/fuzz/$t.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then
    echo "fuzz $t: $(grep -E '^stat::number_of_executed_units' "build/fuzz/$t.log" | awk '{print $2}') executions," \
      "no finding"
  else
    status=1
    echo "fuzz $t: FINDING (build/fuzz/$t.log, build/fuzz/findings/$t):" >&2
    grep -E 'ERROR|check failed|runtime error|SUMMARY' "build/fuzz/$t.log" | head -5 >&2 || true
  fi
done
exit $status
