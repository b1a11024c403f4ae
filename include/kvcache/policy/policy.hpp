#pragma once

// The Policy concept: what a policy declares it needs, and how it ranks the rows of one (layer, KV head).
//
// A policy is a small value type. It never owns or moves memory; KVCache (cache/kv_cache.hpp) wires the inputs the
// policy declares in needs(), asks it for the budget of each (layer, KV head), and when a head holds more rows than
// its budget (plus the eviction slack during decode) asks it to rank the rows, keeps the protected ones (the first
// `sinks` positions and the `recent` newest) and the best-ranked others, and compacts storage. Stages: observe
// (KVCache accumulates scores from the kernels) -> rank (the policy) -> select (select.hpp) -> apply (storage).
//
// Requirements on P:
//   PolicyNeeds needs() const;                                   what KVCache must compute and when P evicts
//   ResolvedBudget budget(int layer, int kv_head, std::int64_t prompt_length) const;
//   void rank(RankInput const& in, std::span<float> priority) const;   higher priority = keep; NaN ranks lowest
//   static constexpr std::string_view kName;

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

#include "kvcache/core/budget.hpp"
#include "kvcache/core/tensor.hpp"

namespace kvcache {

/// What a policy needs from KVCache. Everything defaults to "nothing", so a score-free policy pays nothing.
struct PolicyNeeds {
  bool prefill_scores = false;         ///< column sums of the probabilities of every prompt query (H2O, VATP)
  std::int64_t prefill_window = 0;     ///< column sums of the last W prompt queries only (SnapKV); 0: none
  bool decode_scores = false;          ///< each decode step's probabilities added to the scores (H2O, VATP)
  bool value_norms = false;            ///< L1 norm of each value row, taken when it is appended (VATP)
  bool key_norms = false;              ///< L2 norm of each key row, taken when it is appended (L2-norm)
  bool in_cache_positions = false;     ///< StreamingLLM's positions inside the cache (needs RoPE re-rotation)
  bool compress_after_prefill = true;  ///< select once the (last chunk of the) prompt is in
  bool evict_during_decode = true;     ///< select after decode steps that leave a head over budget + slack
};

/// Everything a policy may look at to rank the rows of one (layer, KV head). Spans are per slot, [0, length).
struct RankInput {
  int layer = 0;
  int kv_head = 0;
  int group_size = 1;
  std::span<const Position> positions;
  std::span<const float> scores;       ///< accumulated attention, summed over the group's query heads
  std::span<const float> value_norms;  ///< L1
  std::span<const float> key_norms;    ///< L2
  std::int64_t prompt_length = 0;
  bool after_prefill = false;  ///< ranking right after the prompt (else after a decode step)
};

template <class P>
concept Policy = std::copy_constructible<P> && requires(P const& p, const RankInput& in, std::span<float> out) {
  { P::kName } -> std::convertible_to<std::string_view>;
  { p.needs() } -> std::same_as<PolicyNeeds>;
  { p.budget(0, 0, std::int64_t{0}) } -> std::same_as<ResolvedBudget>;
  p.rank(in, out);
};

/// How the scores of a group's query heads become one score per KV head (algorithms.md 10.5). The kernels sum, and
/// sum and mean rank identically; max needs per-query-head scores and is not offered yet.
enum class GqaReduce : std::uint8_t { kSum, kMean };

}  // namespace kvcache
