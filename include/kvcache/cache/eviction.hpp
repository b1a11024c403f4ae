#pragma once

// One head's eviction: rank -> select -> compact. The scores KVCache exports are read from the layer's columns (a row
// per query head and their maximum under GqaReduce::kMax); the policy ranks in place (a Priority the selection
// reads) or into the scratch array; the selection (policy/select.hpp) names the rows to drop; storage compacts them,
// and every column and the policy's on_move follow each moved row.

#include <algorithm>
#include <cstdint>
#include <span>

#include "kvcache/cache/options.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/policy/select.hpp"

namespace kvcache {

/// The scratch of one eviction: priority (for policies that rank into an array), scratch and removals, each at least
/// the head's length.
struct EvictionScratch {
  float* priority = nullptr;
  std::int32_t* scratch = nullptr;
  std::int32_t* removals = nullptr;
};

/// Evicts head in.kv_head of c's layer down to its budget when it holds more than budget + slack. `in` carries the
/// layer, head, prompt length, newest position and after_prefill; the rest is filled here. refresh_max: take the
/// maximum over the query heads' score rows first (prefill column sums do not keep it current).
template <class P>
void evict_rows(const P& policy, PolicyContext<PolicyState<P>>& c, RankInput in, ResolvedBudget budget,
                std::int64_t slack, bool refresh_max, EvictionScratch ws) {
  const int h = in.kv_head;
  const std::size_t cap = std::size_t(c.kv.capacity()), un = std::size_t(c.kv.length(h));
  in.group_size = c.settings.config.shape.group_size();
  in.positions = c.kv.positions(h);
  in.columns = &c.columns;
  const int rows = c.columns.template rows<Scores>();
  if (float* scores = c.columns.template data<Scores>(h); scores != nullptr && rows == 1) {
    in.scores = {scores, un};
  } else if (scores != nullptr) {
    // GqaReduce::kMax: a slot scores what its most attentive query head gave it.
    float* mx = c.columns.template data<ScoreMax>(h);
    if (refresh_max) {
      std::copy_n(scores, un, mx);
      for (std::size_t row = 1; row < std::size_t(rows); ++row)
        for (std::size_t j = 0; j < un; ++j) mx[j] = std::max(mx[j], scores[row * cap + j]);
    }
    in.scores = {mx, un};
    in.query_head_scores = {scores, (std::size_t(rows) - 1) * cap + un};
    in.query_head_stride = static_cast<std::int64_t>(cap);
  }
  const ResolvedBudget b = policy_hooks::budget_now(policy, in, c.state, budget);
  if (b.unlimited() || std::int64_t(un) <= b.total + slack) return;
  Priority priority;
  if constexpr (RanksInPlace<P>) {
    priority = policy_hooks::rank(policy, in, c.state);
  } else {
    const std::span<float> out(ws.priority, un);
    policy_hooks::rank(policy, in, c.state, out);
    priority = Priority::of(out);
  }
  const std::size_t r = select_removals(in.positions, priority, b, std::span(ws.scratch, un),
                                        std::span(ws.removals, un), c.isa, in.newest);
  if (r == 0) return;
  // A paged head that shares blocks with a fork copies them first; with no block left in the pool the eviction waits
  // for a later step (the next append then reports the exhausted pool) rather than fail inside the step.
  (void)c.kv.try_remove(h, std::span<const std::int32_t>(ws.removals, r),
                        [&](std::int64_t from, std::int64_t to) noexcept {
                          c.columns.move(h, from, to);
                          if constexpr (policy_hooks::kHasOnMove<P>) policy.on_move(c, h, from, to);
                        });
}

}  // namespace kvcache
