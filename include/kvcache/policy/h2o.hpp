#pragma once

// H2O, Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023; docs/policies/h2o.md), the official "real-drop" semantics
// (h2o_hf/utils_real_drop/modify_llama.py, H2OKVCache_LayerWise):
//   score[j] = unnormalised sum of the attention every query so far gave token j (prefill: column sums of the
//              causal matrix, so early tokens are favoured, as intended; decode: one row added per step);
//   keep the `recent` newest tokens plus the `heavy` best-scored others; the prompt is cut to heavy + recent at once,
//   then each decode step evicts one token (with KVCacheOptions::eviction_slack > 0, in batches).
// GQA (the official code is MHA-only): scores are summed over the group's query heads before a per-KV-head choice
// (docs/policies/h2o.md; kMean ranks the same); gqa_reduce = kMax ranks a token by its most attentive query head
// instead (the scores are then kept per query head: g floats per slot). Ties: the newer token is kept.
// Budgets: absolute (the official hh_size / recent_size; run_summarization.py uses 1024 / 1024) or ratios of the
// prompt, floored (the masking simulation's heavy_ratio = recent_ratio = 0.1, a 20% budget).

#include <span>
#include <string_view>

#include "kvcache/core/error.hpp"
#include "kvcache/policy/policy.hpp"

namespace kvcache {

struct H2O {
  static constexpr std::string_view kName = "h2o";
  Count heavy = Count::fraction(0.1);
  Count recent = Count::fraction(0.1);
  GqaReduce gqa_reduce = GqaReduce::kSum;

  H2O() = default;
  H2O(Count heavy_, Count recent_, GqaReduce gqa_reduce_ = GqaReduce::kSum)
      : heavy(heavy_), recent(recent_), gqa_reduce(gqa_reduce_) {}

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.prefill_scores = true;
    n.decode_scores = true;
    n.gqa_reduce = gqa_reduce;
    n.compress_each_chunk = true;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t prompt_length) const {
    const std::int64_t h = heavy.resolve(prompt_length), r = recent.resolve(prompt_length);
    return ResolvedBudget{h + r, r, 0};
  }
  /// The accumulated scores themselves, read in place by the selection.
  [[nodiscard]] Priority rank(const RankInput& in) const noexcept { return Priority::of(in.scores); }
};

}  // namespace kvcache
