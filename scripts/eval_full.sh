#!/usr/bin/env bash
# The full evaluation behind docs/evaluation.md and the README's table and plot: every policy at 10%, 25% and 50%,
# 4 language-modelling windows of 2048 bytes, pass-key prompts of 1024 and 2048 bytes (2 per depth), 4 streams of
# 8192 bytes. About 35 minutes on one core of the development machine for tinylm-gqa. Writes docs/eval/ (CSV, SVG,
# table.md); with a first argument mla or yoco, runs that bundled model into docs/eval/mla or docs/eval/yoco.
#   scripts/eval_full.sh [gqa|mla|yoco] [more kvcache-eval options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v gnuplot >/dev/null; then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gnuplot-nox >/dev/null
fi
cmake --workflow --preset eval >/dev/null
model=gqa
out=docs/eval
if [[ $# -gt 0 && ( $1 == gqa || $1 == mla || $1 == yoco ) ]]; then
  model=$1
  shift
  if [[ $model != gqa ]]; then out=docs/eval/$model; fi
fi
stream_policies=full,recompute,streaming_llm_original,streaming_llm,h2o,vatp,l2_norm
mkdir -p "$out"
./build/release/examples/kvcache-eval --model "$model" --task all --sequences 4 --length 2048 --prefix 512 --contexts 1024,2048 \
  --prompts 2 --streams 4 --stream-policies "$stream_policies" \
  --stream-budgets 0.1,0.25,0.5 --out "$out" "$@" | tee "$out/table.md"
# Many sequences on one 64 MiB pool (about 7 minutes on 2 cores); YOCO keeps its rings in the engine and cannot serve.
if [[ $model != yoco ]]; then
  ./build/release/examples/kvcache-eval --model "$model" --task serve --out "$out" | tee "$out/serve.md"
fi
gnuplot -e "dir='$out'; model='tinylm-$model'" docs/plots.gp
