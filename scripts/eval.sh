#!/usr/bin/env bash
# The main job: install what is missing, build kvcache-eval, and run the default evaluation of every policy on the
# bundled tinylm-gqa at budgets of 10%, 25% and 50% (language modelling, pass-key retrieval, a long stream; about
# 3.5 minutes on one core of the development machine). Markdown tables on stdout, progress on stderr; CSV files and,
# where gnuplot is installed, plots in build/eval/. Extra arguments go to kvcache-eval (options at the top of
# examples/eval/kvcache_eval.cpp). The full run of docs/evaluation.md is scripts/eval_full.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --workflow --preset eval >/dev/null
out=build/eval
./build/release/examples/kvcache-eval --out "$out" "$@"
if command -v gnuplot >/dev/null; then
  gnuplot -e "dir='$out'; stream_budget=0.5" docs/plots.gp && echo "plots: $out/*.svg" >&2
fi
