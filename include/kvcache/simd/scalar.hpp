#pragma once

// The scalar op set: one float lane. It defines the semantics the wider sets must reproduce (and is what runs on
// non-x86 targets). Op set contract, shared by simd/avx2.hpp and simd/avx512.hpp:
//   Vec, kLanes                    register type and number of float lanes
//   zero, set1                     constants
//   load(p), load_n(p, n)          kLanes (or n < kLanes, zero-filled) elements of float, f16, bf16 or i8 -> f32
//                                  (i8: the integer value; the caller applies the row's scale)
//   store(p, v), store_n(p, v, n)  f32 -> float, f16 or bf16 (round to nearest even), kLanes or n elements
//   add, sub, mul, fma(a, b, c) = a * b + c, min, max
//   reduce_add, reduce_max         horizontal
//   reduce_add_4(a, b, c, d, out)  out[0..4) = the horizontal sums of a, b, c, d (shares the shuffles)
//   reduce_add_16(v, out)          out[0..16) = the horizontal sums of v[0..16) (one tree of shuffles, one store)
//   transpose_16x8(src, dst, ld)   dst[h * ld + i] = src[i * 8 + h] for h < 8, i < 16
//   transpose(r)                   r[0..kLanes) := its kLanes x kLanes transpose
//   trunc, round_nearest           round toward zero / to nearest even (whatever the rounding mode, on AVX2 and
//   AVX-512) store_i8_n(p, v, n)            n lanes of v, integers in [-128, 127], as int8 exp see detail/math.ipp
//   prefetch(p)                    cache hint
//   in_register(v)                 v, kept in a register (no re-load per use as a memory operand)

#include <cmath>
#include <cstddef>

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/macros.hpp"

namespace kvcache::simd::scalar {
inline namespace KVCACHE_BASELINE_NS {  // see simd/foreach_isa.inc

using Vec = float;
inline constexpr int kLanes = 1;

KVCACHE_INLINE Vec zero() noexcept { return 0.0f; }
KVCACHE_INLINE Vec set1(float x) noexcept { return x; }

KVCACHE_INLINE Vec load(const float* p) noexcept { return *p; }
KVCACHE_INLINE Vec load(const f16* p) noexcept { return to_f32(*p); }
KVCACHE_INLINE Vec load(const bf16* p) noexcept { return to_f32(*p); }
KVCACHE_INLINE Vec load(const i8* p) noexcept { return static_cast<float>(*p); }
template <class T>
KVCACHE_INLINE Vec load_n(T const* p, int n) noexcept {
  return n > 0 ? load(p) : 0.0f;
}

KVCACHE_INLINE void store(float* p, Vec v) noexcept { *p = v; }
KVCACHE_INLINE void store(f16* p, Vec v) noexcept { *p = from_f32<f16>(v); }
KVCACHE_INLINE void store(bf16* p, Vec v) noexcept { *p = from_f32<bf16>(v); }
template <class T>
KVCACHE_INLINE void store_n(T* p, Vec v, int n) noexcept {
  if (n > 0) store(p, v);
}

KVCACHE_INLINE Vec in_register(Vec v) noexcept { return v; }
/// Hint: bring the cache line holding p into L1 (no fault on any address).
KVCACHE_INLINE void prefetch(const void* p) noexcept { __builtin_prefetch(p, 0, 3); }

KVCACHE_INLINE Vec add(Vec a, Vec b) noexcept { return a + b; }
KVCACHE_INLINE Vec sub(Vec a, Vec b) noexcept { return a - b; }
KVCACHE_INLINE Vec mul(Vec a, Vec b) noexcept { return a * b; }
// std::fma keeps the single rounding of the hardware FMA the SIMD sets use.
KVCACHE_INLINE Vec fma(Vec a, Vec b, Vec c) noexcept { return std::fma(a, b, c); }
KVCACHE_INLINE Vec min(Vec a, Vec b) noexcept { return b < a ? b : a; }
KVCACHE_INLINE Vec max(Vec a, Vec b) noexcept { return a < b ? b : a; }
KVCACHE_INLINE float reduce_add(Vec v) noexcept { return v; }
KVCACHE_INLINE float reduce_max(Vec v) noexcept { return v; }
KVCACHE_INLINE void reduce_add_4(Vec a, Vec b, Vec c, Vec d, float* out) noexcept {
  out[0] = a;
  out[1] = b;
  out[2] = c;
  out[3] = d;
}

KVCACHE_INLINE void reduce_add_16(const Vec* v, float* out) noexcept {
  for (int i = 0; i < 16; ++i) out[i] = v[i];
}

KVCACHE_INLINE void transpose(Vec*) noexcept {}
KVCACHE_INLINE void transpose_16x8(const float* src, float* dst, std::ptrdiff_t ld) noexcept {
  for (int h = 0; h < 8; ++h)
    for (int i = 0; i < 16; ++i) dst[h * ld + i] = src[i * 8 + h];
}

KVCACHE_INLINE Vec round_nearest(Vec v) noexcept { return std::nearbyint(v); }
KVCACHE_INLINE Vec trunc(Vec v) noexcept { return std::trunc(v); }
/// The first n (0 or 1) lanes of v, integers in [-128, 127], stored as int8.
KVCACHE_INLINE void store_i8_n(i8* p, Vec v, int n) noexcept {
  if (n > 0) *p = static_cast<i8>(static_cast<int>(v));
}
/// 2^n for an integral n in [-126, 127], built in the exponent bits.
KVCACHE_INLINE Vec pow2i(Vec n) noexcept {
  return detail::bits_f32(static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23);
}
KVCACHE_INLINE Vec select_lt(Vec a, Vec b, Vec if_lt, Vec otherwise) noexcept { return a < b ? if_lt : otherwise; }

#include "kvcache/simd/detail/math.ipp"

// after math.ipp, whose exp it uses
#include "kvcache/simd/detail/bulk.ipp"

}  // namespace KVCACHE_BASELINE_NS
}  // namespace kvcache::simd::scalar
