#pragma once

// Multi-head Latent Attention (DeepSeek-V2; docs/architectures.md) on the latent layout of LayerSlots.
//
// An MLA layer caches, per token, one row [c (kv_lora_rank) | k_R (qk_rope_head_dim)]: the RMS-normalised latent
// and the RoPE key shared by every head. Head h's key is [W_UK,h c | k_R] and its value W_UV,h c, where
// kv_b_proj = [W_UK,0; W_UV,0; W_UK,1; W_UV,1; ...] (rows per head: qk_nope_head_dim, then v_head_dim).
//
// Absorbed decode (DeepSeek's attn_impl = "absorb") never decompresses the cache:
//   q_abs,h = [W_UK,h^T q_nope,h | q_rope,h]                         mla_absorb_queries
//   o_lat,h = sum_j softmax_j(scale * q_abs,h . row_j) c_j            decode_attention / prefill_attention
//   o_h     = W_UV,h o_lat,h                                          mla_apply_values
// With MlaShape::attention_shape() the attention is the ordinary GQA kernel with one KV head and a group of all
// n_heads: the heads are the rows of the kernel's small GEMM, so each latent row is read from memory once per step
// for every head, and the probability export sums over all heads (what score-based policies need on MLA).
// The softmax scale is 1 / sqrt(qk_nope + qk_rope), not 1 / sqrt(row width): pass softmax_scale().

#include <Eigen/Core>
#include <cmath>
#include <cstddef>

#include "kvcache/core/config.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/tensor.hpp"

namespace kvcache {

/// Head dimensions of one MLA layer (names as in DeepSeek-V2's config.json).
struct MlaShape {
  int n_heads = 0;
  int kv_lora_rank = 0;      ///< d_c, the latent width
  int qk_rope_head_dim = 0;  ///< d_R, the shared RoPE key
  int qk_nope_head_dim = 0;  ///< d_h, the content part of each head's query and key
  int v_head_dim = 0;

  void validate() const {
    KVCACHE_REQUIRE(n_heads > 0, "MLA: n_heads must be positive, got ", n_heads);
    KVCACHE_REQUIRE(kv_lora_rank > 0, "MLA: kv_lora_rank must be positive, got ", kv_lora_rank);
    KVCACHE_REQUIRE(qk_rope_head_dim >= 0 && qk_rope_head_dim % 2 == 0,
                    "MLA: qk_rope_head_dim must be even and >= 0, got ", qk_rope_head_dim);
    KVCACHE_REQUIRE(qk_nope_head_dim > 0, "MLA: qk_nope_head_dim must be positive, got ", qk_nope_head_dim);
    KVCACHE_REQUIRE(v_head_dim > 0, "MLA: v_head_dim must be positive, got ", v_head_dim);
    attention_shape().validate();
  }
  /// Elements of one cached row: kv_lora_rank + qk_rope_head_dim (576 for DeepSeek-V2).
  [[nodiscard]] int row_width() const noexcept { return kv_lora_rank + qk_rope_head_dim; }
  [[nodiscard]] int query_width() const noexcept { return qk_nope_head_dim + qk_rope_head_dim; }
  /// The layout the library's storage and kernels use: one KV head of rows [c | k_R], values = c.
  [[nodiscard]] AttentionShape attention_shape() const noexcept {
    return AttentionShape{n_heads, 1, row_width(), kv_lora_rank, /*values_in_keys=*/true};
  }
  [[nodiscard]] float softmax_scale() const noexcept { return 1.0f / std::sqrt(static_cast<float>(query_width())); }
};

namespace detail {
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
inline void check_kv_b(const MlaShape& s, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  KVCACHE_REQUIRE(rows == std::ptrdiff_t(s.n_heads) * (s.qk_nope_head_dim + s.v_head_dim) && cols == s.kv_lora_rank,
                  "MLA: kv_b_proj is [", rows, ", ", cols, "], expected [",
                  s.n_heads * (s.qk_nope_head_dim + s.v_head_dim), ", ", s.kv_lora_rank, "]");
}
}  // namespace detail

/// Folds W_UK into the queries. kv_b: kv_b_proj.weight, [n_heads * (qk_nope + v_head_dim), kv_lora_rank] row-major;
/// q: [n_heads, qk_nope + qk_rope] ([q_nope | q_rope], q_rope already rotated); q_abs: [n_heads, row_width()].
inline void mla_absorb_queries(const MlaShape& s, ConstTensorView<float, 2> kv_b, ConstTensorView<float, 2> q,
                               TensorView<float, 2> q_abs) {
  detail::check_kv_b(s, kv_b.dimension(0), kv_b.dimension(1));
  KVCACHE_REQUIRE(q.dimension(0) == s.n_heads && q.dimension(1) == s.query_width(), "MLA: queries are [",
                  q.dimension(0), ", ", q.dimension(1), "], expected [", s.n_heads, ", ", s.query_width(), "]");
  KVCACHE_REQUIRE(q_abs.dimension(0) == s.n_heads && q_abs.dimension(1) == s.row_width(), "MLA: absorbed queries are [",
                  q_abs.dimension(0), ", ", q_abs.dimension(1), "], expected [", s.n_heads, ", ", s.row_width(), "]");
  const int dn = s.qk_nope_head_dim, dr = s.qk_rope_head_dim, rank = s.kv_lora_rank, per = dn + s.v_head_dim;
  Eigen::Map<const detail::RowMajor> w(kv_b.data(), kv_b.dimension(0), rank);
  for (int h = 0; h < s.n_heads; ++h) {
    Eigen::Map<const Eigen::VectorXf> qn(q.data() + std::ptrdiff_t(h) * s.query_width(), dn);
    Eigen::Map<Eigen::VectorXf> out(q_abs.data() + std::ptrdiff_t(h) * s.row_width(), s.row_width());
    out.head(rank).noalias() = w.middleRows(std::ptrdiff_t(h) * per, dn).transpose() * qn;
    for (int c = 0; c < dr; ++c) out(rank + c) = q.data()[std::ptrdiff_t(h) * s.query_width() + dn + c];
  }
}

/// Applies W_UV to the latent sums: o_lat: [n_heads, kv_lora_rank] -> out: [n_heads, v_head_dim].
inline void mla_apply_values(const MlaShape& s, ConstTensorView<float, 2> kv_b, ConstTensorView<float, 2> o_lat,
                             TensorView<float, 2> out) {
  detail::check_kv_b(s, kv_b.dimension(0), kv_b.dimension(1));
  KVCACHE_REQUIRE(o_lat.dimension(0) == s.n_heads && o_lat.dimension(1) == s.kv_lora_rank, "MLA: latent outputs are [",
                  o_lat.dimension(0), ", ", o_lat.dimension(1), "], expected [", s.n_heads, ", ", s.kv_lora_rank, "]");
  KVCACHE_REQUIRE(out.dimension(0) == s.n_heads && out.dimension(1) == s.v_head_dim, "MLA: outputs are [",
                  out.dimension(0), ", ", out.dimension(1), "], expected [", s.n_heads, ", ", s.v_head_dim, "]");
  const int rank = s.kv_lora_rank, per = s.qk_nope_head_dim + s.v_head_dim;
  Eigen::Map<const detail::RowMajor> w(kv_b.data(), kv_b.dimension(0), rank);
  for (int h = 0; h < s.n_heads; ++h) {
    Eigen::Map<const Eigen::VectorXf> o(o_lat.data() + std::ptrdiff_t(h) * rank, rank);
    Eigen::Map<Eigen::VectorXf> dst(out.data() + std::ptrdiff_t(h) * s.v_head_dim, s.v_head_dim);
    dst.noalias() = w.middleRows(std::ptrdiff_t(h) * per + s.qk_nope_head_dim, s.v_head_dim) * o;
  }
}

}  // namespace kvcache
