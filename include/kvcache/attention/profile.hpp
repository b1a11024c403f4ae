#pragma once

// Statistics of a prompt's full causal attention map, for policies that choose per head how to compress from how the
// head attends to the prompt (FastGen's profiling, docs/policies/fastgen.md). For each KV head, with A[i][j] the
// attention of prompt query i to key j averaged over the group's query heads:
//   column_sums[j] += sum_i A[i][j]                    (all prompt queries)
//   band_sums[j]   += sum_{i : 0 <= i - j < window} A[i][j]   (the queries within `window` after j)
// from which the attention recovered by any union of column sets and a local window follows without the L x L map.
//
// This recomputes the attention of the prompt (O(L^2 d) per query head, in Eigen, blocks of 256 queries, one
// [256, L] block of logits at a time): a cost FastGen accepts at prompt time (its profiling is FlashAttention-
// incompatible by nature, docs/policies/fastgen.md). Allocates its scratch; it is a configuration-time step, not a hot
// path.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

/// kv: one layer whose every head holds exactly the prompt (m rows, in prompt order, nothing evicted yet).
/// q: [m, n_q_heads, head_dim_k], the prompt's queries, rotated as for attention. window >= 1.
/// column_sums, band_sums: [n_kv_heads, stride], rows [0, m) accumulated into (not cleared).
/// scale: 0 means 1 / sqrt(head_dim_k), as the kernels.
inline void attention_profile(const LayerSlots& kv, ConstTensorView<float, 3> q, std::int64_t window,
                              float* column_sums, float* band_sums, std::int64_t stride, float scale = 0.0f) {
  const std::int64_t m = q.dimension(0);
  const int n_kv = kv.n_kv_heads(), dk = kv.head_dim_k();
  const int g = int(q.dimension(1)) / n_kv;
  KVCACHE_REQUIRE(q.dimension(1) == std::int64_t(g) * n_kv && q.dimension(2) == dk, "attention_profile: queries are [",
                  m, ", ", q.dimension(1), ", ", q.dimension(2), "], expected [", m, ", a multiple of ", n_kv, ", ", dk,
                  "]");
  KVCACHE_REQUIRE(window >= 1, "attention_profile: the window must be >= 1, got ", window);
  KVCACHE_REQUIRE(stride >= m, "attention_profile: a stride of ", stride, " is smaller than the ", m, " prompt rows");
  for (int h = 0; h < n_kv; ++h)
    KVCACHE_REQUIRE(kv.length(h) == m, "attention_profile: KV head ", h, " holds ", kv.length(h),
                    " rows, but profiling needs exactly the ", m, " prompt rows (the whole prompt in one chunk)");
  if (m == 0) return;
  const float s = scale > 0.0f ? scale : 1.0f / std::sqrt(float(dk));
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  constexpr std::int64_t kBlock = 256;
  RowMatrix keys(m, dk), qb, logits;
  for (int h = 0; h < n_kv; ++h) {
    auto load = [&](auto tag) {
      using T = decltype(tag);
      for (std::int64_t j = 0; j < m; ++j) {
        T const* k = kv.k_row<T>(h, j);
        const float sc = kv.k_scale(h, j);  // 1 unless i8
        for (int c = 0; c < dk; ++c) keys(j, c) = to_f32(k[c]) * sc;
      }
    };
    switch (kv.dtype()) {
      case DType::kF32:
        load(float{});
        break;
      case DType::kF16:
        load(f16{});
        break;
      case DType::kBF16:
        load(bf16{});
        break;
      case DType::kI8:
        load(i8{});
        break;
    }
    float* cs = column_sums + std::int64_t(h) * stride;
    float* bs = band_sums + std::int64_t(h) * stride;
    for (std::int64_t i0 = 0; i0 < m; i0 += kBlock) {
      const std::int64_t rows = std::min(kBlock, m - i0), cols = i0 + rows;  // causal: keys [0, cols)
      for (int a = 0; a < g; ++a) {
        qb.resize(rows, dk);
        for (std::int64_t i = 0; i < rows; ++i)
          qb.row(i) = Eigen::Map<const Eigen::RowVectorXf>(&q(i0 + i, h * g + a, 0), dk);
        logits.noalias() = (qb * keys.topRows(cols).transpose()) * s;
        for (std::int64_t i = 0; i < rows; ++i) {
          const std::int64_t qi = i0 + i;  // sees keys [0, qi]
          auto r = logits.row(i).head(qi + 1);
          const float mx = r.maxCoeff();
          r = (r.array() - mx).exp();
          const float inv = 1.0f / (float(g) * r.sum());
          for (std::int64_t j = 0; j <= qi; ++j) {
            const float p = r(j) * inv;
            cs[j] += p;
            if (qi - j < window) bs[j] += p;
          }
        }
      }
    }
  }
}

}  // namespace kvcache
