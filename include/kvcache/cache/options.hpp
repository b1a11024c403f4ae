#pragma once

// What an engine sets when it builds a KVCache, and the names of the score columns KVCache keeps for a policy.

#include <cstdint>
#include <functional>
#include <optional>

#include "kvcache/core/budget.hpp"
#include "kvcache/core/rope.hpp"

namespace kvcache {

struct KVCacheOptions {
  /// Batched eviction: during decode a head may grow to budget + slack before it is cut back to the budget. 0 evicts
  /// every step, as the papers do.
  std::int64_t eviction_slack = 0;
  /// The model's RoPE, for policies that re-rotate stored keys (StreamingLLM's in-cache positions, DMC).
  std::optional<RopeConfig> rope;
  /// Optional per-(layer, KV head) override of the policy's budget, e.g. to give some layers more.
  std::function<ResolvedBudget(int layer, int kv_head, ResolvedBudget policy_budget)> budget_override;
  /// Threads the kernels' workspaces are sized for: 0 (the default) takes the executor's concurrency when the cache
  /// is built; a positive value caps it. An executor whose concurrency grows later (OpenMP's thread count can) runs
  /// prefill with at most this many workers.
  int max_threads = 0;
  /// Softmax scale of attention; 0 means 1 / sqrt(head_dim_k). MLA needs 1 / sqrt(qk_nope + qk_rope), which differs
  /// from the latent row's width (MlaShape::softmax_scale()).
  float softmax_scale = 0.0f;
  /// Every key, value and query row an entry point takes is checked to be finite first: a NaN or infinity is a
  /// kvcache::Error naming where it is, and nothing changes (one pass over the step's new rows, not over the cache).
  /// Off, non-finite inputs give unspecified results, which may differ between ISAs.
  bool check_finite = true;
  /// Chunked prefill with a bounded peak: a policy that can (PolicyNeeds::compress_each_chunk) compresses after every
  /// prompt chunk, not only after the last, so a head holds at most budget + one chunk rows while the prompt goes in
  /// (the capacity, or a pool's blocks, need only that). Each chunk's budgets are resolved against the prompt so far:
  /// budgets written as token counts keep their meaning, a ratio of the prompt keeps that ratio of what has been seen.
  /// Scores accumulate over the chunks the rows saw (H2O, VATP); SnapKV votes with each chunk's last `window` queries
  /// and skips the compression of a chunk shorter than its window. docs/integration.md compares it with compressing
  /// once. Policies that need the whole prompt (FastGen, Full) and those that merge as they go (DMC) are unaffected.
  bool compress_each_chunk = false;
  /// Attention calls per step on each cache layer: 1, or more for a cache that several model layers read (YOCO).
  int readers = 1;
};

/// The accumulated attention scores KVCache exports for a policy: [n_kv, rows, capacity], a row per query head under
/// GqaReduce::kMax (with their maximum in ScoreMax), else one.
struct Scores {
  using type = float;
};
struct ScoreMax {
  using type = float;
};

}  // namespace kvcache
