#pragma once

// The pieces of KVCache's steps that need nothing of the cache but their arguments: shape checks, the kernels'
// score-export options, appending rows (with the policy's on_append), and resolving budgets.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "kvcache/attention/decode.hpp"
#include "kvcache/attention/prefill.hpp"
#include "kvcache/cache/options.hpp"
#include "kvcache/policy/policy.hpp"

namespace kvcache::detail {

// Shapes of a step's queries ([tokens, n_q_heads, head_dim_k]) and output ([tokens, n_q_heads, head_dim_v]),
// checked before anything is appended, so that a rejected call changes nothing. Keys, values and positions are
// checked by the storage's append, which also changes nothing when it throws.
inline void check_step(const AttentionShape& sh, std::int64_t q_tokens, std::int64_t q_heads, std::int64_t q_dim,
                       std::int64_t o_tokens, std::int64_t o_heads, std::int64_t o_dim, std::int64_t tokens) {
  KVCACHE_REQUIRE(q_tokens == tokens && q_heads == sh.n_q_heads && q_dim == sh.head_dim_k, "queries are [", q_tokens,
                  ", ", q_heads, ", ", q_dim, "], expected [", tokens, ", ", sh.n_q_heads, ", ", sh.head_dim_k, "]");
  KVCACHE_REQUIRE(o_tokens == tokens && o_heads == sh.n_q_heads && o_dim == sh.dim_v(), "the output is [", o_tokens,
                  ", ", o_heads, ", ", o_dim, "], expected [", tokens, ", ", sh.n_q_heads, ", ", sh.dim_v(), "]");
}

// A step's positions: non-negative and strictly increasing within the sequence, so each comes after `newest`, the
// newest position the layer holds (-1 when it holds none). Checked before anything is appended: recency, sinks and
// the in-cache rotation all read a row's age from its position.
inline void check_positions(std::span<const Position> positions, Position newest) {
  Position prev = newest;
  for (Position p : positions) {
    KVCACHE_REQUIRE(p >= 0, "positions must be >= 0, got ", p);
    KVCACHE_REQUIRE(p > prev, "positions must increase strictly within a sequence: ", p, " comes after ", prev);
    prev = p;
  }
}

// KVCacheOptions::check_finite: n floats, every one finite, or an Error naming the first that is not.
inline void check_finite(const float* x, std::size_t n, const char* what) {
  std::uint32_t any = 0;  // an all-ones exponent is a NaN or an infinity; integer ORs vectorise
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    any |= std::uint32_t((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (any == 0) return;
  std::size_t i = 0;
  while (i < n && std::isfinite(x[i])) ++i;
  KVCACHE_REQUIRE(false, what, " hold a non-finite value (", x[i], ") at element ", i,
                  " (KVCacheOptions::check_finite)");
}

// Prefill exports column sums into the Scores column: of every query (prefill_scores), or of the last W queries of
// a chunk after which the policy compresses (prefill_window).
inline PrefillOptions prefill_options(const PolicyNeeds& needs, SlotColumns& columns, float scale, std::int64_t m,
                                      bool compresses) {
  PrefillOptions opt;
  opt.scale = scale;
  const std::int64_t window = needs.prefill_window;
  if (needs.prefill_scores || (compresses && window > 0)) {
    opt.column_sums = columns.data<Scores>(0);
    opt.column_sums_stride = columns.capacity();
    opt.column_sums_begin = needs.prefill_scores ? 0 : m - window;
    opt.column_sums_per_query_head = columns.rows<Scores>() > 1;
  }
  return opt;
}

// Decode adds each step's probabilities to the Scores column (and keeps ScoreMax current under GqaReduce::kMax).
inline DecodeOptions decode_options(const PolicyNeeds& needs, SlotColumns& columns, float scale) {
  DecodeOptions opt;
  opt.scale = scale;
  if (needs.decode_scores) {
    opt.probabilities = columns.data<Scores>(0);
    opt.probabilities_stride = columns.capacity();
    opt.probabilities_per_query_head = columns.rows<Scores>() > 1;
    opt.probabilities_max = columns.data<ScoreMax>(0);
  }
  return opt;
}

// Appends k, v ([n_kv, m, d]) at `positions`; the new slots' columns start at zero, then the policy's on_append sees
// each head's rows as given (f32). first: scratch of n_kv entries. newest: the layer's newest position, updated.
template <class P>
void append_rows(const P& policy, PolicyContext<PolicyState<P>>& c, ConstTensorView<float, 3> k,
                 ConstTensorView<float, 3> v, std::span<const Position> positions, std::span<std::int64_t> first,
                 Position& newest) {
  LayerSlots& kv = c.kv;
  const int n_kv = kv.n_kv_heads(), dk = kv.head_dim_k(), dv = kv.head_dim_v();
  const std::int64_t m = k.dimension(1);
  for (int h = 0; h < n_kv; ++h) first[std::size_t(h)] = kv.length(h);
  kv.append(k, v, positions);  // validates shapes and capacity
  for (Position p : positions) newest = std::max(newest, p);
  for (int h = 0; h < n_kv; ++h) c.columns.clear_slots(h, first[std::size_t(h)], m);
  if constexpr (policy_hooks::kHasOnAppend<P>) {
    for (int h = 0; h < n_kv; ++h) {
      AppendedRows r;
      r.kv_head = h;
      r.first = first[std::size_t(h)];
      r.count = m;
      r.keys = k.data() + std::int64_t(h) * m * dk;
      r.head_dim_k = dk;
      // The latent layout's value is the head of the key row.
      r.values = kv.values_in_keys() ? r.keys : v.data() + std::int64_t(h) * m * dv;
      r.value_stride = kv.values_in_keys() ? dk : dv;
      r.head_dim_v = dv;
      r.positions = positions;
      policy.on_append(c, r);
    }
  }
}

// The budget of KV head h of layer l after a prompt of prompt_length tokens (the engine's override applied), checked:
// at least one row, and room for its protected rows. A budget above the capacity is not an error (a cache sized for
// short sequences never reaches it); the append that would pass the capacity is.
template <class P>
ResolvedBudget checked_budget(const P& policy, const KVCacheOptions& options, int l, int h,
                              std::int64_t prompt_length) {
  ResolvedBudget b = policy.budget(l, h, prompt_length);
  if (options.budget_override) b = options.budget_override(l, h, b);
  if (b.unlimited()) return b;
  KVCACHE_REQUIRE(b.total >= 1, "policy '", P::kName, "': layer ", l, " head ", h, " has a budget of ", b.total,
                  " rows (prompt of ", prompt_length, " tokens)");
  KVCACHE_REQUIRE(b.sinks >= 0 && b.recent >= 0 && b.sinks + b.recent <= b.total, "policy '", P::kName, "': layer ", l,
                  " head ", h, " has a budget of ", b.total, " rows, smaller than its ", b.sinks, " sinks + ", b.recent,
                  " recent rows");
  return b;
}

// Checks every KV head's budget of layer l for a prompt of prompt_length tokens; throws for the first invalid one.
template <class P>
void check_budgets(const P& policy, const KVCacheOptions& options, int l, int n_kv, std::int64_t prompt_length) {
  for (int h = 0; h < n_kv; ++h) checked_budget(policy, options, l, h, prompt_length);
}

// Every KV head's budget of layer l after a prompt of prompt_length tokens; nothing is stored unless all are valid.
template <class P>
void resolve_budgets(const P& policy, const KVCacheOptions& options, int l, std::int64_t prompt_length,
                     std::vector<ResolvedBudget>& budgets) {
  const int n_kv = int(budgets.size());
  check_budgets(policy, options, l, n_kv, prompt_length);
  for (int h = 0; h < n_kv; ++h) budgets[std::size_t(h)] = checked_budget(policy, options, l, h, prompt_length);
}

}  // namespace kvcache::detail
