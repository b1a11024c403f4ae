#pragma once

// Reference attention in Eigen, in double precision: the oracle every optimised kernel is tested against. Same
// shapes and semantics as decode.hpp and prefill.hpp; simple and slow (materialises each head's score row).

#include <Eigen/Core>
#include <cmath>
#include <cstdint>

#include "kvcache/core/tensor.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache::reference {

namespace detail {
// Rows [0, length(h)) of head h as doubles, i8 ones dequantized (element x the row's scale).
template <class T>
void head_rows_as(const LayerSlots& kv, int h, Eigen::MatrixXd& k, Eigen::MatrixXd& v) {
  const std::int64_t n = kv.length(h);
  const int dk = kv.head_dim_k(), dv = kv.head_dim_v();
  k.resize(n, dk);
  v.resize(n, dv);
  for (std::int64_t i = 0; i < n; ++i) {
    T const* kr = kv.k_row<T>(h, i);
    const double ks = kv.k_scale(h, i);
    for (int c = 0; c < dk; ++c) k(i, c) = static_cast<double>(to_f32(kr[c])) * ks;
    // The latent layout (MLA): the value is the head of each key row.
    T const* vr = kv.v_row<T>(h, i);
    const double vs = kv.v_scale(h, i);
    for (int c = 0; c < dv; ++c) v(i, c) = static_cast<double>(to_f32(vr[c])) * vs;
  }
}
inline void head_rows(const LayerSlots& kv, int h, Eigen::MatrixXd& k, Eigen::MatrixXd& v) {
  switch (kv.dtype()) {
    case DType::kF32:
      return head_rows_as<float>(kv, h, k, v);
    case DType::kF16:
      return head_rows_as<f16>(kv, h, k, v);
    case DType::kBF16:
      return head_rows_as<bf16>(kv, h, k, v);
    case DType::kI8:
      return head_rows_as<i8>(kv, h, k, v);
  }
}
/// Softmax of scale * (k q) over the first n entries; the rest are 0.
inline Eigen::VectorXd softmax_prefix(const Eigen::MatrixXd& k, const Eigen::VectorXd& q, double scale,
                                      std::int64_t n) {
  Eigen::VectorXd p = Eigen::VectorXd::Zero(k.rows());
  if (n == 0) return p;
  p.head(n) = k.topRows(n) * q * scale;
  const double m = p.head(n).maxCoeff();
  p.head(n) = (p.head(n).array() - m).exp().matrix();
  p.head(n) /= p.head(n).sum();
  return p;
}
}  // namespace detail

/// q: [n_q_heads, head_dim_k], out: [n_q_heads, head_dim_v]. probabilities (optional): [n_kv_heads, stride],
/// += the group's probabilities summed over its query heads; per_query_head: [n_q_heads, stride], one row each.
inline void decode_attention(const LayerSlots& kv, ConstTensorView<float, 2> q, TensorView<float, 2> out,
                             float scale = 0.0f, float* probabilities = nullptr, std::int64_t stride = 0,
                             bool per_query_head = false) {
  const int n_kv = kv.n_kv_heads(), n_q = static_cast<int>(q.dimension(0)), g = n_q / n_kv;
  const int dk = kv.head_dim_k(), dv = kv.head_dim_v();
  const double s = scale != 0.0f ? scale : 1.0 / std::sqrt(static_cast<double>(dk));
  for (int h = 0; h < n_kv; ++h) {
    Eigen::MatrixXd k, v;
    detail::head_rows(kv, h, k, v);
    for (int i = 0; i < g; ++i) {
      const int qh = h * g + i;
      Eigen::VectorXd qv(dk);
      for (int c = 0; c < dk; ++c) qv(c) = q(qh, c);
      const Eigen::VectorXd p = detail::softmax_prefix(k, qv, s, k.rows());
      const Eigen::VectorXd o = v.transpose() * p;
      for (int c = 0; c < dv; ++c) out(qh, c) = static_cast<float>(k.rows() > 0 ? o(c) : 0.0);
      if (probabilities != nullptr)
        for (std::int64_t j = 0; j < k.rows(); ++j)
          probabilities[(per_query_head ? qh : h) * stride + j] += static_cast<float>(p(j));
    }
  }
}

/// q: [n_new, n_q_heads, head_dim_k], out: [n_new, n_q_heads, head_dim_v]; the last n_new rows of each head are the
/// new tokens. column_sums (optional): [n_kv_heads, stride], += probabilities of tokens [begin, end) summed over
/// them and the group; per_query_head: [n_q_heads, stride], one row each.
inline void prefill_attention(const LayerSlots& kv, ConstTensorView<float, 3> q, TensorView<float, 3> out,
                              float scale = 0.0f, float* column_sums = nullptr, std::int64_t stride = 0,
                              std::int64_t begin = 0, std::int64_t end = -1, bool per_query_head = false) {
  const int n_kv = kv.n_kv_heads(), n_q = static_cast<int>(q.dimension(1)), g = n_q / n_kv;
  const std::int64_t n_new = q.dimension(0);
  if (end < 0) end = n_new;
  const int dk = kv.head_dim_k(), dv = kv.head_dim_v();
  const double s = scale != 0.0f ? scale : 1.0 / std::sqrt(static_cast<double>(dk));
  for (int h = 0; h < n_kv; ++h) {
    Eigen::MatrixXd k, v;
    detail::head_rows(kv, h, k, v);
    const std::int64_t n_old = k.rows() - n_new;
    for (std::int64_t t = 0; t < n_new; ++t) {
      for (int i = 0; i < g; ++i) {
        const int qh = h * g + i;
        Eigen::VectorXd qv(dk);
        for (int c = 0; c < dk; ++c) qv(c) = q(t, qh, c);
        const Eigen::VectorXd p = detail::softmax_prefix(k, qv, s, n_old + t + 1);
        const Eigen::VectorXd o = v.transpose() * p;
        for (int c = 0; c < dv; ++c) out(t, qh, c) = static_cast<float>(o(c));
        if (column_sums != nullptr && t >= begin && t < end)
          for (std::int64_t j = 0; j < k.rows(); ++j)
            column_sums[(per_query_head ? qh : h) * stride + j] += static_cast<float>(p(j));
      }
    }
  }
}

}  // namespace kvcache::reference
