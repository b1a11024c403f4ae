// kvcache-eval: what each policy does to a real model.
//
// --task lm (default), language modelling: N windows of L
// bytes from a text file (offsets drawn from --seed); the first P bytes are the prompt (prefill, then the policy
// compresses), the rest are decoded byte by byte with teacher forcing and the policy active. Reported per policy
// and budget: bits per byte on the decoded bytes, its difference from Full, mean and peak KV bytes, decode tokens/s.
// A budget is a fraction of the window length L, kept as rows per layer and KV head (the convention of
// calibration.md, whose oracle numbers these can be compared with: --offsets gives its windows).
// --task passkey: prompts of --contexts bytes in the format the models were trained on (MODELS.md): ordinary text with
// the needle " The pass key is NNNNN. Remember it. NNNNN is the pass key. " at each of --depths, ending with
// "\nWhat is the pass key? The pass key is "; five bytes decoded greedily must be the key. Two settings:
// question-aware (the whole prompt is prefilled, then the policy compresses) and question-agnostic (the context is
// prefilled and compressed, then the question is prefilled without a new selection, the honest one for SnapKV-like
// methods). Budgets are fractions of the context.
// --task stream: one window of --length bytes (default for this task: 8192, 4x the trained length) fed byte by byte
// from the first, bits per byte per 1k-byte segment: StreamingLLM's claim is that Full with original positions
// degrades past the trained length while sinks + window with in-cache positions stay flat. Budgets: rows as for lm.
// Output: a markdown table on stdout (and --csv FILE); progress on stderr.
//
//   kvcache-eval [--model F] [--text F] [--seed N] [--sequences N] [--length L] [--prefix P]
//                [--policies full,streaming_llm,streaming_llm_original,h2o,vatp,l2_norm,snapkv]
//                [--budgets 0.1,0.25,0.5] [--offsets A,B,...] [--csv F]
//                [--task lm|passkey] [--contexts 1024,2048] [--depths 0.1,0.3,0.5,0.7,0.9] [--prompts N]

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tinylm_gqa.hpp"
#include "kvcache/kvcache.hpp"

namespace {

struct Options {
  std::string model = KVCACHE_EXAMPLES_DIR "/models/tinylm-gqa.safetensors";
  std::string text = KVCACHE_EXAMPLES_DIR "/data/val-dev.txt";
  std::string csv;
  unsigned seed = 1;
  int sequences = 2;
  std::int64_t length = 1024, prefix = 512;
  std::vector<std::string> policies = {"full", "streaming_llm", "h2o", "vatp", "l2_norm", "snapkv"};
  std::vector<double> budgets = {0.1, 0.25, 0.5};
  std::vector<std::size_t> offsets;  // explicit window starts (else drawn from --seed)
  std::string task = "lm";
  std::vector<std::int64_t> contexts = {1024, 2048};
  std::vector<double> depths = {0.1, 0.3, 0.5, 0.7, 0.9};
  int prompts = 2;  // per depth and context
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// A number from the command line; anything else is an Error naming the option and the text.
template <class T>
T number(const std::string& option, const std::string& text) {
  std::istringstream in(text);
  T v{};
  in >> v;
  KVCACHE_REQUIRE(!in.fail() && in.eof(), "option ", option, " expects a number, got '", text, "'");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      KVCACHE_REQUIRE(i + 1 < argc, "option ", a, " needs a value");
      return argv[++i];
    };
    if (a == "--model")
      o.model = value();
    else if (a == "--text")
      o.text = value();
    else if (a == "--csv")
      o.csv = value();
    else if (a == "--seed")
      o.seed = number<unsigned>(a, value());
    else if (a == "--sequences")
      o.sequences = number<int>(a, value());
    else if (a == "--length")
      o.length = number<std::int64_t>(a, value());
    else if (a == "--prefix")
      o.prefix = number<std::int64_t>(a, value());
    else if (a == "--policies")
      o.policies = split(value());
    else if (a == "--task")
      o.task = value();
    else if (a == "--contexts") {
      o.contexts.clear();
      for (auto& x : split(value())) o.contexts.push_back(number<std::int64_t>(a, x));
    } else if (a == "--depths") {
      o.depths.clear();
      for (auto& x : split(value())) o.depths.push_back(number<double>(a, x));
    } else if (a == "--prompts")
      o.prompts = number<int>(a, value());
    else if (a == "--offsets")
      for (auto& x : split(value())) o.offsets.push_back(number<std::size_t>(a, x));
    else if (a == "--budgets") {
      o.budgets.clear();
      for (auto& b : split(value())) o.budgets.push_back(number<double>(a, b));
    } else
      kvcache::detail::throw_error("unknown option '", a, "' (see the top of kvcache_eval.cpp)");
  }
  KVCACHE_REQUIRE(o.sequences >= 1, "--sequences must be >= 1, got ", o.sequences);
  KVCACHE_REQUIRE(o.task != "lm" || (o.prefix >= 1 && o.prefix < o.length), "--prefix must be in [1, length), got ",
                  o.prefix);
  KVCACHE_REQUIRE(o.length >= 2, "--length must be >= 2, got ", o.length);
  for (double b : o.budgets) KVCACHE_REQUIRE(b > 0 && b <= 1, "budgets are fractions in (0, 1], got ", b);
  return o;
}

/// Every (policy, budget) pair to run: Full once, the others at each budget.
std::vector<std::pair<std::string, double>> policy_runs(const Options& o) {
  std::vector<std::pair<std::string, double>> runs;
  for (const auto& p : o.policies) {
    if (p == "full")
      runs.emplace_back(p, 1.0);
    else
      for (double b : o.budgets) runs.emplace_back(p, b);
  }
  return runs;
}

struct Result {
  double bits = 0, bytes = 0, kv_sum = 0, kv_peak = 0, steps = 0, seconds = 0;
};

// Teacher-forced language modelling of one window through a cache; adds into r.
template <class Cache>
void run_window(engine::TinyLmGqa& model, Cache& cache, const std::vector<int>& window, std::int64_t prefix,
                Result& r) {
  engine::Matrix logits = model.prefill(cache, std::span<const int>(window.data(), std::size_t(prefix)), 0);
  Eigen::VectorXf last = logits.row(prefix - 1).transpose();
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t t = prefix; t < std::int64_t(window.size()); ++t) {
    const float mx = last.maxCoeff();
    const double lse = double(mx) + std::log((last.array() - mx).exp().sum());
    r.bits += (lse - double(last(window[std::size_t(t)]))) / std::log(2.0);
    r.bytes += 1;
    last = model.decode(cache, window[std::size_t(t)], kvcache::Position(t));
    const double kv = double(cache.kv_bytes());
    r.kv_sum += kv;
    r.kv_peak = std::max(r.kv_peak, kv);
    r.steps += 1;
  }
  r.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// One pass-key prompt through a cache; true when the five greedy bytes are the key.
template <class Cache>
bool run_passkey(engine::TinyLmGqa& model, Cache& cache, const std::vector<int>& context,
                 const std::vector<int>& question, const std::string& key, bool aware) {
  engine::Matrix logits;
  if (aware) {
    std::vector<int> all = context;
    all.insert(all.end(), question.begin(), question.end());
    logits = model.prefill(cache, all, 0);
  } else {
    model.prefill(cache, context, 0);  // compressed here
    logits = model.prefill(cache, question, kvcache::Position(context.size()), /*last_chunk=*/false);
  }
  Eigen::VectorXf last = logits.row(logits.rows() - 1).transpose();
  std::string out;
  kvcache::Position pos = kvcache::Position(context.size() + question.size());
  for (int i = 0; i < 5; ++i) {
    Eigen::Index best;
    last.maxCoeff(&best);
    out += char(best);
    if (i < 4) last = model.decode(cache, int(best), pos++);
  }
  return out == key;
}

template <class F>
void with_policy(const std::string& name, double budget, std::int64_t base, const engine::TinyLmGqa& model,
                 const kvcache::CacheConfig& cfg, F&& f) {
  using kvcache::Count;
  const std::int64_t rows = std::max<std::int64_t>(40, std::int64_t(budget * double(base)));  // rows per KV head
  if (name == "full") {
    kvcache::KVCache<kvcache::Full> c(cfg);
    f(c);
  } else if (name == "streaming_llm") {
    kvcache::KVCache<kvcache::StreamingLLM> c(cfg, kvcache::StreamingLLM(4, rows - 4), model.cache_options());
    f(c);
  } else if (name == "streaming_llm_original") {
    kvcache::KVCache<kvcache::StreamingLLM> c(
        cfg, kvcache::StreamingLLM(4, rows - 4, kvcache::StreamingLLM::Positions::kOriginal));
    f(c);
  } else if (name == "h2o") {
    kvcache::KVCache<kvcache::H2O> c(cfg, kvcache::H2O(Count::of(rows / 2), Count::of(rows - rows / 2)));
    f(c);
  } else if (name == "vatp") {
    kvcache::KVCache<kvcache::VATP> c(cfg, kvcache::VATP(Count::of(rows / 2), Count::of(rows - rows / 2), 4));
    f(c);
  } else if (name == "l2_norm") {
    kvcache::KVCache<kvcache::L2Norm> c(cfg,
                                        kvcache::L2Norm(Count::of(rows), {0, 1}, kvcache::L2Norm::Mode::kEveryStep));
    f(c);
  } else if (name == "snapkv") {
    kvcache::KVCache<kvcache::SnapKV> c(cfg, kvcache::SnapKV(Count::of(rows), std::min<std::int64_t>(32, rows), 7));
    f(c);
  } else if (name == "snapkv_k15") {  // calibration.md: on bytes a needle spans ~4x the positions of sub-words
    kvcache::KVCache<kvcache::SnapKV> c(cfg, kvcache::SnapKV(Count::of(rows), std::min<std::int64_t>(32, rows), 15));
    f(c);
  } else {
    kvcache::detail::throw_error("unknown policy '", name,
                                 "'; known: full, streaming_llm, streaming_llm_original, h2o, vatp, l2_norm, snapkv, "
                                 "snapkv_k15");
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  engine::TinyLmGqa model(o.model);
  std::ifstream in(o.text, std::ios::binary);
  KVCACHE_REQUIRE(in.good(), "cannot open text file '", o.text, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  KVCACHE_REQUIRE(std::int64_t(text.size()) >= o.length, "text '", o.text, "' has ", text.size(),
                  " bytes, fewer than the requested length ", o.length);
  std::mt19937 rng(o.seed);
  if (o.task == "passkey") {
    const auto runs = policy_runs(o);
    std::printf("Pass-key retrieval: %d prompt(s) per depth, seed %u; accuracy per depth.\n\n", o.prompts, o.seed);
    std::printf("| policy | budget | setting | context |");
    for (double d : o.depths) std::printf(" %.0f%% |", d * 100);
    std::printf(" all |\n|---|---|---|---|");
    for (std::size_t i = 0; i <= o.depths.size(); ++i) std::printf("---|");
    std::printf("\n");
    for (std::int64_t T : o.contexts) {
      for (const auto& [p, b] : runs) {
        for (bool aware : {true, false}) {
          std::mt19937 prng(o.seed);  // the same prompts for every policy
          std::uniform_int_distribution<int> digits(10000, 99999);
          int total = 0, hits = 0;
          std::string cells;
          for (double depth : o.depths) {
            int ok = 0;
            for (int n = 0; n < o.prompts; ++n) {
              const std::string key = std::to_string(digits(prng));
              std::string needle(" The pass key is ");
              needle.append(key).append(". Remember it. ").append(key).append(" is the pass key. ");
              const std::string q = "\nWhat is the pass key? The pass key is ";
              const std::size_t fill = std::size_t(T) - needle.size() - q.size();
              KVCACHE_REQUIRE(text.size() > fill + 1, "text '", o.text, "' is shorter than a ", T, "-byte prompt");
              std::uniform_int_distribution<std::size_t> at(0, text.size() - fill - 1);
              const std::string filler = text.substr(at(prng), fill);
              const std::size_t d = std::size_t(depth * double(fill));
              std::vector<int> context, question;
              for (std::size_t i = 0; i < d; ++i) context.push_back(static_cast<unsigned char>(filler[i]));
              for (char c : needle) context.push_back(static_cast<unsigned char>(c));
              for (std::size_t i = d; i < filler.size(); ++i) context.push_back(static_cast<unsigned char>(filler[i]));
              for (char c : q) question.push_back(static_cast<unsigned char>(c));
              const auto cfg = model.cache_config(T + 16, kvcache::DType::kF16);
              with_policy(p, b, T, model, cfg,
                          [&](auto& cache) { ok += run_passkey(model, cache, context, question, key, aware) ? 1 : 0; });
            }
            hits += ok;
            total += o.prompts;
            cells.append(" ").append(std::to_string(ok)).append("/").append(std::to_string(o.prompts)).append(" |");
          }
          std::printf("| %s | %s | %s | %lld |%s %d/%d |\n", p.c_str(),
                      p == "full" ? "100%" : (std::to_string(int(b * 100 + 0.5)) + "%").c_str(),
                      aware ? "question-aware" : "question-agnostic", static_cast<long long>(T), cells.c_str(), hits,
                      total);
          std::fflush(stdout);
          std::fprintf(stderr, "passkey %s %.0f%% %s T=%lld: %d/%d\n", p.c_str(), b * 100, aware ? "aware" : "agnostic",
                       static_cast<long long>(T), hits, total);
        }
      }
    }
    return 0;
  }
  if (o.task == "stream") {
    const std::int64_t L = o.length;
    const std::size_t at = o.offsets.empty()
                               ? std::uniform_int_distribution<std::size_t>(0, text.size() - std::size_t(L))(rng)
                               : o.offsets[0];
    KVCACHE_REQUIRE(at + std::size_t(L) <= text.size(), "text '", o.text, "' has ", text.size(),
                    " bytes, fewer than the requested length ", L, " from offset ", at);
    std::vector<int> seq;
    for (std::int64_t i = 0; i < L; ++i) seq.push_back(static_cast<unsigned char>(text[at + std::size_t(i)]));
    const std::int64_t segments = (L - 1 + 1023) / 1024;
    std::printf(
        "Long stream: %lld bytes from offset %zu of %s, fed one byte at a time; bits per byte per 1k segment.\n\n",
        static_cast<long long>(L), at, o.text.c_str());
    std::printf("| policy | budget |");
    for (std::int64_t k = 0; k < segments; ++k) std::printf(" %lldk |", static_cast<long long>(k + 1));
    std::printf(" last 2k / first 2k |\n|---|---|");
    for (std::int64_t k = 0; k <= segments; ++k) std::printf("---|");
    std::printf("\n");
    const auto cfg = model.cache_config(L + 8, kvcache::DType::kF16);
    for (const auto& p : o.policies) {
      for (double b : (p == "full" ? std::vector<double>{1.0} : o.budgets)) {
        std::vector<double> bits(std::size_t(segments), 0.0), count(std::size_t(segments), 0.0);
        with_policy(p, b, 2048, model, cfg, [&](auto& cache) {
          engine::Matrix first = model.prefill(cache, std::span<const int>(seq.data(), 1), 0);
          Eigen::VectorXf last = first.row(0).transpose();
          for (std::int64_t t = 1; t < L; ++t) {
            const float mx = last.maxCoeff();
            const double lse = double(mx) + std::log((last.array() - mx).exp().sum());
            const std::size_t k = std::size_t((t - 1) / 1024);
            bits[k] += (lse - double(last(seq[std::size_t(t)]))) / std::log(2.0);
            count[k] += 1;
            last = model.decode(cache, seq[std::size_t(t)], kvcache::Position(t));
            if (t % 1024 == 0)
              std::fprintf(stderr, "stream %s %.0f%%: %lld bytes\n", p.c_str(), b * 100, static_cast<long long>(t));
          }
        });
        std::printf("| %s | %s |", p.c_str(),
                    p == "full" ? "100%" : (std::to_string(int(b * 2048 + 0.5)) + " rows").c_str());
        for (std::int64_t k = 0; k < segments; ++k)
          std::printf(" %.3f |", bits[std::size_t(k)] / count[std::size_t(k)]);
        const auto mean = [&](std::int64_t from, std::int64_t to) {
          double a = 0, n = 0;
          for (std::int64_t k = std::max<std::int64_t>(0, from); k < std::min(to, segments); ++k)
            a += bits[std::size_t(k)], n += count[std::size_t(k)];
          return a / n;
        };
        std::printf(" %.3f |\n", mean(segments - 2, segments) / mean(0, 2));
        std::fflush(stdout);
      }
    }
    return 0;
  }
  KVCACHE_REQUIRE(o.task == "lm", "unknown task '", o.task, "'; expected lm, passkey or stream");
  std::uniform_int_distribution<std::size_t> offset(0, text.size() - std::size_t(o.length));
  std::vector<std::vector<int>> windows;
  const int n_windows = o.offsets.empty() ? o.sequences : int(o.offsets.size());
  for (int s = 0; s < n_windows; ++s) {
    const std::size_t at = o.offsets.empty() ? offset(rng) : o.offsets[std::size_t(s)];
    KVCACHE_REQUIRE(at + std::size_t(o.length) <= text.size(), "offset ", at, " + length ", o.length,
                    " runs past the end of the text (", text.size(), " bytes)");
    windows.emplace_back();
    for (std::int64_t i = 0; i < o.length; ++i)
      windows.back().push_back(static_cast<unsigned char>(text[at + std::size_t(i)]));
  }
  const auto cfg = model.cache_config(o.length + 8, kvcache::DType::kF16);
  const auto runs = policy_runs(o);
  std::map<std::pair<std::string, double>, Result> results;
  int done = 0;
  for (const auto& [p, b] : runs) {
    Result& r = results[{p, b}];
    for (const auto& w : windows)
      with_policy(p, b, o.length, model, cfg, [&](auto& cache) { run_window(model, cache, w, o.prefix, r); });
    std::fprintf(stderr, "[%d/%zu] %s at %.0f%%: %.4f bits/byte\n", ++done, runs.size(), p.c_str(), b * 100,
                 r.bits / r.bytes);
  }
  const double full_bpb =
      results.count({"full", 1.0}) ? results[{"full", 1.0}].bits / results[{"full", 1.0}].bytes : NAN;
  std::printf("Language modelling: %d windows of %lld bytes from %s (seed %u), prompt %lld bytes, decoded %lld.\n\n",
              n_windows, static_cast<long long>(o.length), o.text.c_str(), o.seed, static_cast<long long>(o.prefix),
              static_cast<long long>(o.length - o.prefix));
  std::printf("| policy | budget | bits/byte | vs full | mean KV bytes | peak KV bytes | decode tok/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::ofstream csv;
  if (!o.csv.empty()) {
    csv.open(o.csv);
    csv << "policy,budget,bits_per_byte,delta_vs_full,mean_kv_bytes,peak_kv_bytes,decode_tokens_per_s\n";
  }
  for (const auto& [p, b] : runs) {
    const Result& r = results[{p, b}];
    const double bpb = r.bits / r.bytes;
    std::printf("| %s | %s | %.4f | %+.4f | %.0f | %.0f | %.0f |\n", p.c_str(),
                p == "full" ? "100%" : (std::to_string(int(b * 100 + 0.5)) + "%").c_str(), bpb, bpb - full_bpb,
                r.kv_sum / r.steps, r.kv_peak, r.steps / r.seconds);
    if (csv)
      csv << p << ',' << b << ',' << bpb << ',' << bpb - full_bpb << ',' << r.kv_sum / r.steps << ',' << r.kv_peak
          << ',' << r.steps / r.seconds << '\n';
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "kvcache-eval: %s\n", e.what());
  return 1;
}
