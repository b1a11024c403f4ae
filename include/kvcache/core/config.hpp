#pragma once

// Validated shapes and cache configuration.

#include <cstdint>

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"

namespace kvcache {

/// Head layout of one attention layer. MHA: n_q_heads == n_kv_heads; MQA: n_kv_heads == 1; GQA in between.
/// Query head h reads KV head h / group_size() (consecutive query heads share a KV head, as in Llama and HF).
///
/// values_in_keys: the latent layout of MLA (DeepSeek-V2, docs/architectures.md). Each cached row is one vector of
/// width head_dim_k = [latent (head_dim_v) | RoPE key] that serves as the key of every query head, and its first
/// head_dim_v elements are also the value; no separate value rows are stored. Queries are then the absorbed ones
/// [W_UK^T q_nope | RoPE(q_rope)] and outputs the latent sums (apply W_UV after): see attention/mla.hpp.
struct AttentionShape {
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim_k = 0;  ///< width of queries and keys
  int head_dim_v = 0;  ///< width of values and outputs; 0 means "same as head_dim_k"
  bool values_in_keys = false;

  [[nodiscard]] int group_size() const noexcept { return n_kv_heads > 0 ? n_q_heads / n_kv_heads : 0; }
  [[nodiscard]] int dim_v() const noexcept { return head_dim_v > 0 ? head_dim_v : head_dim_k; }

  /// Throws Error naming the bad value: heads or dims not positive, or a group size that does not divide.
  void validate() const {
    KVCACHE_REQUIRE(n_q_heads > 0, "n_q_heads must be positive, got ", n_q_heads);
    KVCACHE_REQUIRE(n_kv_heads > 0, "n_kv_heads must be positive, got ", n_kv_heads);
    KVCACHE_REQUIRE(n_q_heads % n_kv_heads == 0, "n_kv_heads = ", n_kv_heads,
                    " does not divide n_q_heads = ", n_q_heads);
    KVCACHE_REQUIRE(head_dim_k > 0 && head_dim_k <= kMaxHeadDim, "head_dim_k must be in [1, ", kMaxHeadDim, "], got ",
                    head_dim_k);
    KVCACHE_REQUIRE(head_dim_v >= 0 && head_dim_v <= kMaxHeadDim, "head_dim_v must be in [0, ", kMaxHeadDim,
                    "] (0 = same as head_dim_k), got ", head_dim_v);
    KVCACHE_REQUIRE(!values_in_keys || head_dim_v <= head_dim_k, "values_in_keys: the value is the first ", head_dim_v,
                    " elements of each key row, which has only ", head_dim_k);
  }

  static constexpr int kMaxHeadDim = 1024;
};

/// Configuration of the KV storage of one sequence: every layer has the same shape and a fixed row capacity per
/// KV head.
struct CacheConfig {
  int n_layers = 0;
  AttentionShape shape{};
  std::int64_t capacity = 0;  ///< rows per (layer, KV head)
  DType dtype = DType::kF32;

  void validate() const {
    KVCACHE_REQUIRE(n_layers > 0, "n_layers must be positive, got ", n_layers);
    shape.validate();
    KVCACHE_REQUIRE(capacity > 0 && capacity <= kMaxCapacity, "capacity must be in [1, ", kMaxCapacity, "], got ",
                    capacity);
  }

  /// Positions are stored as int32, and slots are addressed with int32 by the remove API.
  static constexpr std::int64_t kMaxCapacity = std::int64_t{1} << 30;
};

}  // namespace kvcache
