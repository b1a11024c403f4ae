#pragma once

// A KVCache for a policy named on a command line, at a budget given as a fraction of some token count: what
// kvcache-eval and the architecture examples (gqa.cpp, mla.cpp, yoco.cpp) run. Names: full, streaming_llm,
// streaming_llm_original, h2o, vatp, l2_norm, snapkv, snapkv_k15, fastgen (whose "budget" is its threshold T), and
// h2o_max, vatp_max, snapkv_max: the same with GqaReduce::kMax (a row ranks by its most attentive query head).

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "engine/tasks.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

/// Rows per layer and KV head for a budget given as a fraction of `base` tokens (at least 40, so that every policy's
/// protected sinks, window and recent rows fit).
inline std::int64_t budget_rows(double fraction, std::int64_t base) {
  return std::max<std::int64_t>(40, std::int64_t(fraction * double(base)));
}

/// Hands f the named policy (budget: a fraction of `base` tokens) and the model's cache options: f(policy, options),
/// so the caller builds the caches (one, or many on a pool). retrieval: L2Norm compresses once (the official pass-key
/// protocol) instead of every step. classes: FastGen's token classes (default: the model's record of the tokens it
/// ran, byte_token_classes; an engine running several sequences on one model gives each its own).
template <class Model, class F>
void visit_policy(const std::string& name, double budget, std::int64_t base, const Model& model, F&& f,
                  bool retrieval = false, std::function<kvcache::TokenClass(kvcache::Position)> classes = {}) {
  using kvcache::Count;
  const std::int64_t rows = budget_rows(budget, base);
  const kvcache::KVCacheOptions opt = model.cache_options();  // MLA: softmax scale; YOCO: two readers; RoPE
  if (name == "full") {
    f(kvcache::Full{}, opt);
  } else if (name == "streaming_llm") {
    f(kvcache::StreamingLLM(4, rows - 4), opt);
  } else if (name == "streaming_llm_original") {
    f(kvcache::StreamingLLM(4, rows - 4, kvcache::StreamingLLM::Positions::kOriginal), opt);
  } else if (name == "h2o" || name == "h2o_max") {
    const auto reduce = name == "h2o" ? kvcache::GqaReduce::kSum : kvcache::GqaReduce::kMax;
    f(kvcache::H2O(Count::of(rows / 2), Count::of(rows - rows / 2), reduce), opt);
  } else if (name == "vatp" || name == "vatp_max") {
    const auto reduce = name == "vatp" ? kvcache::GqaReduce::kSum : kvcache::GqaReduce::kMax;
    f(kvcache::VATP(Count::of(rows / 2), Count::of(rows - rows / 2), 4, reduce), opt);
  } else if (name == "l2_norm") {
    // The official protocol: compress once after the prompt for retrieval, after every token for language modelling;
    // layers 0 and 1 kept whole (YOCO's one global layer has no such layers).
    const auto mode = retrieval ? kvcache::L2Norm::Mode::kOnce : kvcache::L2Norm::Mode::kEveryStep;
    const int layers = model.cache_config(1, kvcache::DType::kF16).n_layers;
    const std::vector<int> skip = layers > 2 ? std::vector<int>{0, 1} : std::vector<int>{};
    f(kvcache::L2Norm(Count::of(rows), skip, mode), opt);
  } else if (name == "snapkv" || name == "snapkv_max") {
    const auto reduce = name == "snapkv" ? kvcache::GqaReduce::kSum : kvcache::GqaReduce::kMax;
    f(kvcache::SnapKV(Count::of(rows), std::min<std::int64_t>(32, rows), 7, kvcache::SnapKV::Pooling::kMax, reduce),
      opt);
  } else if (name == "snapkv_k15") {  // docs/evaluation.md: on bytes a needle spans ~4x the positions of sub-words
    f(kvcache::SnapKV(Count::of(rows), std::min<std::int64_t>(32, rows), 15), opt);
  } else if (name == "fastgen") {  // `budget` is the recovery threshold T; the paper's r_l = r_f = 0.3
    f(kvcache::FastGen(budget, classes ? std::move(classes) : engine::byte_token_classes(model)), opt);
  } else {
    kvcache::detail::throw_error("unknown policy '", name,
                                 "'; known: full, streaming_llm, streaming_llm_original, h2o, h2o_max, vatp, vatp_max, "
                                 "l2_norm, snapkv, snapkv_max, snapkv_k15, fastgen");
  }
}

/// Builds the dense cache of the named policy on cfg (see visit_policy) and hands it to f. chunked: the cache
/// compresses after every prompt chunk (KVCacheOptions::compress_each_chunk).
template <class Model, class F>
void with_policy(const std::string& name, double budget, std::int64_t base, const Model& model,
                 const kvcache::CacheConfig& cfg, F&& f, bool retrieval = false, bool chunked = false) {
  visit_policy(
      name, budget, base, model,
      [&](auto policy, kvcache::KVCacheOptions opt) {
        opt.compress_each_chunk = chunked;
        kvcache::KVCache<decltype(policy)> c(cfg, std::move(policy), opt);
        f(c);
      },
      retrieval);
}

}  // namespace engine
