#pragma once

// The scratch KVCache's steps run in, all allocated by its constructor and fixed after it: the attention kernels'
// workspaces and the eviction's arrays (one region per KV head when an executor may evict heads at once).

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "kvcache/attention/decode.hpp"
#include "kvcache/attention/prefill.hpp"
#include "kvcache/cache/eviction.hpp"
#include "kvcache/core/config.hpp"

namespace kvcache {

struct CacheWorkspaces {
  PrefillWorkspace prefill;
  DecodeWorkspace decode;
  std::size_t regions = 1;  // eviction regions: priority, scratch, removals are [regions, capacity]
  std::vector<float> priority;
  std::vector<std::int32_t> scratch, removals;
  std::vector<float> token_k, token_v;  // one prompt token's keys and values, [n_kv, d], for token-wise policies

  /// threads: the kernels' workers; regions: eviction regions; priorities: whether rank() writes an array;
  /// probabilities: whether decode exports them; tokens: whether a prompt is split into tokens.
  CacheWorkspaces(const CacheConfig& c, int threads, std::size_t regions_, bool priorities, bool probabilities,
                  bool tokens)
      : prefill(c.shape, std::max(1, threads)),
        decode(c.shape, c.capacity, std::max(1, threads), probabilities),
        regions(regions_) {
    const std::size_t cap = std::size_t(c.capacity) * regions;
    if (priorities) priority.assign(cap, 0.0f);
    scratch.assign(cap, 0);
    removals.assign(cap, 0);
    if (tokens) {
      token_k.assign(std::size_t(c.shape.n_kv_heads) * std::size_t(c.shape.head_dim_k), 0.0f);
      token_v.assign(std::size_t(c.shape.n_kv_heads) * std::size_t(c.shape.dim_v()), 0.0f);
    }
  }

  /// Head h's eviction scratch (region 0 when there is one).
  [[nodiscard]] EvictionScratch slice(int h, std::int64_t capacity) noexcept {
    const std::size_t at = regions > 1 ? std::size_t(h) * std::size_t(capacity) : 0;
    return {priority.empty() ? nullptr : priority.data() + at, scratch.data() + at, removals.data() + at};
  }
  [[nodiscard]] std::size_t bytes() const noexcept {
    const auto b = [](const auto& v) { return v.size() * sizeof(v[0]); };
    return prefill.bytes() + decode.bytes() + b(priority) + b(scratch) + b(removals) + b(token_k) + b(token_v);
  }
};

}  // namespace kvcache
