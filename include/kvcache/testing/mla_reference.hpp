#pragma once

// The naive (decompressed) form of MLA decode in Eigen, in double precision: DeepSeek's attn_impl = "naive", which
// materialises every head's keys [W_UK,h c_j | k_R,j] and values W_UV,h c_j. The oracle for the absorbed path
// (attention/mla.hpp), which must agree with it to rounding.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>

#include "kvcache/attention/mla.hpp"
#include "kvcache/storage/slot_storage.hpp"
#include "kvcache/testing/reference.hpp"

namespace kvcache::reference {

/// latents: the latent layout of `s` (one KV head, rows [c | k_R]); kv_b: [n_heads * (qk_nope + v_head_dim),
/// kv_lora_rank] row-major; q: [n_heads, qk_nope + qk_rope] (q_rope rotated); out: [n_heads, v_head_dim].
/// probabilities (optional): [>= length], += the probabilities summed over all heads.
inline void mla_decode_naive(const MlaShape& s, const LayerSlots& latents, ConstTensorView<float, 2> kv_b,
                             ConstTensorView<float, 2> q, TensorView<float, 2> out, float* probabilities = nullptr) {
  Eigen::MatrixXd rows, unused;
  detail::head_rows(latents, 0, rows, unused);
  const std::int64_t n = rows.rows();
  const int rank = s.kv_lora_rank, dr = s.qk_rope_head_dim, dn = s.qk_nope_head_dim, dv = s.v_head_dim;
  const Eigen::MatrixXd c = rows.leftCols(rank), kr = rows.rightCols(dr);
  Eigen::MatrixXd w(kv_b.dimension(0), rank);
  for (Eigen::Index i = 0; i < w.rows(); ++i)
    for (int j = 0; j < rank; ++j) w(i, j) = kv_b.data()[i * rank + j];
  const double scale = 1.0 / std::sqrt(static_cast<double>(dn + dr));
  for (int h = 0; h < s.n_heads; ++h) {
    const Eigen::MatrixXd w_uk = w.middleRows(std::int64_t(h) * (dn + dv), dn);
    const Eigen::MatrixXd w_uv = w.middleRows(std::int64_t(h) * (dn + dv) + dn, dv);
    Eigen::MatrixXd k(n, dn + dr);  // head h's decompressed keys
    k.leftCols(dn) = c * w_uk.transpose();
    k.rightCols(dr) = kr;
    const Eigen::MatrixXd v = c * w_uv.transpose();  // [n, dv]
    Eigen::VectorXd qh(dn + dr);
    for (int e = 0; e < dn + dr; ++e) qh(e) = q(h, e);
    const Eigen::VectorXd p = detail::softmax_prefix(k, qh, scale, n);
    const Eigen::VectorXd o = n > 0 ? Eigen::VectorXd(v.transpose() * p) : Eigen::VectorXd::Zero(dv);
    for (int e = 0; e < dv; ++e) out(h, e) = static_cast<float>(o(e));
    if (probabilities != nullptr)
      for (std::int64_t j = 0; j < n; ++j) probabilities[j] += static_cast<float>(p(j));
  }
}

}  // namespace kvcache::reference
