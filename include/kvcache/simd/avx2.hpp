#pragma once

// The AVX2 op set: 8 float lanes (AVX2 + FMA + F16C). Contract: see simd/scalar.hpp.
// f16 <-> f32 uses F16C (vcvtph2ps / vcvtps2ph with round-to-nearest-even); bf16 is integer arithmetic.
// Tails (n < 8) go through a zero-filled stack copy: AVX2 has no 16-bit masked load.

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/macros.hpp"
#include "kvcache/simd/target.hpp"

#if KVCACHE_HAVE_AVX2
#include <immintrin.h>

#include <cstddef>
#include <cstring>

KVCACHE_TARGET_AVX2_BEGIN
namespace kvcache::simd::avx2 {

using Vec = __m256;
inline constexpr int kLanes = 8;

KVCACHE_INLINE Vec zero() noexcept { return _mm256_setzero_ps(); }
KVCACHE_INLINE Vec set1(float x) noexcept { return _mm256_set1_ps(x); }

KVCACHE_INLINE Vec load(const float* p) noexcept { return _mm256_loadu_ps(p); }
KVCACHE_INLINE Vec load(const f16* p) noexcept {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
KVCACHE_INLINE Vec load(const bf16* p) noexcept {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
KVCACHE_INLINE Vec load(const i8* p) noexcept {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
template <class T>
KVCACHE_INLINE Vec load_n(T const* p, int n) noexcept {
  alignas(32) T buf[kLanes] = {};
  std::memcpy(buf, p, sizeof(T) * static_cast<unsigned>(n));
  return load(buf);
}

KVCACHE_INLINE void store(float* p, Vec v) noexcept { _mm256_storeu_ps(p, v); }
KVCACHE_INLINE void store(f16* p, Vec v) noexcept {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
KVCACHE_INLINE void store(bf16* p, Vec v) noexcept {
  const __m256i x = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, quiet_nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
template <class T>
KVCACHE_INLINE void store_n(T* p, Vec v, int n) noexcept {
  alignas(32) T buf[kLanes];
  store(buf, v);
  std::memcpy(p, buf, sizeof(T) * static_cast<unsigned>(n));
}

/// v, materialised in a register: stops the compiler from folding a loaded value into each instruction that uses
/// it as a memory operand (one load per use), where the value feeds several FMAs.
KVCACHE_INLINE Vec in_register(Vec v) noexcept {
  asm("" : "+x"(v));
  return v;
}
/// Hint: bring the cache line holding p into L1 (no fault on any address).
KVCACHE_INLINE void prefetch(const void* p) noexcept { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

KVCACHE_INLINE Vec add(Vec a, Vec b) noexcept { return _mm256_add_ps(a, b); }
KVCACHE_INLINE Vec sub(Vec a, Vec b) noexcept { return _mm256_sub_ps(a, b); }
KVCACHE_INLINE Vec mul(Vec a, Vec b) noexcept { return _mm256_mul_ps(a, b); }
KVCACHE_INLINE Vec fma(Vec a, Vec b, Vec c) noexcept { return _mm256_fmadd_ps(a, b, c); }
KVCACHE_INLINE Vec min(Vec a, Vec b) noexcept { return _mm256_min_ps(a, b); }
KVCACHE_INLINE Vec max(Vec a, Vec b) noexcept { return _mm256_max_ps(a, b); }

KVCACHE_INLINE float reduce_add(Vec v) noexcept {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
KVCACHE_INLINE void reduce_add_4(Vec a, Vec b, Vec c, Vec d, float* out) noexcept {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // [a b c d] partials in each 128-bit half
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
KVCACHE_INLINE float reduce_max(Vec v) noexcept {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

KVCACHE_INLINE Vec trunc(Vec v) noexcept { return _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
KVCACHE_INLINE void store_i8_n(i8* p, Vec v, int n) noexcept {
  alignas(32) std::int32_t buf[kLanes];
  _mm256_store_si256(reinterpret_cast<__m256i*>(buf), _mm256_cvttps_epi32(v));
  for (int i = 0; i < n; ++i) p[i] = static_cast<i8>(buf[i]);
}
KVCACHE_INLINE Vec round_nearest(Vec v) noexcept {
  return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
KVCACHE_INLINE Vec pow2i(Vec n) noexcept {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}
KVCACHE_INLINE Vec select_lt(Vec a, Vec b, Vec if_lt, Vec otherwise) noexcept {
  return _mm256_blendv_ps(otherwise, if_lt, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}

// Used by the decode kernel's 16-lane path only; here for the op set contract.
KVCACHE_INLINE void reduce_add_16(const Vec* v, float* out) noexcept {
  for (int i = 0; i < 16; i += 4) reduce_add_4(v[i], v[i + 1], v[i + 2], v[i + 3], out + i);
}
KVCACHE_INLINE void transpose_16x8(const float* src, float* dst, std::ptrdiff_t ld) noexcept {
  for (int h = 0; h < 8; ++h)
    for (int i = 0; i < 16; ++i) dst[h * ld + i] = src[i * 8 + h];
}

/// r[0..8) := its 8 x 8 transpose (lane c of r[i] moves to lane i of r[c]).
KVCACHE_INLINE void transpose(Vec r[8]) noexcept {
  Vec t[8], u[8];
  KVCACHE_UNROLL
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);  // per 128-bit half: r_i[0] r_i+1[0] r_i[1] r_i+1[1]
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  KVCACHE_UNROLL
  for (int a = 0; a < 8; a += 4) {  // per half: column m of rows a .. a + 3
    u[a] = _mm256_shuffle_ps(t[a], t[a + 2], 0x44);
    u[a + 1] = _mm256_shuffle_ps(t[a], t[a + 2], 0xee);
    u[a + 2] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0x44);
    u[a + 3] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0xee);
  }
  KVCACHE_UNROLL
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}

#include "kvcache/simd/detail/math.ipp"

// after math.ipp, whose exp it uses
#include "kvcache/simd/detail/bulk.ipp"

}  // namespace kvcache::simd::avx2
KVCACHE_TARGET_END
#endif  // KVCACHE_HAVE_AVX2
