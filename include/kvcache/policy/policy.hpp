#pragma once

// The Policy concept: what a policy declares, how it ranks the rows of one (layer, KV head), and the hooks through
// which it keeps its own state and does its paper's own work.
//
// A policy is a small value type. KVCache (cache/kv_cache.hpp) runs the step
//   append -> [hooks] -> attend (exporting the scores the policy asked for) -> [hooks] -> rank -> select -> compact
// and asks the policy for the budget of each (layer, KV head); when a head holds more rows than its budget (plus the
// eviction slack during decode) it asks for the rows' priorities, keeps the protected ones (the first `sinks`
// positions and the `recent` newest) and the best-ranked others (policy/select.hpp), and compacts storage.
//
// Required of P:
//   static constexpr std::string_view kName;
//   PolicyNeeds needs() const;                              the scores KVCache must export, and when P evicts
//   ResolvedBudget budget(int layer, int kv_head, std::int64_t prompt_length) const;
//   one of the rank forms:
//     Priority rank(RankInput const&) const;                a priority the selection reads in place (select.hpp)
//     void rank(RankInput const&, std::span<float> out) const;       writes one priority per row; NaN ranks lowest
//   (each may take `State const&` after the RankInput). A class derived from a policy that declares its own rank()
//   hides the base's forms, so the selection never uses a base's in-place priority for a derived ranking.
//
// Optional, found by their signatures (State is P's own state type, below; Ctx is PolicyContext<State>):
//   void add_columns(SlotColumns&) const;   declares P's per-slot state (policy/slot_columns.hpp): columns that
//                                           move with the rows, zeroed for new rows, reset and counted by KVCache
//   State make_state(CacheSettings const&) const;   P's own state for the whole cache, made once by KVCache's
//                                           constructor (validate the settings here); State has
//                                           `std::size_t bytes() const` and `void reset()`
//   void on_append(Ctx&, AppendedRows const&) const;        after one head's new rows are stored
//   void before_prefill(Ctx&, std::int64_t tokens, bool last_chunk) const;   before anything changes: throw here
//   void after_prefill_attention(Ctx&, ConstTensorView<float, 3> q, bool last_chunk) const;   the chunk's queries
//   void before_decode_attention(Ctx&, Position query_position) const;   after the step's rows are stored
//   void on_move(Ctx&, int kv_head, std::int64_t from, std::int64_t to) const;   compaction moved a row
//   ResolvedBudget budget_now(RankInput const&, [State const&,] ResolvedBudget static_budget) const;
//   const float* append_token(Ctx&, const float* k, const float* v, Position, const float* q) const;
//                                           P stores the token's rows itself (DMC merges them) and returns the
//                                           queries attention reads; k, v: [n_kv, d], q: [n_q, dk]. A prompt then
//                                           reaches P one token at a time.
//
// Concurrency. With a multi-threaded executor KVCache evicts different KV heads of a layer at once (each head in the
// decode task that finished its attention), so rank(), budget_now() and on_move() must touch only that head's state.

#include <cmath>
#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "kvcache/core/budget.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/policy/select.hpp"
#include "kvcache/policy/slot_columns.hpp"
#include "kvcache/simd/isa.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

/// How the scores of a group's query heads become one score per slot of their KV head. kSum and kMean rank
/// identically (the mean is the sum / g), so both keep one accumulated row per KV head, the sum. kMax keeps a row per
/// query head (g floats per slot, accumulated by the kernels as they export) and ranks a slot by its most attentive
/// query head. The paper codes are MHA-only (H2O, VATP) or expand to query heads (SnapKV); kvpress averages.
/// "Expand" (a cache per query head) is not offered: it gives up what GQA saves.
enum class GqaReduce : std::uint8_t { kSum, kMean, kMax };

/// The attention statistics a policy needs exported by the kernels, and when it evicts. Everything defaults to
/// "nothing", so a score-free policy pays nothing.
struct PolicyNeeds {
  bool prefill_scores = false;         ///< column sums of the probabilities of every prompt query (H2O, VATP)
  std::int64_t prefill_window = 0;     ///< column sums of the last W prompt queries only (SnapKV); 0: none
  bool decode_scores = false;          ///< each decode step's probabilities added to the scores (H2O, VATP)
  bool compress_after_prefill = true;  ///< select once the (last chunk of the) prompt is in
  /// The selection is also sound after any chunk of a prompt, ranking by what the chunks so far exported: KVCache
  /// then compresses after every chunk when KVCacheOptions::compress_each_chunk asks it to (StreamingLLM, H2O, VATP,
  /// L2Norm, SnapKV). False for a policy that needs the whole prompt first (FastGen's profile).
  bool compress_each_chunk = false;
  bool evict_during_decode = true;         ///< select after decode steps that leave a head over budget + slack
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
  std::int64_t prompt_length = 0;
  Position newest = -1;                  ///< the newest position the layer has seen (the step's query); -1 if not known
  bool after_prefill = false;            ///< ranking right after the prompt (else after a decode step)
  const SlotColumns* columns = nullptr;  ///< the layer's per-slot columns

  /// This head's values of the policy's column Tag, one per row (empty if the column does not exist).
  template <class Tag>
  [[nodiscard]] std::span<const typename Tag::type> column() const noexcept {
    return columns == nullptr ? std::span<const typename Tag::type>{}
                              : columns->slots<Tag>(kv_head, std::int64_t(positions.size()));
  }
};

/// What KVCache was built with, as a policy's make_state() sees it.
struct CacheSettings {
  CacheConfig config;
  std::optional<RopeConfig> rope;  ///< the model's RoPE, if the engine gave it (KVCacheOptions::rope)
  float softmax_scale = 0.0f;      ///< 0: 1 / sqrt(head_dim_k)
  int readers = 1;                 ///< attention reads per step of each cache layer (YOCO)
};

/// One layer of the cache, as a policy's hooks see it.
template <class State>
struct PolicyContext {
  int layer = 0;
  LayerSlots& kv;
  SlotColumns& columns;
  State& state;
  const CacheSettings& settings;
  Isa isa = Isa::kScalar;
};

/// One head's new rows as the engine gave them (f32, before rounding to the storage type), stored at slots
/// [first, first + count).
struct AppendedRows {
  int kv_head = 0;
  std::int64_t first = 0;
  std::int64_t count = 0;
  const float* keys = nullptr;  ///< [count, head_dim_k]
  int head_dim_k = 0;
  const float* values = nullptr;  ///< count rows of head_dim_v, value_stride apart (the latent layout: in the keys)
  std::int64_t value_stride = 0;
  int head_dim_v = 0;
  std::span<const Position> positions;  ///< [count]
};

/// Which norm row_norms takes: ||x||_1 (VATP's value norms) or ||x||_2 (L2Norm's key norms).
enum class RowNorm : std::uint8_t { kL1, kL2 };

/// out[i] = the norm of row i of `rows` (count rows of `width` elements, `stride` apart), summed in double. For the
/// per-slot norm columns that policies fill in on_append.
inline void row_norms(RowNorm norm, const float* rows, std::int64_t stride, std::int64_t count, int width,
                      float* out) noexcept {
  for (std::int64_t i = 0; i < count; ++i) {
    const float* x = rows + i * stride;
    double s = 0;
    if (norm == RowNorm::kL1)
      for (int e = 0; e < width; ++e) s += std::abs(double(x[e]));
    else
      for (int e = 0; e < width; ++e) s += double(x[e]) * double(x[e]);
    out[i] = static_cast<float>(norm == RowNorm::kL1 ? s : std::sqrt(s));
  }
}

/// The state of a policy that keeps none.
struct NoPolicyState {
  [[nodiscard]] std::size_t bytes() const noexcept { return 0; }
  void reset() noexcept {}
};

namespace detail {
template <class P>
struct PolicyStateOf {
  using type = NoPolicyState;
};
template <class P>
requires requires(P const& p, const CacheSettings& s) { p.make_state(s); }
struct PolicyStateOf<P> {
  using type = decltype(std::declval<const P&>().make_state(std::declval<const CacheSettings&>()));
};
}  // namespace detail

/// P's own state type (NoPolicyState when P keeps none).
template <class P>
using PolicyState = typename detail::PolicyStateOf<P>::type;

/// P ranks by a priority the selection reads in place (the rank form that returns Priority).
template <class P>
concept RanksInPlace = requires(P const& p, const RankInput& in) {
  { p.rank(in) } -> std::same_as<Priority>;
}
|| requires(P const& p, const RankInput& in, const PolicyState<P>& s) {
  { p.rank(in, s) } -> std::same_as<Priority>;
};
/// P writes one priority per row.
template <class P>
concept RanksIntoArray = requires(P const& p, const RankInput& in, std::span<float> out) {
  p.rank(in, out);
}
|| requires(P const& p, const RankInput& in, const PolicyState<P>& s, std::span<float> out) { p.rank(in, s, out); };

template <class P>
concept Policy = std::copy_constructible<P> && requires(P const& p) {
  { P::kName } -> std::convertible_to<std::string_view>;
  { p.needs() } -> std::same_as<PolicyNeeds>;
  { p.budget(0, 0, std::int64_t{0}) } -> std::same_as<ResolvedBudget>;
} &&(RanksInPlace<P> || RanksIntoArray<P>);

/// P stores each token's rows itself (append_token; DMC).
template <class P>
concept AppendsTokens = requires(P const& p, PolicyContext<PolicyState<P>>& c, const float* x, Position pos) {
  { p.append_token(c, x, x, pos, x) } -> std::same_as<const float*>;
};

namespace policy_hooks {
// Each calls P's hook when P has it, and does nothing (or the default) otherwise.
template <class P>
PolicyState<P> make_state(const P& p, const CacheSettings& s) {
  if constexpr (requires { p.make_state(s); })
    return p.make_state(s);
  else
    return {};
}
template <class P>
void add_columns(const P& p, SlotColumns& c) {
  if constexpr (requires { p.add_columns(c); }) p.add_columns(c);
}
template <class P>
inline constexpr bool kHasOnAppend = requires(P const& p, PolicyContext<PolicyState<P>>& c, const AppendedRows& r) {
  p.on_append(c, r);
};
template <class P>
void on_append(const P& p, PolicyContext<PolicyState<P>>& c, const AppendedRows& r) {
  if constexpr (kHasOnAppend<P>) p.on_append(c, r);
}
template <class P>
void before_prefill(const P& p, PolicyContext<PolicyState<P>>& c, std::int64_t tokens, bool last_chunk) {
  if constexpr (requires { p.before_prefill(c, tokens, last_chunk); }) p.before_prefill(c, tokens, last_chunk);
}
template <class P>
void after_prefill_attention(const P& p, PolicyContext<PolicyState<P>>& c, ConstTensorView<float, 3> q,
                             bool last_chunk) {
  if constexpr (requires { p.after_prefill_attention(c, q, last_chunk); }) p.after_prefill_attention(c, q, last_chunk);
}
template <class P>
void before_decode_attention(const P& p, PolicyContext<PolicyState<P>>& c, Position position) {
  if constexpr (requires { p.before_decode_attention(c, position); }) p.before_decode_attention(c, position);
}
template <class P>
inline constexpr bool kHasOnMove = requires(P const& p, PolicyContext<PolicyState<P>>& c) {
  p.on_move(c, 0, std::int64_t{0}, std::int64_t{0});
};
template <class P>
ResolvedBudget budget_now(const P& p, const RankInput& in, const PolicyState<P>& s, ResolvedBudget b) {
  if constexpr (requires { p.budget_now(in, s, b); })
    return p.budget_now(in, s, b);
  else if constexpr (requires { p.budget_now(in, b); })
    return p.budget_now(in, b);
  else
    return b;
}
template <class P>
Priority rank(const P& p, const RankInput& in, const PolicyState<P>& s) {
  if constexpr (requires { p.rank(in, s); })
    return p.rank(in, s);
  else
    return p.rank(in);
}
template <class P>
void rank(const P& p, const RankInput& in, const PolicyState<P>& s, std::span<float> out) {
  if constexpr (requires { p.rank(in, s, out); })
    p.rank(in, s, out);
  else
    p.rank(in, out);
}
}  // namespace policy_hooks

}  // namespace kvcache
