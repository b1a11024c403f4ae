#pragma once

// Bulk conversions between element types, dispatched to the active ISA.

#include <cstddef>

#include "kvcache/simd/avx2.hpp"
#include "kvcache/simd/avx512.hpp"
#include "kvcache/simd/isa.hpp"
#include "kvcache/simd/scalar.hpp"

namespace kvcache {

/// dst[i] = src[i] for i in [0, n), converting between float, f16 and bf16 (rounding to nearest even when
/// narrowing). Uses isa, or the active ISA when none is given.
template <class D, class S>
void convert(D* dst, S const* src, std::size_t n, Isa isa) noexcept {
  switch (isa) {
#if KVCACHE_HAVE_AVX512
    case Isa::kAmx:
    case Isa::kAvx512:
      return simd::avx512::convert_n(dst, src, n);
#endif
#if KVCACHE_HAVE_AVX2
    case Isa::kAvx2:
      return simd::avx2::convert_n(dst, src, n);
#endif
    default:
      return simd::scalar::convert_n(dst, src, n);
  }
}
template <class D, class S>
void convert(D* dst, S const* src, std::size_t n) {
  convert(dst, src, n, active_isa());
}

/// quantize_row_i8 (core/dtype.hpp) on isa's op set: the same int8 values and scale, bit for bit, at vector speed.
inline float quantize_row_i8(const float* x, std::size_t n, i8* q, Isa isa) noexcept {
  switch (isa) {
#if KVCACHE_HAVE_AVX512
    case Isa::kAmx:
    case Isa::kAvx512:
      return simd::avx512::quantize_row_i8(x, n, q);
#endif
#if KVCACHE_HAVE_AVX2
    case Isa::kAvx2:
      return simd::avx2::quantize_row_i8(x, n, q);
#endif
    default:
      return simd::scalar::quantize_row_i8(x, n, q);
  }
}

/// dst[i] = exp(src[i]) with the library's vector exp (about 2 ulp; inputs below -87 give 0).
inline void exp(float* dst, const float* src, std::size_t n, Isa isa) noexcept {
  switch (isa) {
#if KVCACHE_HAVE_AVX512
    case Isa::kAmx:
    case Isa::kAvx512:
      return simd::avx512::exp_n(dst, src, n);
#endif
#if KVCACHE_HAVE_AVX2
    case Isa::kAvx2:
      return simd::avx2::exp_n(dst, src, n);
#endif
    default:
      return simd::scalar::exp_n(dst, src, n);
  }
}

}  // namespace kvcache
