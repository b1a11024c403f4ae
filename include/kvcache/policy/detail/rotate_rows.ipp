// Rotation of whole rows by RoPE angles, compiled per ISA by policy/rotate.hpp. Double arithmetic, the same
// operations element for element as Rope::apply, and no FMA contraction (KVCACHE_VECTORIZE_EXACT), so every ISA
// gives the same bits.

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
