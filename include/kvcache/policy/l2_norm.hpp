#pragma once

// L2-norm key pruning, "K-norm" (Devoto, Zhao, Scardapane, Minervini, EMNLP 2024; docs/policies/l2_norm.md): keys with
// a low L2 norm tend to receive high attention, so keep the lowest-norm keys (with their values) and evict the highest.
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
#include <cstdint>
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
    n.evict_during_decode = mode == Mode::kEveryStep;
    n.compress_each_chunk = true;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int layer, int, std::int64_t prompt_length) const {
    if (std::find(skip_layers.begin(), skip_layers.end(), layer) != skip_layers.end()) return {};
    return ResolvedBudget{keep.resolve(prompt_length), recent, sinks};
  }

  /// ||k||_2 of each row, taken in f32 from the keys as the engine gave them (rotation keeps the norm).
  struct KeyNorm {
    using type = float;
  };
  void add_columns(SlotColumns& c) const { c.add<KeyNorm>(); }
  void on_append(PolicyContext<NoPolicyState>& c, const AppendedRows& r) const noexcept {
    row_norms(RowNorm::kL2, r.keys, r.head_dim_k, r.count, r.head_dim_k, c.columns.data<KeyNorm>(r.kv_head) + r.first);
  }
  /// Minus the key norm (the highest norms go first), negated by the selection as it reads the norms.
  [[nodiscard]] Priority rank(const RankInput& in) const noexcept { return Priority::negated(in.column<KeyNorm>()); }
};

}  // namespace kvcache
