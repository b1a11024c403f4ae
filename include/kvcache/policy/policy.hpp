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
// With a multi-threaded executor, KVCache ranks different KV heads of a layer at once (each head is evicted in the
// decode task that finished its attention), so rank() and budget_now() must be safe to call concurrently: const and
// without shared mutable state, as every policy here is.

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

#include "kvcache/core/budget.hpp"
#include "kvcache/core/tensor.hpp"

namespace kvcache {

/// How the scores of a group's query heads become one score per slot of their KV head (algorithms.md 2.7, 6.5, 10.5).
/// kSum and kMean rank identically (the mean is the sum / g), so both keep one accumulated row per KV head, the sum.
/// kMax keeps a row per query head (g floats per slot, accumulated by the kernels as they export) and ranks a slot
/// by its most attentive query head. The paper codes are MHA-only (H2O, VATP) or expand to query heads (SnapKV);
/// kvpress averages. "Expand" (a cache per query head) is not offered: it gives up what GQA saves.
enum class GqaReduce : std::uint8_t { kSum, kMean, kMax };

/// What a policy needs from KVCache. Everything defaults to "nothing", so a score-free policy pays nothing.
struct PolicyNeeds {
  bool prefill_scores = false;         ///< column sums of the probabilities of every prompt query (H2O, VATP)
  std::int64_t prefill_window = 0;     ///< column sums of the last W prompt queries only (SnapKV); 0: none
  bool decode_scores = false;          ///< each decode step's probabilities added to the scores (H2O, VATP)
  bool value_norms = false;            ///< L1 norm of each value row, taken when it is appended (VATP)
  bool key_norms = false;              ///< L2 norm of each key row, taken when it is appended (L2-norm)
  bool in_cache_positions = false;     ///< StreamingLLM's positions inside the cache (needs RoPE re-rotation)
  bool prefill_profile = false;        ///< per-head statistics of the prompt's attention map, then profile() (FastGen)
  bool slot_tags = false;              ///< a tag per row from tag(position), taken when it is appended (FastGen)
  bool merge_on_append = false;        ///< each head may merge a new token into its newest slot (DMC; MergingPolicy)
  bool compress_after_prefill = true;  ///< select once the (last chunk of the) prompt is in
  bool evict_during_decode = true;     ///< select after decode steps that leave a head over budget + slack
  GqaReduce gqa_reduce = GqaReduce::kSum;  ///< how the scores above are reduced over a group's query heads
};

/// Everything a policy may look at to rank the rows of one (layer, KV head). Spans are per slot, [0, length).
struct RankInput {
  int layer = 0;
  int kv_head = 0;
  int group_size = 1;
  std::span<const Position> positions;
  std::span<const float> scores;  ///< accumulated attention, reduced over the group's query heads (sum or max)
  /// GqaReduce::kMax only: each query head's accumulated attention, group_size rows; row i starts at
  /// i * query_head_stride (empty otherwise).
  std::span<const float> query_head_scores;
  std::int64_t query_head_stride = 0;
  std::span<const float> value_norms;  ///< L1
  std::span<const float> key_norms;    ///< L2
  std::span<const std::uint8_t> tags;  ///< the policy's tag(position) of each row (PolicyNeeds::slot_tags)
  std::int64_t prompt_length = 0;
  Position newest = -1;        ///< the newest position the layer has seen (the step's query); -1 if not known
  bool after_prefill = false;  ///< ranking right after the prompt (else after a decode step)
  int head_choice = -1;        ///< what profile() chose for this (layer, KV head); -1: not profiled
};

/// What a profiling policy (PolicyNeeds::prefill_profile) sees of one (layer, KV head) once the prompt is in. With
/// A[i][j] the prompt's causal attention averaged over the group's query heads (attention/profile.hpp):
/// column_sums[j] = sum_i A[i][j]; band_sums[j] = the same over the queries i with 0 <= i - j < window.
struct ProfileInput {
  int layer = 0;
  int kv_head = 0;
  std::span<const Position> positions;
  std::span<const float> column_sums;
  std::span<const float> band_sums;
  std::span<const std::uint8_t> tags;
  std::int64_t prompt_length = 0;  ///< L, the number of prompt queries
  std::int64_t window = 0;         ///< the band's width, from profile_window(L)
};

/// The optional members of a policy that chooses per head from the prompt (FastGen):
///   std::int64_t profile_window(std::int64_t prompt_length) const;   the band width to measure
///   int profile(ProfileInput const& in) const;                        the head's choice, kept by KVCache
/// and of a policy whose budget depends on what the head holds (its choice, its rows' tags):
///   ResolvedBudget budget_now(RankInput const& in, ResolvedBudget static_budget) const;
/// and of a policy that tags rows when they are appended (PolicyNeeds::slot_tags):
///   std::uint8_t tag(Position position) const;
template <class P>
concept ProfilingPolicy = requires(P const& p, const ProfileInput& in) {
  { p.profile_window(std::int64_t{0}) } -> std::convertible_to<std::int64_t>;
  { p.profile(in) } -> std::convertible_to<int>;
};
template <class P>
concept DynamicBudgetPolicy = requires(P const& p, const RankInput& in, ResolvedBudget b) {
  { p.budget_now(in, b) } -> std::same_as<ResolvedBudget>;
};
/// What a merging policy (DMC) decides from, for one (layer, KV head) at one step; keys and queries are pre-RoPE.
struct MergeStep {
  int layer = 0;
  int kv_head = 0;
  Position position = 0;
  std::span<const float> key;      ///< [head_dim]
  std::span<const float> queries;  ///< [group, head_dim], the group's query heads
  int head_dim = 0;
};

/// A policy that merges instead of evicting (PolicyNeeds::merge_on_append): KVCache asks it, per head and step,
/// whether the new token joins the newest slot and with what weight; the slot holds the weighted mean of its group's
/// newest `window` tokens (0: all), keys averaged before RoPE and rotated at the newest position.
template <class P>
concept MergingPolicy = requires(P const& p, const MergeStep& s, int d) {
  { p.merges(s) } -> std::convertible_to<bool>;
  { p.importance(s) } -> std::convertible_to<float>;
  { p.neuron_index(d) } -> std::convertible_to<int>;
  p.validate(d);
  { p.window } -> std::convertible_to<int>;
  { p.zero_neurons } -> std::convertible_to<bool>;
};

/// A policy whose priority is the accumulated score itself (H2O) may say so with `using ScoresArePriority = Self;`,
/// naming its own type, and one whose priority is the score times the value norm (VATP) with `using
/// ScoresTimesValueNormsArePriority = Self;`: KVCache then selects straight from those arrays and skips rank() and
/// its copy. A policy derived from one that overrides rank() inherits an alias naming the base, so it is not mistaken
/// for one.
template <class P>
concept RanksByScores = requires {
  typename P::ScoresArePriority;
  requires std::same_as<typename P::ScoresArePriority, P>;
};
template <class P>
concept RanksByScoresTimesValueNorms = requires {
  typename P::ScoresTimesValueNormsArePriority;
  requires std::same_as<typename P::ScoresTimesValueNormsArePriority, P>;
};
/// A policy whose priority is minus the key norm (L2Norm: the highest norms go) may say so with `using
/// NegatedKeyNormsArePriority = Self;`: the selection then reads the key norms with the sign flipped in its scan,
/// instead of rank() writing a negated copy each step.
template <class P>
concept RanksByNegatedKeyNorms = requires {
  typename P::NegatedKeyNormsArePriority;
  requires std::same_as<typename P::NegatedKeyNormsArePriority, P>;
};
/// A policy whose rows all rank alike, so that only age decides (the oldest unprotected row goes first; StreamingLLM),
/// may say so with `using AgeIsPriority = Self;`: KVCache then skips rank() and its array of equal priorities, and
/// the single-removal scan reads the positions alone.
template <class P>
concept RanksByAge = requires {
  typename P::AgeIsPriority;
  requires std::same_as<typename P::AgeIsPriority, P>;
};

template <class P>
concept TaggingPolicy = requires(P const& p, Position pos) {
  { p.tag(pos) } -> std::convertible_to<std::uint8_t>;
};

template <class P>
concept Policy = std::copy_constructible<P> && requires(P const& p, const RankInput& in, std::span<float> out) {
  { P::kName } -> std::convertible_to<std::string_view>;
  { p.needs() } -> std::same_as<PolicyNeeds>;
  { p.budget(0, 0, std::int64_t{0}) } -> std::same_as<ResolvedBudget>;
  p.rank(in, out);
};

}  // namespace kvcache
