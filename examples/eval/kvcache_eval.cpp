// kvcache-eval: what each policy does to a real model (the bundled tinylm-gqa, tinylm-mla or tinylm-yoco,
// examples/models/MODELS.md; --model takes gqa, mla, yoco or a model file's path).
//
// What a budget means per architecture: rows per cache layer and KV head. GQA: 6 layers x 2 KV heads. MLA: one latent
// row per layer and token, shared by all heads (scores summed over the 4 heads). YOCO: the one global cache (1 layer
// x 2 KV heads) read by both cross-decoder layers (scores summed over them); the self-decoder's sliding-window rings
// are fixed (2 layers x 256 tokens) and not counted in the KV bytes columns (their size is printed).
// On MLA, streaming_llm's in-cache positions re-rotate only the RoPE tail of each latent row.
//
// Tasks (--task; `all`, the default, runs lm, passkey and stream in turn):
//   lm       Language modelling: --sequences windows of --length bytes (offsets drawn from --seed, or --offsets); the
//            first --prefix bytes are the prompt (prefill, then the policy compresses), the rest are decoded byte by
//            byte with teacher forcing and the policy active. Reports bits per byte on the decoded bytes, its
//            difference from Full, mean and peak KV bytes, decode tokens/s. A budget is a fraction of --length, kept
//            as rows per layer and KV head (docs/evaluation.md's convention; its windows are --offsets 55170,53013).
//   passkey  Pass-key retrieval: --prompts prompts per depth (--depths) and context (--contexts) in the training
//            format; five bytes decoded greedily must be the key. Question-aware (the whole prompt is prefilled, then
//            compressed) and question-agnostic (the context is prefilled and compressed, then the question). Budgets
//            are fractions of the context.
//   stream   Long streams: --streams windows of --stream-length bytes (default 8192, 4x the trained length) fed one
//            byte at a time; bits per byte per 1k segment and last 2k / first 2k. Budgets are fractions of the
//            trained length 2048. StreamingLLM's claim: Full with original positions degrades past the trained
//            length, sinks + window with in-cache positions stay flat. `recompute` (stream task only) is the paper's
//            sliding window with re-computation: each 1k segment scored after a fresh prefill of the 1k before it,
//            the per-segment baseline that separates what the cache does from how hard each segment's text is.
//   serve    Many sequences on one BlockPool (--pool-mib): sequences of --serve-prompt bytes, prefilled in chunks of
//            --serve-chunk and then decoding --serve-decode bytes each, arrive until the pool holds no further
//            reservation (the blocks a sequence can need at its worst under its policy); they then decode together on
//            --threads threads. Reports the sequences that fit (and against Full), the peak blocks used, decode
//            tokens/s over all sequences and bits per byte, for Full and each policy at each --serve-budgets.
// Cache type: lm and passkey run on each element type of --kv-dtypes in turn (default f16; i8 is the int8 cache), with
// the type as a column; stream runs on f16.
// Output: markdown tables on stdout; with --out DIR, CSV files (lm.csv, passkey.csv, passkey_depths.csv, stream.csv,
// stream_segments.csv, serve.csv) that docs/plots.gp renders; progress on stderr. Errors: a sentence and a non-zero
// exit status.
//
//   kvcache-eval --help   lists every option with its default

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "engine/cli.hpp"
#include "engine/policy_by_name.hpp"
#include "engine/serve.hpp"
#include "engine/tasks.hpp"
#include "engine/tinylm_gqa.hpp"
#include "engine/tinylm_mla.hpp"
#include "engine/tinylm_yoco.hpp"
#include "kvcache/kvcache.hpp"

namespace {

struct Options {
  std::string task = "all";
  std::string model = "gqa";  // a bundled model's short name, or a path
  std::string text = KVCACHE_EXAMPLES_DIR "/data/val-dev.txt";
  std::string out;  // CSV directory; none when empty
  unsigned seed = 1;
  std::vector<std::string> policies = {"full",    "streaming_llm", "h2o",        "vatp",
                                       "l2_norm", "snapkv",        "snapkv_k15", "fastgen"};
  std::vector<double> budgets = {0.1, 0.25, 0.5};
  std::vector<double> thresholds = {0.9, 0.95, 0.98};  // FastGen's recovery thresholds T (it has no budget)
  std::vector<std::string> kv_dtypes = {"f16"};        // lm and passkey: the cache's element types, each in turn
  // lm
  int sequences = 2;
  std::int64_t length = 1024, prefix = 512;
  std::vector<std::size_t> offsets;
  std::vector<std::int64_t> chunks = {0};  // prefill chunk sizes (0: the prompt in one call)
  // passkey
  std::vector<std::int64_t> contexts = {1024};
  std::vector<double> depths = {0.1, 0.3, 0.5, 0.7, 0.9};
  int prompts = 1;
  // stream
  int streams = 1;
  std::int64_t stream_length = 8192;
  std::vector<std::string> stream_policies = {"full", "streaming_llm_original", "streaming_llm"};
  std::vector<double> stream_budgets = {0.5};
  // serve
  double pool_mib = 64;
  std::int64_t serve_prompt = 8192, serve_decode = 512, serve_chunk = 256;
  int block_rows = 16, threads = 2, serve_max = 64;
  std::vector<std::string> serve_policies = {"full", "streaming_llm", "h2o", "vatp", "l2_norm", "snapkv"};
  std::vector<double> serve_budgets = {0.25, 0.1};
};

// The command line (CLI11: `kvcache-eval --help` lists every option with its default). Lists are comma-separated.
Options parse(int argc, char** argv) {
  Options o;
  CLI::App app{
      "kvcache-eval: what each KV-cache policy does to a bundled model (bits per byte, pass-key retrieval, "
      "long streams)"};
  app.add_option("--task", o.task, "the task to run")
      ->check(CLI::IsMember({"all", "lm", "passkey", "stream", "serve"}))
      ->capture_default_str();
  app.add_option("--model", o.model, "a bundled model (gqa, mla, yoco) or a model file's path")->capture_default_str();
  app.add_option("--text", o.text, "the evaluation text")->check(CLI::ExistingFile);
  app.add_option("--out", o.out, "a directory for the CSV files (none when not given)");
  app.add_option("--seed", o.seed, "the seed that draws the windows")->capture_default_str();
  app.add_option("--policies", o.policies,
                 "policies for lm and passkey: full, streaming_llm, streaming_llm_original, h2o, vatp, l2_norm, "
                 "snapkv, snapkv_k15, fastgen; h2o_max, vatp_max, snapkv_max reduce GQA groups by max")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--budgets", o.budgets, "budgets as fractions in (0, 1]")->delimiter(',')->capture_default_str();
  app.add_option("--kv-dtypes", o.kv_dtypes,
                 "lm and passkey: the KV cache's element types (f16, bf16, f32, i8), each run in turn")
      ->delimiter(',')
      ->check(CLI::IsMember({"f32", "f16", "bf16", "i8"}))
      ->capture_default_str();
  app.add_option("--thresholds", o.thresholds, "FastGen's recovery thresholds T (it runs at each)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--sequences", o.sequences, "lm: windows drawn from the text")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--length", o.length, "lm: bytes per window")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--prefix", o.prefix, "lm: bytes of each window prefilled as the prompt")->capture_default_str();
  app.add_option("--chunks", o.chunks,
                 "lm: prompt chunk sizes in bytes, each run in turn (0: one call); with chunks the policies that can "
                 "compress after every chunk (KVCacheOptions::compress_each_chunk)")
      ->delimiter(',')
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--offsets", o.offsets, "lm and stream: byte offsets of the windows instead of drawn ones")
      ->delimiter(',');
  app.add_option("--contexts", o.contexts, "passkey: context lengths in bytes")->delimiter(',')->capture_default_str();
  app.add_option("--depths", o.depths, "passkey: depths of the key as fractions of the context")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--prompts", o.prompts, "passkey: prompts per depth and context")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--streams", o.streams, "stream: streams drawn from the text")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--stream-length", o.stream_length, "stream: bytes per stream")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--stream-policies", o.stream_policies, "stream: policies (also recompute)")
      ->delimiter(',')
      ->capture_default_str();
  auto* stream_budgets = app.add_option("--stream-budgets", o.stream_budgets,
                                        "stream: budgets as fractions of the trained length (default: --budgets "
                                        "with --task stream, else 0.5)")
                             ->delimiter(',');
  app.add_option("--pool-mib", o.pool_mib, "serve: the block pool's size in MiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--serve-prompt", o.serve_prompt, "serve: prompt bytes per sequence")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--serve-decode", o.serve_decode, "serve: bytes decoded per sequence")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--serve-chunk", o.serve_chunk, "serve: prompt bytes per prefill call (0: the prompt in one call)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--block-rows", o.block_rows, "serve: rows per block (a power of two in [16, 256])")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "serve: threads the sequences are split over")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--serve-max", o.serve_max, "serve: at most this many sequences arrive")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--serve-policies", o.serve_policies, "serve: policies (the names of --policies)")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--serve-budgets", o.serve_budgets, "serve: budgets as fractions of the prompt")
      ->delimiter(',')
      ->capture_default_str();
  engine::parse_command_line(app, argc, argv);
  KVCACHE_REQUIRE(o.prefix >= 1 && o.prefix < o.length, "--prefix must be in [1, length = ", o.length, "), got ",
                  o.prefix);
  for (double b : o.budgets) KVCACHE_REQUIRE(b > 0 && b <= 1, "budgets are fractions in (0, 1], got ", b);
  if (stream_budgets->count() == 0 && o.task == "stream") o.stream_budgets = o.budgets;
  for (double b : o.stream_budgets) KVCACHE_REQUIRE(b > 0 && b <= 1, "budgets are fractions in (0, 1], got ", b);
  for (double b : o.serve_budgets) KVCACHE_REQUIRE(b > 0 && b <= 1, "budgets are fractions in (0, 1], got ", b);
  return o;
}

/// Every (policy, budget) pair to run: Full once, FastGen at each threshold, the others at each budget.
std::vector<std::pair<std::string, double>> policy_runs(const std::vector<std::string>& policies,
                                                        const std::vector<double>& budgets,
                                                        const std::vector<double>& thresholds) {
  std::vector<std::pair<std::string, double>> runs;
  for (const auto& p : policies) {
    if (p == "full" || p == "recompute")
      runs.emplace_back(p, 1.0);
    else
      for (double b : p == "fastgen" ? thresholds : budgets) runs.emplace_back(p, b);
  }
  return runs;
}

// The budget column: a percentage, or FastGen's threshold.
// A path as the tables print it: relative to the repository when it lies inside it, so that committed outputs do not
// name the machine they ran on.
std::string shown(const std::string& p) {
  namespace fs = std::filesystem;
  const fs::path root = fs::weakly_canonical(fs::path(KVCACHE_EXAMPLES_DIR).parent_path());
  const fs::path full = fs::weakly_canonical(fs::path(p));
  const auto rel = full.lexically_relative(root);
  return !rel.empty() && *rel.begin() != ".." ? rel.string() : p;
}

std::string percent(const std::string& policy, double b) {
  if (policy == "fastgen") {
    char t[32];
    std::snprintf(t, sizeof t, "T=%.2f", b);
    return t;
  }
  return policy == "full" || policy == "recompute" ? "100%" : std::to_string(int(b * 100 + 0.5)) + "%";
}

// A CSV file under --out, or nothing.
std::ofstream csv_file(const Options& o, const std::string& name, const std::string& header) {
  std::ofstream f;
  if (o.out.empty()) return f;
  std::filesystem::create_directories(o.out);
  f.open(std::filesystem::path(o.out) / name);
  KVCACHE_REQUIRE(f.good(), "cannot write '", (std::filesystem::path(o.out) / name).string(), "'");
  f << header << '\n';
  return f;
}

template <class Model>
void run_lm(const Options& o, Model& model, const std::string& text) {
  const auto offsets = o.offsets.empty() ? engine::draw_offsets(text, o.length, o.sequences, o.seed) : o.offsets;
  std::vector<std::vector<int>> windows;
  for (std::size_t at : offsets) windows.push_back(engine::byte_window(text, at, o.length));
  const auto runs = policy_runs(o.policies, o.budgets, o.thresholds);
  using Key = std::tuple<std::string, std::string, double, std::int64_t>;  // KV dtype, policy, budget, chunk
  std::map<Key, engine::TaskStats> results;
  std::map<double, std::array<std::int64_t, kvcache::FastGen::kChoices>> choices;  // FastGen: heads per choice
  const auto cfg0 = model.cache_config(o.length + 8, kvcache::parse_dtype(o.kv_dtypes.front()));
  int done = 0;
  for (const std::string& dt : o.kv_dtypes) {
    const auto cfg = model.cache_config(o.length + 8, kvcache::parse_dtype(dt));
    for (std::int64_t chunk : o.chunks)
      for (const auto& [p, b] : runs) {
        engine::TaskStats& r = results[{dt, p, b, chunk}];
        for (const auto& w : windows)
          engine::with_policy(
              p, b, o.length, model, cfg,
              [&](auto& cache) {
                engine::language_model(model, cache, w, o.prefix, r, chunk);
                if constexpr (std::is_same_v<std::decay_t<decltype(cache.policy())>, kvcache::FastGen>)
                  if (dt == o.kv_dtypes.front() && chunk == o.chunks.front())
                    for (int l = 0; l < cfg.n_layers; ++l)
                      for (int h = 0; h < cfg.shape.n_kv_heads; ++h) {
                        const int c = cache.policy_state().choice(l, h);
                        choices[b][std::size_t(c < 0 ? kvcache::FastGen::kChoices - 1 : c)] += 1;
                      }
              },
              /*retrieval=*/false, /*chunked=*/chunk > 0);
        std::fprintf(stderr, "lm [%d/%zu] %s %s at %s, chunk %lld: %.4f bits/byte\n", ++done,
                     runs.size() * o.kv_dtypes.size() * o.chunks.size(), dt.c_str(), p.c_str(), percent(p, b).c_str(),
                     static_cast<long long>(chunk), r.bits_per_byte());
      }
  }
  std::printf(
      "\n### Language modelling\n\n%zu windows of %lld bytes from %s (seed %u), prompt %lld bytes, %lld decoded "
      "with the policy active; budget = rows per layer and KV head as a fraction of the window; KV: the cache's "
      "element type (vs full: against Full of the same type; vs f16: relative change from the same policy and "
      "budget on an f16 cache); chunk: prompt bytes per prefill call (whole: one call; else the policy compresses "
      "after every chunk it can, FastGen and Full take the prompt whole); prefill peak rows: the most rows a (layer, "
      "KV head) held while the prompt went in.\n\n",
      windows.size(), static_cast<long long>(o.length), shown(o.text).c_str(), o.seed, static_cast<long long>(o.prefix),
      static_cast<long long>(o.length - o.prefix));
  std::printf(
      "| policy | budget | KV | chunk | bits/byte | vs full | vs f16 | mean KV bytes | peak KV bytes | prefill peak "
      "rows | decode tok/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  auto csv = csv_file(o, "lm.csv",
                      "policy,budget,bits_per_byte,delta_vs_full,mean_kv_bytes,peak_kv_bytes,decode_tokens_per_s,"
                      "kv_dtype,relative_vs_f16,chunk,prefill_peak_rows");
  for (const std::string& dt : o.kv_dtypes)
    for (std::int64_t chunk : o.chunks) {
      const auto full = results.find({dt, "full", 1.0, chunk});
      const double full_bpb = full != results.end() ? full->second.bits_per_byte() : NAN;
      for (const auto& [p, b] : runs) {
        const engine::TaskStats& r = results[{dt, p, b, chunk}];
        const auto f16 = results.find({"f16", p, b, chunk});
        const double rel = f16 != results.end() ? r.bits_per_byte() / f16->second.bits_per_byte() - 1.0 : NAN;
        char vs_f16[32] = "";
        if (dt != "f16" && std::isfinite(rel)) std::snprintf(vs_f16, sizeof vs_f16, "%+.2f%%", 100.0 * rel);
        const std::string shown_chunk = chunk > 0 ? std::to_string(chunk) : "whole";
        std::printf("| %s | %s | %s | %s | %.4f | %+.4f | %s | %.0f | %.0f | %.0f | %.0f |\n", p.c_str(),
                    percent(p, b).c_str(), dt.c_str(), shown_chunk.c_str(), r.bits_per_byte(),
                    r.bits_per_byte() - full_bpb, vs_f16, r.mean_kv_bytes(), r.kv_peak, r.prefill_peak_rows,
                    r.decode_tokens_per_s());
        if (csv)
          csv << p << ',' << b << ',' << r.bits_per_byte() << ',' << r.bits_per_byte() - full_bpb << ','
              << r.mean_kv_bytes() << ',' << r.kv_peak << ',' << r.decode_tokens_per_s() << ',' << dt << ',' << rel
              << ',' << chunk << ',' << r.prefill_peak_rows << '\n';
      }
    }
  const auto& cfg = cfg0;
  const auto full = results.find({o.kv_dtypes.front(), "full", 1.0, o.chunks.front()});
  if (!choices.empty()) {
    const auto full_kv = full != results.end() ? full->second.mean_kv_bytes() : NAN;
    std::printf(
        "\nFastGen (%s cache): the policy each (layer, KV head) chose from the prompt, summed over the windows; "
        "mean KV bytes per head and as a fraction of Full's.\n\n| T |",
        o.kv_dtypes.front().c_str());
    for (int c = 0; c < kvcache::FastGen::kChoices; ++c)
      std::printf(" %s |", std::string(kvcache::FastGen::choice_name(c)).c_str());
    std::printf(" mean KV bytes per head | of full |\n|---|");
    for (int c = 0; c <= kvcache::FastGen::kChoices + 1; ++c) std::printf("---|");
    std::printf("\n");
    for (const auto& [t, n] : choices) {
      std::printf("| %.2f |", t);
      for (auto x : n) std::printf(" %lld |", static_cast<long long>(x));
      const double kv = results[{o.kv_dtypes.front(), "fastgen", t, o.chunks.front()}].mean_kv_bytes();
      std::printf(" %.0f | %.2f |\n", kv / (cfg.n_layers * cfg.shape.n_kv_heads), kv / full_kv);
    }
  }
  std::fflush(stdout);
}

template <class Model>
void run_passkey(const Options& o, Model& model, const std::string& text) {
  const auto runs = policy_runs(o.policies, o.budgets, o.thresholds);
  std::printf(
      "\n### Pass-key retrieval\n\n%d prompt(s) per depth and context (seed %u), budget = a fraction of the "
      "context, KV: the cache's element type; hits per depth.\n\n",
      o.prompts, o.seed);
  std::printf("| policy | budget | KV | setting | context |");
  for (double d : o.depths) std::printf(" %.0f%% |", d * 100);
  std::printf(" all | decode tok/s |\n|---|---|---|---|---|");
  for (std::size_t i = 0; i <= o.depths.size() + 1; ++i) std::printf("---|");
  std::printf("\n");
  auto csv =
      csv_file(o, "passkey.csv", "policy,budget,setting,context,hits,prompts,accuracy,decode_tokens_per_s,kv_dtype");
  auto csv_depths = csv_file(o, "passkey_depths.csv", "policy,budget,setting,context,depth,hits,prompts,kv_dtype");
  std::string csv_rows[2];  // question-aware, question-agnostic: written grouped, so that a plot's lines connect
  for (const std::string& dt : o.kv_dtypes)
    for (std::int64_t T : o.contexts) {
      const auto prompts = engine::passkey_prompts(text, T, o.depths, o.prompts, o.seed);
      const auto cfg = model.cache_config(T + 16, kvcache::parse_dtype(dt));
      for (const auto& [p, b] : runs) {
        for (bool aware : {true, false}) {
          const char* setting = aware ? "question-aware" : "question-agnostic";
          engine::TaskStats s;
          std::vector<int> hits(o.depths.size(), 0);
          for (std::size_t i = 0; i < prompts.size(); ++i)
            engine::with_policy(
                p, b, T, model, cfg,
                [&](auto& cache) {
                  hits[i / std::size_t(o.prompts)] += engine::passkey(model, cache, prompts[i], aware, s) ? 1 : 0;
                },
                /*retrieval=*/true);
          std::printf("| %s | %s | %s | %s | %lld |", p.c_str(), percent(p, b).c_str(), dt.c_str(), setting,
                      static_cast<long long>(T));
          for (std::size_t d = 0; d < hits.size(); ++d) {
            std::printf(" %d/%d |", hits[d], o.prompts);
            if (csv_depths)
              csv_depths << p << ',' << b << ',' << setting << ',' << T << ',' << o.depths[d] << ',' << hits[d] << ','
                         << o.prompts << ',' << dt << '\n';
          }
          std::printf(" %.0f/%.0f | %.0f |\n", s.hits, s.prompts, s.decode_tokens_per_s());
          std::fflush(stdout);
          std::ostringstream row;
          row << p << ',' << b << ',' << setting << ',' << T << ',' << s.hits << ',' << s.prompts << ','
              << s.hits / s.prompts << ',' << s.decode_tokens_per_s() << ',' << dt << '\n';
          csv_rows[aware ? 0 : 1] += row.str();
          std::fprintf(stderr, "passkey %s %s at %s, %s, %lld bytes: %.0f/%.0f\n", dt.c_str(), p.c_str(),
                       percent(p, b).c_str(), setting, static_cast<long long>(T), s.hits, s.prompts);
        }
      }
    }
  if (csv) csv << csv_rows[0] << csv_rows[1];
}

template <class Model>
void run_stream(const Options& o, Model& model, const std::string& text) {
  constexpr std::int64_t kTrained = 2048, kSegment = 1024;
  const std::int64_t L = o.stream_length;
  const auto offsets = o.offsets.empty() ? engine::draw_offsets(text, L, o.streams, o.seed + 1) : o.offsets;
  std::vector<std::vector<int>> seqs;
  for (std::size_t at : offsets) seqs.push_back(engine::byte_window(text, at, L));
  const std::int64_t segments = (L - 1 + kSegment - 1) / kSegment;
  std::printf(
      "\n### Long streams\n\n%zu stream(s) of %lld bytes from %s (seed %u), fed one byte at a time, f16 "
      "cache; budget = a fraction of the trained length %lld; mean bits per byte per 1k segment.\n\n",
      seqs.size(), static_cast<long long>(L), shown(o.text).c_str(), o.seed + 1, static_cast<long long>(kTrained));
  std::printf("| policy | budget |");
  for (std::int64_t k = 0; k < segments; ++k) std::printf(" %lldk |", static_cast<long long>(k + 1));
  std::printf(" last 2k / first 2k | decode tok/s |\n|---|---|");
  for (std::int64_t k = 0; k <= segments + 1; ++k) std::printf("---|");
  std::printf("\n");
  auto csv = csv_file(o, "stream.csv", "policy,budget,rows,first_2k,last_2k,ratio,decode_tokens_per_s");
  auto csv_seg = csv_file(o, "stream_segments.csv", "policy,budget,rows,segment_end,bits_per_byte");
  const auto cfg = model.cache_config(L + 8, kvcache::DType::kF16);
  for (const auto& [p, b] : policy_runs(o.stream_policies, o.stream_budgets, o.thresholds)) {
    std::vector<double> bits, count;
    engine::TaskStats s;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      if (p == "recompute")  // the paper's sliding window with re-computation, 1k bytes of fresh context
        engine::stream_recompute(
            model,
            [&] {
              return kvcache::KVCache<kvcache::Full>(model.cache_config(2 * kSegment + 8, cfg.dtype), {},
                                                     model.cache_options());
            },
            seqs[i], kSegment, kSegment, bits, count, s);
      else
        engine::with_policy(p, b, kTrained, model, cfg,
                            [&](auto& cache) { engine::stream(model, cache, seqs[i], kSegment, bits, count, s); });
      std::fprintf(stderr, "stream %s at %s: %zu/%zu\n", p.c_str(), percent(p, b).c_str(), i + 1, seqs.size());
    }
    const auto mean = [&](std::int64_t from, std::int64_t to) {
      double a = 0, n = 0;
      for (std::int64_t k = std::max<std::int64_t>(0, from); k < std::min(to, segments); ++k)
        a += bits[std::size_t(k)], n += count[std::size_t(k)];
      return a / n;
    };
    const std::int64_t rows = p == "full" ? L : p == "recompute" ? 2 * kSegment : engine::budget_rows(b, kTrained);
    std::printf("| %s | %s |", p.c_str(),
                p == "full"        ? "all"
                : p == "recompute" ? "1k-2k, fresh"
                                   : (std::to_string(rows) + " rows").c_str());
    for (std::int64_t k = 0; k < segments; ++k) {
      std::printf(" %.3f |", bits[std::size_t(k)] / count[std::size_t(k)]);
      if (csv_seg)
        csv_seg << p << ',' << b << ',' << rows << ',' << std::min(L, (k + 1) * kSegment) << ','
                << bits[std::size_t(k)] / count[std::size_t(k)] << '\n';
    }
    const double first = mean(0, 2), last = mean(segments - 2, segments);
    std::printf(" %.3f | %.0f |\n", last / first, s.decode_tokens_per_s());
    std::fflush(stdout);
    if (csv)
      csv << p << ',' << b << ',' << rows << ',' << first << ',' << last << ',' << last / first << ','
          << s.decode_tokens_per_s() << '\n';
  }
}

template <class Model>
void run_serve(const Options& o, const Model& model, const std::string& text) {
  const kvcache::DType dtype = kvcache::parse_dtype(o.kv_dtypes.front());
  const kvcache::CacheConfig shape = model.cache_config(1, dtype);
  const std::size_t block = kvcache::BlockPool::block_bytes(shape.shape, dtype, o.block_rows);
  const auto n_blocks = std::int64_t(o.pool_mib * 1024 * 1024 / double(block));
  KVCACHE_REQUIRE(n_blocks >= 1, "--pool-mib ", o.pool_mib, " holds no block of ", block, " bytes");
  const std::int64_t L = o.serve_prompt + o.serve_decode;
  const auto offsets = engine::draw_offsets(text, L, o.serve_max, o.seed + 2);
  std::vector<std::vector<int>> windows;
  for (std::size_t at : offsets) windows.push_back(engine::byte_window(text, at, L));
  std::vector<Model> models(std::size_t(o.threads), model);  // one engine per thread
  engine::ServeSettings s;
  s.prompt = o.serve_prompt;
  s.decode = o.serve_decode;
  s.chunk = o.serve_chunk;
  s.threads = o.threads;
  std::printf(
      "\n### Serving: sequences on one block pool\n\nA pool of %.0f MiB (%lld blocks of %d rows, %zu bytes each, %s); "
      "sequences of %lld prompt bytes (prefilled in chunks of %lld, each policy compressing after every chunk it "
      "can) and %lld decoded bytes (teacher-forced, scored) arrive until the pool holds no further reservation: the "
      "blocks a sequence can need at its worst (rows per head: the budget plus a chunk during prefill, plus one row "
      "during decode; Full and FastGen: everything). The admitted sequences decode together on %d threads. Budget: a "
      "fraction of the prompt, as rows per layer and KV head.\n\n",
      o.pool_mib, static_cast<long long>(n_blocks), o.block_rows, block, o.kv_dtypes.front().c_str(),
      static_cast<long long>(o.serve_prompt), static_cast<long long>(o.serve_chunk),
      static_cast<long long>(o.serve_decode), o.threads);
  std::printf(
      "| policy | budget | rows per head (most) | prefill peak rows | blocks reserved per sequence | sequences | vs "
      "full "
      "| peak blocks used | state bytes per sequence | prefill s | decode tok/s (all) | bits/byte |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  auto csv = csv_file(o, "serve.csv",
                      "policy,budget,head_rows_bound,prefill_peak_rows,reserved_blocks,sequences,vs_full,"
                      "peak_blocks_used,blocks_total,state_bytes,prefill_seconds,decode_tokens_per_s,bits_per_byte");
  double full_fit = NAN;
  for (const auto& [p, b] : policy_runs(o.serve_policies, o.serve_budgets, o.thresholds)) {
    kvcache::BlockPool pool(shape.shape, dtype, o.block_rows, n_blocks);
    engine::ServeResult r;
    engine::visit_policy(p, b, o.serve_prompt, model, [&](auto policy, kvcache::KVCacheOptions opt) {
      using P = decltype(policy);
      auto make = [&](std::size_t i) {
        P each = policy;
        if constexpr (std::is_same_v<P, kvcache::FastGen>)  // each sequence's own token classes
          each.token_class = engine::byte_classes_of(windows[i]);
        return each;
      };
      r = engine::serve(models, pool, shape, make, opt, windows, s);
    });
    if (p == "full") full_fit = r.sequences;
    std::printf("| %s | %s | %lld | %.0f | %lld | %d | %.1fx | %lld / %lld | %zu | %.1f | %.0f | %.4f |\n", p.c_str(),
                percent(p, b).c_str(), static_cast<long long>(r.head_rows_bound), r.prefill_peak_rows,
                static_cast<long long>(r.reserved_blocks), r.sequences, r.sequences / full_fit,
                static_cast<long long>(r.peak_blocks_used), static_cast<long long>(r.blocks_total), r.state_bytes,
                r.prefill_seconds, r.decode_tokens_per_s(), r.bits_per_byte());
    std::fflush(stdout);
    std::fprintf(stderr, "serve %s at %s: %d sequences, %.4f bits/byte\n", p.c_str(), percent(p, b).c_str(),
                 r.sequences, r.bits_per_byte());
    if (r.sequences == int(windows.size()))
      std::fprintf(stderr, "serve %s at %s: all %d sequences fit; --serve-max limits the count\n", p.c_str(),
                   percent(p, b).c_str(), r.sequences);
    if (csv)
      csv << p << ',' << b << ',' << r.head_rows_bound << ',' << r.prefill_peak_rows << ',' << r.reserved_blocks << ','
          << r.sequences << ',' << r.sequences / full_fit << ',' << r.peak_blocks_used << ',' << r.blocks_total << ','
          << r.state_bytes << ',' << r.prefill_seconds << ',' << r.decode_tokens_per_s() << ',' << r.bits_per_byte()
          << '\n';
  }
}

// The bundled model's file for a short name (gqa, mla, yoco, tinylm-X), or the argument itself (a path).
std::string model_path(const std::string& m) {
  for (const char* name : {"gqa", "mla", "yoco"})
    if (m == name || m == std::string("tinylm-") + name)
      return std::string(KVCACHE_EXAMPLES_DIR "/models/tinylm-") + name + ".safetensors";
  KVCACHE_REQUIRE(std::filesystem::exists(m), "--model '", m,
                  "' is neither a bundled model (gqa, mla, yoco) nor a file");
  return m;
}

template <class Model>
void run(Options o, const std::string& path, const std::string& text) {
  Model model(path);
  std::printf("kvcache-eval: %s (%s), ISA %s\n", model.name(), shown(path).c_str(),
              std::string(kvcache::isa_name(kvcache::active_isa())).c_str());
  if constexpr (std::is_same_v<Model, engine::TinyLmYoco>)
    std::printf(
        "\nThe self-decoder's sliding-window rings hold %lld tokens in each of %d layers (%lld bytes in f16), "
        "outside the policy's reach and the KV bytes below.\n",
        static_cast<long long>(model.window()), model.n_self_layers(),
        static_cast<long long>(model.window() * model.n_self_layers() * 2 *
                               model.cache_config(1, kvcache::DType::kF16).shape.n_kv_heads *
                               model.cache_config(1, kvcache::DType::kF16).shape.head_dim_k * 2));
  if (o.task == "all" || o.task == "lm") run_lm(o, model, text);
  if (o.task == "all" || o.task == "passkey") run_passkey(o, model, text);
  if (o.task == "all" || o.task == "stream") run_stream(o, model, text);
  if constexpr (std::is_copy_constructible_v<Model>) {
    if (o.task == "serve") run_serve(o, model, text);
  } else {
    KVCACHE_REQUIRE(o.task != "serve", "--task serve runs many sequences through copies of one engine; ", model.name(),
                    " keeps a sequence's self-decoder rings inside the engine (gqa and mla can serve)");
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  const std::string path = model_path(o.model);
  const std::string text = engine::read_text(o.text);
  const std::string kind = engine::model_attention(path);
  if (kind == "gqa")
    run<engine::TinyLmGqa>(o, path, text);
  else if (kind == "mla")
    run<engine::TinyLmMla>(o, path, text);
  else if (kind == "yoco")
    run<engine::TinyLmYoco>(o, path, text);
  else
    kvcache::detail::throw_error("'", path, "' is a '", kind, "' model; kvcache-eval runs gqa, mla and yoco");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "kvcache-eval: %s\n", e.what());
  return 1;
}
