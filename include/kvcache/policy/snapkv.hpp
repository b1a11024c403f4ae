#pragma once

// SnapKV (Li, Huang, Yang, Venkitesh, Locatelli, Ye, Cai, Lewis, Chen; NeurIPS 2024, "SnapKV: LLM Knows What You
// are Looking for Before Generation"; docs/policies/snapkv.md). Official snapkv_utils.py, SnapKVCluster.update_kv:
//   vote   the last `window` prompt queries: s[j] = sum over the window's queries of their attention to prefix token
//          j (softmax over all prompt keys, causal inside the window);
//   pool   s along positions (kernel k, stride 1, padding k/2; avg-pool divides by k counting the zero padding,
//          max-pool pads with -inf);
//   keep   the top (capacity - window) prefix tokens by pooled score, and the whole window: `capacity` rows in all.
// Prompts shorter than `capacity` are not compressed; decode then appends without eviction.
//
// GQA (the official code expands the cache to query heads, losing what GQA saves): one selection per KV head.
//   default                 the window scores summed over the group, then pooled. With avg-pool this ranks as
//                           kvpress does (pooling is linear, so the mean of pooled rows is the pooled mean);
//   pool_each_query_head    each query head's scores pooled, then their mean (kvpress's order; with max-pool it
//                           differs from the default);
//   gqa_reduce = kMax       each query head's scores pooled, then their maximum (closest to the official per-head
//                           choice).
// Ties keep the newer position (policy/select.hpp).
// Defaults: window 32, kernel 7, max-pool, capacity 2048: the paper's LongBench configurations. SnapKVCluster's own
// constructor defaults are window 64, kernel 5, avg-pool (kvpress uses those). The kernel must be odd (an even one
// shifts the pooled scores by one).

#include <algorithm>
#include <limits>
#include <numeric>
#include <span>
#include <string_view>
#include <vector>

#include "kvcache/core/error.hpp"
#include "kvcache/policy/policy.hpp"

namespace kvcache {

struct SnapKV {
  enum class Pooling : std::uint8_t { kMax, kAvg };
  static constexpr std::string_view kName = "snapkv";
  Count capacity = Count::of(2048);
  std::int64_t window = 32;
  int kernel = 7;
  Pooling pooling = Pooling::kMax;
  GqaReduce gqa_reduce = GqaReduce::kSum;
  bool pool_each_query_head = false;  ///< pool each query head's scores, then take their mean (kvpress's order)

  SnapKV() = default;
  SnapKV(Count capacity_, std::int64_t window_, int kernel_, Pooling pooling_ = Pooling::kMax,
         GqaReduce gqa_reduce_ = GqaReduce::kSum)
      : capacity(capacity_), window(window_), kernel(kernel_), pooling(pooling_), gqa_reduce(gqa_reduce_) {
    KVCACHE_REQUIRE(window >= 1, "SnapKV: window must be >= 1, got ", window);
    KVCACHE_REQUIRE(kernel >= 1 && kernel % 2 == 1, "SnapKV: the pooling kernel must be odd and >= 1, got ", kernel);
    KVCACHE_REQUIRE(capacity.ratio > 0.0 || capacity.tokens >= window, "SnapKV: a capacity of ", capacity.tokens,
                    " rows cannot hold the observation window of ", window, " (the capacity includes the window)");
  }

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.prefill_window = window;
    n.evict_during_decode = false;
    n.compress_each_chunk = true;  // each chunk's last `window` queries vote (docs/policies/snapkv.md)
    // Pooling each query head needs the scores kept per query head, which is what kMax keeps.
    n.gqa_reduce = pool_each_query_head ? GqaReduce::kMax : gqa_reduce;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t prompt_length) const {
    return ResolvedBudget{capacity.resolve(prompt_length), window, 0};
  }
  /// Pools the window scores along positions (each query head's, then their maximum or mean, when kept per query
  /// head); the prefix (all but the newest `window` positions) gets the pooled score, the window itself is protected
  /// by the budget anyway.
  void rank(const RankInput& in, std::span<float> priority) const {
    const std::size_t n = in.positions.size();
    std::vector<std::int32_t> order(n);  // slots by position (once per prompt: allocation is fine here)
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
      return in.positions[std::size_t(a)] < in.positions[std::size_t(b)];
    });
    const std::int64_t prefix = std::max<std::int64_t>(0, static_cast<std::int64_t>(n) - window);
    const int half = kernel / 2;
    const bool per_head = !in.query_head_scores.empty();
    const int rows = per_head ? in.group_size : 1;
    const bool mean = per_head && gqa_reduce != GqaReduce::kMax;
    for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); ++i) {
      float best = -std::numeric_limits<float>::infinity(), total = 0.0f;
      for (int r = 0; r < rows; ++r) {
        const float* s = per_head ? in.query_head_scores.data() + r * in.query_head_stride : in.scores.data();
        float pooled = pooling == Pooling::kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
        for (std::int64_t o = i - half; o <= i + half; ++o) {
          if (o < 0 || o >= prefix) continue;  // padding: 0 for avg (still divided by k), -inf for max
          const float x = s[order[std::size_t(o)]];
          pooled = pooling == Pooling::kMax ? std::max(pooled, x) : pooled + x;
        }
        if (pooling == Pooling::kAvg) pooled /= static_cast<float>(kernel);
        best = std::max(best, pooled);
        total += pooled;
      }
      if (mean) best = total / static_cast<float>(rows);
      priority[std::size_t(order[std::size_t(i)])] = i < prefix ? best : 0.0f;
    }
  }
};

}  // namespace kvcache
