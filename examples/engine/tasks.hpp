#pragma once

// The three evaluation tasks of kvcache-eval and the paper examples, over any engine (engine/tinylm.hpp) and cache:
// teacher-forced language modelling of a window, greedy pass-key retrieval, and a long stream scored per segment. Each
// task takes a cache the caller built (so any policy, budget and storage type), runs the engine through it and adds
// what it measured into a TaskStats. Not part of the installed library.

#include <Eigen/Core>
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/tinylm.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

/// Everything a task measures; sums, so that several windows or prompts add into one.
struct TaskStats {
  double bits = 0;     ///< -log2 p(next byte) summed over the scored bytes
  double scored = 0;   ///< bytes scored
  double kv_sum = 0;   ///< KV bytes held after each decode step, summed
  double kv_peak = 0;  ///< the most KV bytes held after any decode step
  double steps = 0;    ///< decode steps
  double decode_seconds = 0;
  double hits = 0, prompts = 0;  ///< pass-key retrieval
  double prefill_peak_rows = 0;  ///< the most rows any (layer, KV head) held while a prompt went in

  [[nodiscard]] double bits_per_byte() const { return bits / scored; }
  [[nodiscard]] double mean_kv_bytes() const { return kv_sum / steps; }
  [[nodiscard]] double decode_tokens_per_s() const { return steps / decode_seconds; }
};

/// FastGen's token classes for a byte-level model (docs/policies/fastgen.md, MODELS.md): the first `special` positions
/// of the sequence play the special tokens (the models have no BOS; these are the bytes that act as sinks), and a byte
/// made only of whitespace or ASCII punctuation is punctuation (cold-compress's is_punc_id, on bytes).
inline kvcache::TokenClass byte_class(kvcache::Position p, int byte, int special = 4) {
  if (p < special) return kvcache::TokenClass::kSpecial;
  const bool punct = byte >= 0 && byte < 128 && (std::ispunct(byte) || std::isspace(byte));
  return punct ? kvcache::TokenClass::kPunctuation : kvcache::TokenClass::kOther;
}
/// The classes of the tokens the model last ran at each position (one sequence per model).
inline std::function<kvcache::TokenClass(kvcache::Position)> byte_token_classes(const TinyLm& model, int special = 4) {
  return [&model, special](kvcache::Position p) { return byte_class(p, model.token_at(p), special); };
}
/// The classes of one sequence's bytes (position p holds bytes[p]), for engines that run several sequences on one
/// model. The bytes must outlive the function.
inline std::function<kvcache::TokenClass(kvcache::Position)> byte_classes_of(std::span<const int> bytes,
                                                                             int special = 4) {
  return [bytes, special](kvcache::Position p) {
    return byte_class(p, p >= 0 && std::size_t(p) < bytes.size() ? bytes[std::size_t(p)] : -1, special);
  };
}

/// The whole file; an Error naming it when it cannot be read.
inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KVCACHE_REQUIRE(in.good(), "cannot open text file '", path, "'");
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

/// Bytes [at, at + length) of text as token ids; an Error when the text is too short.
inline std::vector<int> byte_window(const std::string& text, std::size_t at, std::int64_t length) {
  KVCACHE_REQUIRE(length >= 0 && at + std::size_t(length) <= text.size(), "the text has ", text.size(),
                  " bytes, fewer than the requested ", length, " from offset ", at);
  std::vector<int> out(static_cast<std::size_t>(length));
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<unsigned char>(text[at + i]);
  return out;
}

/// n window offsets for windows of `length` bytes, drawn uniformly from the seed (the same for every policy).
inline std::vector<std::size_t> draw_offsets(const std::string& text, std::int64_t length, int n, unsigned seed) {
  KVCACHE_REQUIRE(std::int64_t(text.size()) >= length, "the text has ", text.size(),
                  " bytes, fewer than the requested length ", length);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<std::size_t> at(0, text.size() - std::size_t(length));
  std::vector<std::size_t> out;
  for (int i = 0; i < n; ++i) out.push_back(at(rng));
  return out;
}

namespace detail {
inline double surprisal_bits(const Eigen::VectorXf& logits, int next) {
  const float mx = logits.maxCoeff();
  const double lse = double(mx) + std::log((logits.array() - mx).exp().sum());
  return (lse - double(logits(next))) / std::log(2.0);
}
using Clock = std::chrono::steady_clock;
}  // namespace detail

/// The most rows any (layer, KV head) of the cache holds.
template <class Cache>
std::int64_t max_rows(const Cache& cache) {
  std::int64_t n = 0;
  for (int l = 0; l < cache.config().n_layers; ++l) n = std::max(n, cache.layer(l).max_length());
  return n;
}

/// Prefills tokens at positions first, first + 1, ... in chunks of `chunk` tokens (0: one call; a remainder shorter
/// than SnapKV's window joins the chunk before it), or in one call when the policy cannot compress chunk by chunk
/// (FastGen profiles the whole prompt). Returns the last chunk's logits;
/// peak_rows becomes at least the most rows a head held meanwhile: a chunk's rows are appended before the policy
/// compresses, so that is the rows before the chunk plus the chunk.
template <class Model, class Cache>
Matrix prefill_chunked(Model& model, Cache& cache, std::span<const int> tokens, kvcache::Position first,
                       std::int64_t chunk, double& peak_rows) {
  const auto n = std::int64_t(tokens.size());
  const kvcache::PolicyNeeds needs = cache.policy().needs();
  if (chunk <= 0 || !needs.compress_each_chunk) chunk = n;
  Matrix logits;
  for (std::int64_t a = 0, m = 0; a < n; a += m) {
    m = std::min(chunk, n - a);
    if (n - a - m < needs.prefill_window) m = n - a;  // the last chunk holds SnapKV's whole observation window
    peak_rows = std::max(peak_rows, double(max_rows(cache) + m));
    logits = model.prefill(cache, tokens.subspan(std::size_t(a), std::size_t(m)), first + kvcache::Position(a),
                           /*last_chunk=*/a + m == n);
  }
  return logits;
}

/// Language modelling: prefill window[0, prefix) in chunks of `chunk` bytes (0: one call; the policy compresses after
/// the last, or after each with KVCacheOptions::compress_each_chunk), then decode the rest byte by byte with teacher
/// forcing and the policy active; scores every byte after the prefix.
template <class Model, class Cache>
void language_model(Model& model, Cache& cache, std::span<const int> window, std::int64_t prefix, TaskStats& s,
                    std::int64_t chunk = 0) {
  const Matrix logits = prefill_chunked(model, cache, window.first(std::size_t(prefix)), 0, chunk, s.prefill_peak_rows);
  Eigen::VectorXf last = logits.row(logits.rows() - 1).transpose();
  const auto t0 = detail::Clock::now();
  for (std::int64_t t = prefix; t < std::int64_t(window.size()); ++t) {
    s.bits += detail::surprisal_bits(last, window[std::size_t(t)]);
    s.scored += 1;
    last = model.decode(cache, window[std::size_t(t)], kvcache::Position(t));
    const double kv = double(cache.kv_bytes());
    s.kv_sum += kv;
    s.kv_peak = std::max(s.kv_peak, kv);
    s.steps += 1;
  }
  s.decode_seconds += std::chrono::duration<double>(detail::Clock::now() - t0).count();
}

/// A long stream fed one byte at a time from the first (one-token prefill, then decode): bits[k] and count[k] gain
/// the surprisal of every byte in segment k (bytes 1..segment are segment 0, and so on).
template <class Model, class Cache>
void stream(Model& model, Cache& cache, std::span<const int> seq, std::int64_t segment, std::vector<double>& bits,
            std::vector<double>& count, TaskStats& s) {
  const std::size_t segments = std::size_t((std::int64_t(seq.size()) - 1 + segment - 1) / segment);
  bits.resize(std::max(bits.size(), segments), 0.0);
  count.resize(std::max(count.size(), segments), 0.0);
  const Matrix first = model.prefill(cache, seq.first(1), 0);
  Eigen::VectorXf last = first.row(0).transpose();
  const auto t0 = detail::Clock::now();
  for (std::int64_t t = 1; t < std::int64_t(seq.size()); ++t) {
    const double b = detail::surprisal_bits(last, seq[std::size_t(t)]);
    const std::size_t k = std::size_t((t - 1) / segment);
    bits[k] += b;
    count[k] += 1;
    s.bits += b;
    s.scored += 1;
    last = model.decode(cache, seq[std::size_t(t)], kvcache::Position(t));
    const double kv = double(cache.kv_bytes());
    s.kv_sum += kv;
    s.kv_peak = std::max(s.kv_peak, kv);
    s.steps += 1;
  }
  s.decode_seconds += std::chrono::duration<double>(detail::Clock::now() - t0).count();
}

/// The baseline for a long stream that the StreamingLLM paper calls sliding window with re-computation: each segment
/// is scored by a fresh full cache that first prefills the `context` bytes before it (positions from 0, so within the
/// trained length), then decodes the segment. Slow in a real engine (it recomputes the context for every segment);
/// here it says what the model can do on each segment's text with a short clean context.
template <class Model, class MakeCache>
void stream_recompute(Model& model, MakeCache&& make_cache, std::span<const int> seq, std::int64_t segment,
                      std::int64_t context, std::vector<double>& bits, std::vector<double>& count, TaskStats& s) {
  const auto L = std::int64_t(seq.size());
  const std::size_t segments = std::size_t((L - 1 + segment - 1) / segment);
  bits.resize(std::max(bits.size(), segments), 0.0);
  count.resize(std::max(count.size(), segments), 0.0);
  for (std::size_t k = 0; k < segments; ++k) {
    const std::int64_t begin = 1 + std::int64_t(k) * segment, end = std::min(L, begin + segment);
    const std::int64_t from = std::max<std::int64_t>(0, begin - context);
    auto cache = make_cache();
    const Matrix logits = model.prefill(cache, seq.subspan(std::size_t(from), std::size_t(begin - from)), 0);
    Eigen::VectorXf last = logits.row(logits.rows() - 1).transpose();
    const auto t0 = detail::Clock::now();
    for (std::int64_t t = begin; t < end; ++t) {
      const double b = detail::surprisal_bits(last, seq[std::size_t(t)]);
      bits[k] += b;
      count[k] += 1;
      s.bits += b;
      s.scored += 1;
      if (t + 1 < end) {
        last = model.decode(cache, seq[std::size_t(t)], kvcache::Position(t - from));
        s.steps += 1;
      }
    }
    s.decode_seconds += std::chrono::duration<double>(detail::Clock::now() - t0).count();
  }
}

/// A pass-key prompt in the format the models were trained on (MODELS.md): filler text with the needle at a depth,
/// then the question. The answer is the five digits of `key`.
struct PasskeyPrompt {
  std::vector<int> context, question;
  std::string key;
  double depth = 0;
};

/// `per_depth` prompts of `length` bytes at each depth, drawn from the seed (the same for every policy).
inline std::vector<PasskeyPrompt> passkey_prompts(const std::string& text, std::int64_t length,
                                                  const std::vector<double>& depths, int per_depth, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> digits(10000, 99999);
  const std::string question = "\nWhat is the pass key? The pass key is ";
  std::vector<PasskeyPrompt> out;
  for (double depth : depths) {
    KVCACHE_REQUIRE(depth >= 0 && depth <= 1, "a needle depth is a fraction in [0, 1], got ", depth);
    for (int n = 0; n < per_depth; ++n) {
      PasskeyPrompt p;
      p.key = std::to_string(digits(rng));
      p.depth = depth;
      std::string needle(" The pass key is ");
      needle.append(p.key).append(". Remember it. ").append(p.key).append(" is the pass key. ");
      KVCACHE_REQUIRE(length > std::int64_t(needle.size() + question.size()), "a pass-key prompt of ", length,
                      " bytes has no room for its needle and question");
      const std::size_t fill = std::size_t(length) - needle.size() - question.size();
      KVCACHE_REQUIRE(text.size() > fill + 1, "the text has ", text.size(), " bytes, too few for a ", length,
                      "-byte pass-key prompt");
      const std::size_t at = std::uniform_int_distribution<std::size_t>(0, text.size() - fill - 1)(rng);
      const std::size_t d = std::size_t(depth * double(fill));
      for (std::size_t i = 0; i < fill; ++i) {
        if (i == d)
          for (char c : needle) p.context.push_back(static_cast<unsigned char>(c));
        p.context.push_back(static_cast<unsigned char>(text[at + i]));
      }
      if (d == fill)
        for (char c : needle) p.context.push_back(static_cast<unsigned char>(c));
      for (char c : question) p.question.push_back(static_cast<unsigned char>(c));
      out.push_back(std::move(p));
    }
  }
  return out;
}

/// One pass-key prompt through a cache: true when the five greedy bytes are the key. Question-aware: the whole prompt
/// is prefilled, then the policy compresses. Question-agnostic: the context is prefilled and compressed, then the
/// question is prefilled as a further chunk with no new selection (what a chat engine can do, since it compresses
/// before it has seen the question).
template <class Model, class Cache>
bool passkey(Model& model, Cache& cache, const PasskeyPrompt& p, bool question_aware, TaskStats& s) {
  Matrix logits;
  if (question_aware) {
    std::vector<int> all = p.context;
    all.insert(all.end(), p.question.begin(), p.question.end());
    logits = model.prefill(cache, all, 0);
  } else {
    model.prefill(cache, p.context, 0);
    logits = model.prefill(cache, p.question, kvcache::Position(p.context.size()), /*last_chunk=*/false);
  }
  Eigen::VectorXf last = logits.row(logits.rows() - 1).transpose();
  std::string answer;
  auto pos = kvcache::Position(p.context.size() + p.question.size());
  const auto t0 = detail::Clock::now();
  for (std::size_t i = 0; i < p.key.size(); ++i) {
    Eigen::Index best;
    last.maxCoeff(&best);
    answer += char(best);
    if (i + 1 < p.key.size()) {
      last = model.decode(cache, int(best), pos++);
      const double kv = double(cache.kv_bytes());
      s.kv_sum += kv;
      s.kv_peak = std::max(s.kv_peak, kv);
      s.steps += 1;
    }
  }
  s.decode_seconds += std::chrono::duration<double>(detail::Clock::now() - t0).count();
  const bool hit = answer == p.key;
  s.hits += hit ? 1 : 0;
  s.prompts += 1;
  return hit;
}

}  // namespace engine
