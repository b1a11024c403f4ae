#pragma once

// A KVCache for a policy named on a command line, at a budget given as a fraction of some token count: what
// kvcache-eval and the architecture examples (gqa.cpp, mla.cpp, yoco.cpp) run. Names: full, streaming_llm,
// streaming_llm_original, h2o, vatp, l2_norm, snapkv, snapkv_k15, fastgen (whose "budget" is its threshold T), and
// h2o_max, vatp_max, snapkv_max: the same with GqaReduce::kMax (a row ranks by its most attentive query head).

#include <algorithm>
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

/// Builds the cache of the named policy (budget: a fraction of `base` tokens) with the model's cache options and hands
/// it to f. retrieval: L2Norm compresses once (the official pass-key protocol) instead of every step.
template <class Model, class F>
void with_policy(const std::string& name, double budget, std::int64_t base, const Model& model,
                 const kvcache::CacheConfig& cfg, F&& f, bool retrieval = false) {
  using kvcache::Count;
  const std::int64_t rows = budget_rows(budget, base);
  const kvcache::KVCacheOptions opt = model.cache_options();  // MLA: softmax scale; YOCO: two readers; RoPE
  if (name == "full") {
    kvcache::KVCache<kvcache::Full> c(cfg, {}, opt);
    f(c);
  } else if (name == "streaming_llm") {
    kvcache::KVCache<kvcache::StreamingLLM> c(cfg, kvcache::StreamingLLM(4, rows - 4), opt);
    f(c);
  } else if (name == "streaming_llm_original") {
    kvcache::KVCache<kvcache::StreamingLLM> c(
        cfg, kvcache::StreamingLLM(4, rows - 4, kvcache::StreamingLLM::Positions::kOriginal), opt);
    f(c);
  } else if (name == "h2o" || name == "h2o_max") {
    const auto reduce = name == "h2o" ? kvcache::GqaReduce::kSum : kvcache::GqaReduce::kMax;
    kvcache::KVCache<kvcache::H2O> c(cfg, kvcache::H2O(Count::of(rows / 2), Count::of(rows - rows / 2), reduce), opt);
    f(c);
  } else if (name == "vatp" || name == "vatp_max") {
    const auto reduce = name == "vatp" ? kvcache::GqaReduce::kSum : kvcache::GqaReduce::kMax;
    kvcache::KVCache<kvcache::VATP> c(cfg, kvcache::VATP(Count::of(rows / 2), Count::of(rows - rows / 2), 4, reduce),
                                      opt);
    f(c);
  } else if (name == "l2_norm") {
    // The official protocol: compress once after the prompt for retrieval, after every token for language modelling;
    // layers 0 and 1 kept whole (YOCO's one global layer has no such layers).
    const auto mode = retrieval ? kvcache::L2Norm::Mode::kOnce : kvcache::L2Norm::Mode::kEveryStep;
    const std::vector<int> skip = cfg.n_layers > 2 ? std::vector<int>{0, 1} : std::vector<int>{};
    kvcache::KVCache<kvcache::L2Norm> c(cfg, kvcache::L2Norm(Count::of(rows), skip, mode), opt);
    f(c);
  } else if (name == "snapkv" || name == "snapkv_max") {
    const auto reduce = name == "snapkv" ? kvcache::GqaReduce::kSum : kvcache::GqaReduce::kMax;
    kvcache::KVCache<kvcache::SnapKV> c(
        cfg,
        kvcache::SnapKV(Count::of(rows), std::min<std::int64_t>(32, rows), 7, kvcache::SnapKV::Pooling::kMax, reduce),
        opt);
    f(c);
  } else if (name == "snapkv_k15") {  // docs/evaluation.md: on bytes a needle spans ~4x the positions of sub-words
    kvcache::KVCache<kvcache::SnapKV> c(cfg, kvcache::SnapKV(Count::of(rows), std::min<std::int64_t>(32, rows), 15),
                                        opt);
    f(c);
  } else if (name == "fastgen") {  // `budget` is the recovery threshold T; the paper's r_l = r_f = 0.3
    kvcache::KVCache<kvcache::FastGen> c(cfg, kvcache::FastGen(budget, engine::byte_token_classes(model)), opt);
    f(c);
  } else {
    kvcache::detail::throw_error("unknown policy '", name,
                                 "'; known: full, streaming_llm, streaming_llm_original, h2o, h2o_max, vatp, vatp_max, "
                                 "l2_norm, snapkv, snapkv_max, snapkv_k15, fastgen");
  }
}

}  // namespace engine
