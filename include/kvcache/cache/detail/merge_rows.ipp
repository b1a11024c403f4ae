// The per-step arithmetic of a merging policy (cache/kv_cache.hpp, decode_merging): RoPE rotation of whole rows and
// the group sums of the weighted running average. Compiled per ISA inside kernels::<isa> (and its target region) so
// that the loops vectorise at that width whatever the engine's flags: as scalar code in the engine's translation unit
// they were 0.04 of the attention they ride on (DMC, 32k context at 10%: ~850 rows a head, 8 keys and 32 queries
// taken back to pre-RoPE and 8 merged rows a step).
// Double arithmetic, the same operations element for element as Rope::apply and the sums they replace, and no FMA
// contraction (KVCACHE_VECTORIZE_EXACT), so every ISA gives the same bits.

/// out = x rotated, for rows [0, n) of width `width` (row stride ld floats; out may be x): by the angles whose
/// cosines and sines are c, s [half], the pairs (i, i + half), or (2i, 2i + 1) when interleaved, for i in [0, half);
/// elements from 2 * half on are copied.
KVCACHE_NOINLINE KVCACHE_VECTORIZE_EXACT inline void rope_rows(float* out, const float* x, std::int64_t n,
                                                               std::int64_t ld, int width, int half, bool interleaved,
                                                               const double* KVCACHE_RESTRICT c,
                                                               const double* KVCACHE_RESTRICT s) noexcept {
  KVCACHE_FP_CONTRACT_OFF
  for (std::int64_t r = 0; r < n; ++r) {
    const float* in = x + r * ld;
    float* o = out + r * ld;
    if (interleaved) {
      for (int i = 0; i < half; ++i) {
        const double x0 = in[2 * i], x1 = in[2 * i + 1];
        o[2 * i] = static_cast<float>(x0 * c[i] - x1 * s[i]);
        o[2 * i + 1] = static_cast<float>(x0 * s[i] + x1 * c[i]);
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const double x0 = in[i], x1 = in[i + half];
        o[i] = static_cast<float>(x0 * c[i] - x1 * s[i]);
        o[i + half] = static_cast<float>(x0 * s[i] + x1 * c[i]);
      }
    }
    if (o != in)
      for (int i = 2 * half; i < width; ++i) o[i] = in[i];
  }
}

/// sum[j] += w * x[j] for j in [0, n): a member joins (w > 0) or leaves (w < 0) a merged slot's sums. The product of
/// two floats is exact in double, so only the addition rounds.
KVCACHE_NOINLINE KVCACHE_VECTORIZE_EXACT inline void merge_add(double* KVCACHE_RESTRICT sum,
                                                               const float* KVCACHE_RESTRICT x, std::int64_t n,
                                                               float w) noexcept {
  KVCACHE_FP_CONTRACT_OFF
  const double wd = w;
  for (std::int64_t j = 0; j < n; ++j) sum[j] += wd * static_cast<double>(x[j]);
}

/// out[j] = sum[j] * inv, rounded to float, for j in [0, n): the slot's weighted mean.
KVCACHE_NOINLINE KVCACHE_VECTORIZE_EXACT inline void merge_mean(float* KVCACHE_RESTRICT out,
                                                                const double* KVCACHE_RESTRICT sum, std::int64_t n,
                                                                double inv) noexcept {
  for (std::int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(sum[j] * inv);
}
