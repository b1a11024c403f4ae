#pragma once

// The AVX-512 op set: 16 float lanes (AVX-512 F/BW/DQ/VL). Contract: see simd/scalar.hpp.
// Tails use masked loads and stores (16-bit masked moves need BW+VL), so no tail touches memory past n.

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/macros.hpp"
#include "kvcache/simd/target.hpp"

#if KVCACHE_HAVE_AVX512
#include <immintrin.h>

#include <cstddef>

KVCACHE_TARGET_AVX512_BEGIN
namespace kvcache::simd::avx512 {

using Vec = __m512;
inline constexpr int kLanes = 16;

KVCACHE_INLINE __mmask16 tail_mask(int n) noexcept { return static_cast<__mmask16>((1u << n) - 1u); }
KVCACHE_INLINE Vec zero() noexcept { return _mm512_setzero_ps(); }
KVCACHE_INLINE Vec set1(float x) noexcept { return _mm512_set1_ps(x); }

KVCACHE_INLINE Vec widen_bf16(__m256i h) noexcept {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
KVCACHE_INLINE Vec load(const float* p) noexcept { return _mm512_loadu_ps(p); }
KVCACHE_INLINE Vec load(const f16* p) noexcept {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
KVCACHE_INLINE Vec load(const bf16* p) noexcept {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
KVCACHE_INLINE Vec load(const i8* p) noexcept {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
KVCACHE_INLINE Vec load_n(const float* p, int n) noexcept { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
KVCACHE_INLINE Vec load_n(const f16* p, int n) noexcept {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(n), p));
}
KVCACHE_INLINE Vec load_n(const bf16* p, int n) noexcept {
  return widen_bf16(_mm256_maskz_loadu_epi16(tail_mask(n), p));
}
KVCACHE_INLINE Vec load_n(const i8* p, int n) noexcept {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(tail_mask(n), p)));
}

KVCACHE_INLINE __m256i narrow_f16(Vec v) noexcept {
  return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
KVCACHE_INLINE __m256i narrow_bf16(Vec v) noexcept {
  const __m512i x = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), quiet_nan);
  return _mm512_cvtepi32_epi16(r);
}
KVCACHE_INLINE void store(float* p, Vec v) noexcept { _mm512_storeu_ps(p, v); }
KVCACHE_INLINE void store(f16* p, Vec v) noexcept { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_f16(v)); }
KVCACHE_INLINE void store(bf16* p, Vec v) noexcept {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(v));
}
KVCACHE_INLINE void store_n(float* p, Vec v, int n) noexcept { _mm512_mask_storeu_ps(p, tail_mask(n), v); }
KVCACHE_INLINE void store_n(f16* p, Vec v, int n) noexcept { _mm256_mask_storeu_epi16(p, tail_mask(n), narrow_f16(v)); }
KVCACHE_INLINE void store_n(bf16* p, Vec v, int n) noexcept {
  _mm256_mask_storeu_epi16(p, tail_mask(n), narrow_bf16(v));
}

/// v, materialised in a register: stops the compiler from folding a loaded value into each instruction that uses
/// it as a memory operand (one load per use), where the value feeds several FMAs.
KVCACHE_INLINE Vec in_register(Vec v) noexcept {
  asm("" : "+v"(v));
  return v;
}
/// Hint: bring the cache line holding p into L1 (no fault on any address).
KVCACHE_INLINE void prefetch(const void* p) noexcept { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

KVCACHE_INLINE Vec add(Vec a, Vec b) noexcept { return _mm512_add_ps(a, b); }
KVCACHE_INLINE Vec sub(Vec a, Vec b) noexcept { return _mm512_sub_ps(a, b); }
KVCACHE_INLINE Vec mul(Vec a, Vec b) noexcept { return _mm512_mul_ps(a, b); }
KVCACHE_INLINE Vec fma(Vec a, Vec b, Vec c) noexcept { return _mm512_fmadd_ps(a, b, c); }
KVCACHE_INLINE Vec min(Vec a, Vec b) noexcept { return _mm512_min_ps(a, b); }
KVCACHE_INLINE Vec max(Vec a, Vec b) noexcept { return _mm512_max_ps(a, b); }
KVCACHE_INLINE float reduce_add(Vec v) noexcept {
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// Horizontal sums of several vectors: the folds within 128-bit lanes come first (vshufps, which on some cores issues
// beside the FMAs) and the folds across lanes last, on the fewest vectors (cross-lane shuffles can take FMA slots,
// and the decode kernel calls these between its FMAs).
// 128-bit lane j of the result = [a | b | c | d], each summed over lane j (shuffles within lanes only).
KVCACHE_INLINE Vec fold_in_lanes_4(Vec a, Vec b, Vec c, Vec d) noexcept {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xee));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_ps(c, d, 0x44), _mm512_shuffle_ps(c, d, 0xee));
  return _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x88), _mm512_shuffle_ps(ab, cd, 0xdd));
}
KVCACHE_INLINE void reduce_add_4(Vec a, Vec b, Vec c, Vec d, float* out) noexcept {
  const Vec t = fold_in_lanes_4(a, b, c, d);  // then the four lanes added: 2 shuffles across lanes
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), _mm512_extractf32x8_ps(t, 1));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
// 16 sums: 24 shuffles within lanes, 5 blends, 3 shuffles across lanes, 15 additions, one store.
KVCACHE_INLINE void reduce_add_16(const Vec* v, float* out) noexcept {
  Vec w[4];
  KVCACHE_UNROLL
  for (int m = 0; m < 4; ++m) w[m] = fold_in_lanes_4(v[4 * m], v[4 * m + 1], v[4 * m + 2], v[4 * m + 3]);
  // Across lanes. x[n], lanes 0 .. 3: w[2n] lanes 0+1, w[2n+1] lanes 0+1, w[2n] lanes 2+3, w[2n+1] lanes 2+3 (two
  // blends and one lane swap instead of two two-source shuffles); then lane J of the result is w[J] summed.
  Vec x[2];
  KVCACHE_UNROLL
  for (int n = 0; n < 2; ++n) {
    const Vec a = w[2 * n], b = w[2 * n + 1];
    const Vec keep = _mm512_mask_blend_ps(0xf0f0, a, b);                 // a0 b1 a2 b3
    const Vec swap = _mm512_mask_blend_ps(0x0f0f, a, b);                 // b0 a1 b2 a3
    x[n] = _mm512_add_ps(keep, _mm512_shuffle_f32x4(swap, swap, 0xb1));  // + a1 b0 a3 b2
  }
  const Vec lo = _mm512_mask_blend_ps(0xff00, x[0], x[1]);                           // x0 lanes 0, 1; x1 lanes 2, 3
  _mm512_storeu_ps(out, _mm512_add_ps(lo, _mm512_shuffle_f32x4(x[0], x[1], 0x4e)));  // + x0 lanes 2, 3; x1 lanes 0, 1
}
KVCACHE_INLINE float reduce_max(Vec v) noexcept {
  __m256 s8 = _mm256_max_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KVCACHE_INLINE Vec trunc(Vec v) noexcept { return _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
KVCACHE_INLINE void store_i8_n(i8* p, Vec v, int n) noexcept {
  _mm512_mask_cvtepi32_storeu_epi8(p, tail_mask(n), _mm512_cvttps_epi32(v));
}
KVCACHE_INLINE Vec round_nearest(Vec v) noexcept {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
KVCACHE_INLINE Vec pow2i(Vec n) noexcept {
  const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}
KVCACHE_INLINE Vec select_lt(Vec a, Vec b, Vec if_lt, Vec otherwise) noexcept {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), otherwise, if_lt);
}

// The first two stages of a 16 x 16 transpose of 32-bit elements (unpacks within 128-bit lanes): afterwards
// u[4a + m], 128-bit lane j, holds rows 4a .. 4a + 3 of column 4j + m of r. 128-bit lane shuffles finish it
// (transpose below; amx's score transpose folds an addition into them).
KVCACHE_INLINE void transpose_in_lanes(const Vec r[16], Vec u[16]) noexcept {
  Vec t[16];
  KVCACHE_UNROLL
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  KVCACHE_UNROLL
  for (int a = 0; a < 16; a += 4) {
    u[a] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[a]), _mm512_castps_pd(t[a + 2])));
    u[a + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[a]), _mm512_castps_pd(t[a + 2])));
    u[a + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[a + 1]), _mm512_castps_pd(t[a + 3])));
    u[a + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[a + 1]), _mm512_castps_pd(t[a + 3])));
  }
}
/// r[0..16) := its 16 x 16 transpose (lane c of r[i] moves to lane i of r[c]).
KVCACHE_INLINE void transpose(Vec r[16]) noexcept {
  Vec u[16];
  transpose_in_lanes(r, u);
  KVCACHE_UNROLL
  for (int m = 0; m < 4; ++m) {
    const Vec lo01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), hi01 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xee);
    const Vec lo23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44);
    const Vec hi23 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xee);
    r[m] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
    r[4 + m] = _mm512_shuffle_f32x4(lo01, lo23, 0xdd);
    r[8 + m] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
    r[12 + m] = _mm512_shuffle_f32x4(hi01, hi23, 0xdd);
  }
}

// dst[h * ld + i] = src[i * 8 + h] for h < 8, i < 16: src's 8 vectors hold two rows of 8 each. Three rounds of
// two-source permutes each swap one bit of the vector index (row bits 1, 2, 3) with one bit of the lane index (column
// bits 0, 1, 2); the last round also moves row bit 0 from lane bit 3 to lane bit 0.
KVCACHE_INLINE void transpose_16x8(const float* src, float* dst, std::ptrdiff_t ld) noexcept {
  Vec r[8];
  KVCACHE_UNROLL
  for (int j = 0; j < 8; ++j) r[j] = _mm512_loadu_ps(src + 16 * j);
  const __m512i idx[3][2] = {{_mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                              _mm512_setr_epi32(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31)},
                             {_mm512_setr_epi32(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                              _mm512_setr_epi32(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31)},
                             {_mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 16, 24, 17, 25, 18, 26, 19, 27),
                              _mm512_setr_epi32(4, 12, 5, 13, 6, 14, 7, 15, 20, 28, 21, 29, 22, 30, 23, 31)}};
  KVCACHE_UNROLL
  for (int round = 0; round < 3; ++round) {
    const int bit = 1 << round;
    Vec t[8];
    KVCACHE_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int a = j & ~bit, b = j | bit;  // the pair of vectors differing in this round's bit
      t[j] = _mm512_permutex2var_ps(r[a], idx[round][(j & bit) != 0], r[b]);
    }
    KVCACHE_UNROLL
    for (int j = 0; j < 8; ++j) r[j] = t[j];
  }
  KVCACHE_UNROLL
  for (int h = 0; h < 8; ++h) _mm512_storeu_ps(dst + h * ld, r[h]);
}

#include "kvcache/simd/detail/math.ipp"

// after math.ipp, whose exp it uses
#include "kvcache/simd/detail/bulk.ipp"

}  // namespace kvcache::simd::avx512
KVCACHE_TARGET_END
#endif  // KVCACHE_HAVE_AVX512
