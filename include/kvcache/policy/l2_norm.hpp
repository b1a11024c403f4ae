#pragma once

// L2-norm key pruning, "K-norm" (Devoto, Zhao, Scardapane, Minervini, EMNLP 2024; algorithms.md 5): keys with a low
// L2 norm tend to receive high attention, so keep the lowest-norm keys (with their values) and evict the highest.
// No attention scores are needed (FlashAttention-compatible). RoPE is a rotation, so the norm of the cached (rotated)
// key is the norm of the raw key.
//
// Official l2compress: per KV head keep ceil(keep_ratio x n) rows, no sinks or recent window, layers in
// `skip_layers` untouched; compress once after the prompt for retrieval tasks (Mode::kOnce, the default), or after
// every token for language modelling (Mode::kEveryStep, which with a ratio budget would shrink geometrically, so
// here the budget is resolved once from the prompt length and then held). Optional `sinks` / `recent` protection is
// cold-compress's KVCacheL2 (global_tokens = 4, recent_window = 10); both default to 0 (official).
// skip_layers default {0, 1} (the README example; the eval scripts' CLI default is {0}).

#include <algorithm>
#include <span>
#include <string_view>
#include <vector>

#include "kvcache/core/error.hpp"
#include "kvcache/policy/policy.hpp"

namespace kvcache {

struct L2Norm {
  enum class Mode : std::uint8_t { kOnce, kEveryStep };
  static constexpr std::string_view kName = "l2_norm";
  Count keep = Count::fraction(0.5, Rounding::kCeil);
  std::vector<int> skip_layers = {0, 1};
  Mode mode = Mode::kOnce;
  std::int64_t sinks = 0;
  std::int64_t recent = 0;

  L2Norm() = default;
  L2Norm(Count keep_, std::vector<int> skip_layers_, Mode mode_ = Mode::kOnce, std::int64_t sinks_ = 0,
         std::int64_t recent_ = 0)
      : keep(keep_), skip_layers(std::move(skip_layers_)), mode(mode_), sinks(sinks_), recent(recent_) {
    KVCACHE_REQUIRE(sinks >= 0 && recent >= 0, "L2Norm: sinks and recent must be >= 0, got ", sinks, " and ", recent);
  }

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.key_norms = true;
    n.evict_during_decode = mode == Mode::kEveryStep;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int layer, int, std::int64_t prompt_length) const {
    if (std::find(skip_layers.begin(), skip_layers.end(), layer) != skip_layers.end()) return {};
    return ResolvedBudget{keep.resolve(prompt_length), recent, sinks};
  }
  using NegatedKeyNormsArePriority = L2Norm;  // rank() below is what KVCache's selection computes in place
  void rank(const RankInput& in, std::span<float> priority) const noexcept {
    for (std::size_t j = 0; j < priority.size(); ++j) priority[j] = -in.key_norms[j];
  }
};

}  // namespace kvcache
