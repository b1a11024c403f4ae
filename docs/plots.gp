# Renders the CSV files of kvcache-eval --out DIR into SVG plots in the same directory:
#   gnuplot -e "dir='build/eval'" docs/plots.gp        (scripts/eval.sh and scripts/eval_full.sh call it)
# quality_vs_budget.svg: bits per byte against the KV budget per policy (language modelling), Full as a line;
# passkey_vs_budget.svg: pass-key accuracy against the budget, question-aware and question-agnostic, context `ctx`;
# stream.svg: bits per byte per 1k segment of the long streams, at the budget `stream_budget`;
# serve.svg (when serve.csv exists): sequences that fit one block pool against bits per byte, per policy.
if (!exists("dir")) dir = "docs/eval"
if (!exists("ctx")) ctx = 1024
if (!exists("stream_budget")) stream_budget = 0.25
if (!exists("model")) model = "tinylm-gqa"
set datafile separator ","
set termoption noenhanced
set terminal svg size 760,440 dynamic font "Helvetica,13"
set key outside right top box
set grid
policies = "streaming_llm streaming_llm_original h2o vatp l2_norm snapkv snapkv_k15"

# --- language modelling ---
stats dir."/lm.csv" using (strcol(1) eq "full" ? $3 : 1/0) nooutput
full = STATS_max
set output dir."/quality_vs_budget.svg"
set title sprintf("%s, language modelling: bits per byte against the KV budget", model)
set xlabel "KV budget, % of the window (rows per layer and KV head)"
set ylabel "bits per byte (decoded bytes)"
set xrange [0:55]
set yrange [full * 0.98 : full * 1.35]
set label 1 "policies above the top are off the scale (table)" at graph 0.02, graph 0.96 font ",10"
plot full with lines dashtype 2 linewidth 2 linecolor "black" title "full", \
     for [p in policies] dir."/lm.csv" using (strcol(1) eq p ? $2 * 100 : 1/0):3 with linespoints linewidth 2 \
     pointtype 7 title p
unset label 1

# --- pass-key retrieval ---
set output dir."/passkey_vs_budget.svg"
set terminal svg size 1000,420 dynamic font "Helvetica,13"
set termoption noenhanced
set multiplot layout 1,2 title sprintf("%s, pass-key retrieval at %d bytes: accuracy against the KV budget", model, ctx)
set yrange [-0.05:1.05]
set xrange [0:55]
set ylabel "accuracy"
set key inside left top box font ",10"
do for [setting in "question-aware question-agnostic"] {
  set title setting
  plot for [p in policies] dir."/passkey.csv" using \
       ((strcol(1) eq p && strcol(3) eq setting && $4 == ctx) ? $2 * 100 : 1/0):7 with linespoints linewidth 2 \
       pointtype 7 title p
}
unset multiplot

# --- long streams ---
set terminal svg size 760,440 dynamic font "Helvetica,13"
set termoption noenhanced
set output dir."/stream.svg"
set title sprintf("%s, streams of 4x the trained length; budget %d rows", model, int(stream_budget * 2048))
set xlabel "bytes into the stream (end of each 1k segment)"
set ylabel "bits per byte in the segment"
set xrange [*:*]
set logscale y
set yrange [0.5:10]
set key outside right top box
set arrow 1 from 2048, graph 0 to 2048, graph 1 nohead dashtype 3 linecolor "gray"
set label 2 "trained length" at 2100, graph 0.95 font ",10"
plot dir."/stream_segments.csv" using (strcol(1) eq "full" ? $4 : 1/0):5 with linespoints linewidth 2 \
     linecolor "black" pointtype 7 title "full", \
     for [p in policies] dir."/stream_segments.csv" using \
     ((strcol(1) eq p && abs($2 - stream_budget) < 1e-6) ? $4 : 1/0):5 with linespoints linewidth 2 pointtype 7 title p

# --- serving: sequences that fit one pool against bits per byte (kvcache-eval --task serve; serve.csv) ---
if (system("test -f ".dir."/serve.csv && echo y") eq "y") {
  unset logscale y
  unset arrow 1
  unset label 2
  set output dir."/serve.svg"
  set title sprintf("%s, one block pool: sequences that fit against bits per byte", model)
  set xlabel "sequences that fit the pool"
  set ylabel "bits per byte (decoded bytes, all sequences)"
  set xrange [0:*]
  set yrange [*:*]
  set key outside right top box
  plot for [p in "full ".policies." fastgen"] dir."/serve.csv" using (strcol(1) eq p ? $6 : 1/0):13 \
       with linespoints linewidth 2 pointtype 7 title p
}
