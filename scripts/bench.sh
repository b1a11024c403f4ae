#!/usr/bin/env bash
# The main job (until the evaluation lands): install what is missing, build the benches, and run decode attention
# on a representative shape (32k-token context, head dim 128, f16 cache, 8 KV heads, groups 1/4/8, every ISA, one
# thread), reporting the fraction of this machine's measured read bandwidth. Extra arguments go to decode_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --workflow --preset bench >/dev/null
./build/release/bench/decode_bench --threads=1 \
  --benchmark_filter='Decode/f16/d128/ctx32768/g[148]/.*/threads1' \
  --benchmark_counters_tabular=true "$@"
