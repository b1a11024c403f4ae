// DMC's group sums (policy/dmc.hpp), compiled per ISA so that the loops vectorise at that width whatever the
// engine's flags. Double arithmetic without FMA contraction (KVCACHE_VECTORIZE_EXACT), so every ISA gives the same
// bits.

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
