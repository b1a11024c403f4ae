#pragma once

// Element types of the cache and their exact conversions.
//
// f16 and bf16 are Eigen::half and Eigen::bfloat16, so storage can be viewed as Eigen tensors with no copy. The
// conversions here are our own, bit-exact and independent of the floating-point environment:
//   f32 -> f16 / bf16: round to nearest, ties to even; overflow gives infinity; NaN stays NaN (quiet).
//   f16 / bf16 -> f32: exact.
// The SIMD versions in simd/ produce the same bits (tested exhaustively for f16 -> f32 and on edge cases and random
// inputs for f32 -> f16/bf16).
//
// i8 is the quantized type: symmetric int8 with one f32 scale per row (per token and KV head, keys and values apart),
// value = q * scale. Its rows are quantized as they are appended (quantize_row_i8 below); storage keeps the scales
// beside the rows and every kernel dequantizes in registers.

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>

#include "kvcache/core/error.hpp"

namespace kvcache {

using f16 = Eigen::half;
using bf16 = Eigen::bfloat16;
using i8 = std::int8_t;

/// The element type of stored K/V rows.
enum class DType : std::uint8_t { kF32, kF16, kBF16, kI8 };

/// Bytes of one stored element (an i8 row also carries its 4-byte scale: see row_scale_bytes).
constexpr std::size_t dtype_size(DType t) noexcept { return t == DType::kF32 ? 4 : t == DType::kI8 ? 1 : 2; }
/// Bytes of the scale each stored row carries: 4 for i8 (f32), 0 otherwise.
constexpr std::size_t row_scale_bytes(DType t) noexcept { return t == DType::kI8 ? 4 : 0; }

constexpr std::string_view dtype_name(DType t) noexcept {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kI8:
      return "i8";
  }
  return "?";
}

/// Parses "f32", "f16", "bf16" or "i8"; throws Error naming the text otherwise.
inline DType parse_dtype(std::string_view s) {
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  if (s == "i8") return DType::kI8;
  detail::throw_error("unknown element type '", s, "'; expected f32, f16, bf16 or i8");
}

/// The floating-point element types: a stored element that is its own value.
template <class T>
inline constexpr bool is_element_v = std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>;
/// Every stored element type: the floating-point ones and i8 (whose value needs its row's scale).
template <class T>
inline constexpr bool is_stored_v = is_element_v<T> || std::is_same_v<T, i8>;

template <class T>
constexpr DType dtype_of() noexcept {
  static_assert(is_stored_v<T>, "kvcache: element types are float, kvcache::f16, kvcache::bf16 and kvcache::i8");
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  if constexpr (std::is_same_v<T, f16>) return DType::kF16;
  if constexpr (std::is_same_v<T, i8>) return DType::kI8;
  return DType::kBF16;
}

namespace detail {
inline std::uint32_t f32_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace detail

/// f32 -> f16 bits, round to nearest even.
inline std::uint16_t f32_to_f16_bits(float f) noexcept {
  std::uint32_t x = detail::f32_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) {  // inf or NaN; a NaN keeps its top payload bits and is made quiet
    return static_cast<std::uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0u));
  }
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to infinity
  if (x < 0x38800000u) {                                                    // below 2^-14: f16 subnormal or zero
    const std::uint32_t e = x >> 23;
    if (e < 102) return static_cast<std::uint16_t>(sign);  // below 2^-25: rounds to zero
    const std::uint32_t m = (x & 0x7fffffu) | 0x800000u;
    const std::uint32_t s = 126 - e;  // 14..24: value = m * 2^-s in units of 2^-24
    std::uint32_t q = m >> s;
    const std::uint32_t rem = m & ((1u << s) - 1u), half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into the smallest normal, which is exact
    return static_cast<std::uint16_t>(sign | q);
  }
  std::uint32_t h = ((x - 0x38000000u) >> 13);  // rebias exponent 127 -> 15 and drop 13 mantissa bits
  const std::uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

/// f16 bits -> f32, exact.
inline float f16_bits_to_f32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return sign ? -v : v;
  }
  if (e == 31) return detail::bits_f32(sign | 0x7f800000u | (m << 13));
  return detail::bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/// f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN.
inline std::uint16_t f32_to_bf16_bits(float f) noexcept {
  const std::uint32_t x = detail::f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_f32(std::uint16_t b) noexcept {
  return detail::bits_f32(static_cast<std::uint32_t>(b) << 16);
}

inline std::uint16_t bits_of(f16 h) noexcept { return Eigen::numext::bit_cast<std::uint16_t>(h); }
inline std::uint16_t bits_of(bf16 h) noexcept { return Eigen::numext::bit_cast<std::uint16_t>(h); }

/// Element -> f32 (exact).
inline float to_f32(float x) noexcept { return x; }
inline float to_f32(f16 x) noexcept { return f16_bits_to_f32(bits_of(x)); }
inline float to_f32(bf16 x) noexcept { return bf16_bits_to_f32(bits_of(x)); }
/// An i8 element's integer value (its row scale is applied apart).
inline float to_f32(i8 x) noexcept { return static_cast<float>(x); }

/// f32 -> element T (round to nearest even).
template <class T>
inline T from_f32(float x) noexcept {
  static_assert(is_element_v<T>, "kvcache: element types are float, kvcache::f16 and kvcache::bf16");
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, f16>) {
    return Eigen::numext::bit_cast<f16>(f32_to_f16_bits(x));
  } else {
    return Eigen::numext::bit_cast<bf16>(f32_to_bf16_bits(x));
  }
}

/// Quantizes one row of n floats to i8: scale = max |x| / 127, q = x * (127 / max |x|) rounded to nearest, ties away
/// from zero (independent of the rounding mode), so |q| <= 127 and every element is within scale / 2 (and
/// a few ulp) of q * scale; an all-zero row gets scale 0. Returns the scale. A row with a
/// NaN or infinite element gets a NaN scale and zeros (its attention is then NaN, as with the other types; the cache
/// rejects such rows first unless KVCacheOptions::check_finite is off).
inline float quantize_row_i8(const float* x, std::size_t n, i8* q) noexcept {
  float amax = 0.0f;
  bool finite = true;
  for (std::size_t i = 0; i < n; ++i) {
    const float a = x[i] < 0.0f ? -x[i] : x[i];
    finite = finite && a <= 3.4028234663852886e38f;  // false for NaN and infinity
    amax = a > amax ? a : amax;
  }
  if (!finite) {
    for (std::size_t i = 0; i < n; ++i) q[i] = 0;
    return std::numeric_limits<float>::quiet_NaN();
  }
  if (amax == 0.0f) {
    for (std::size_t i = 0; i < n; ++i) q[i] = 0;
    return 0.0f;
  }
  const float scale = amax / 127.0f, inv = 127.0f / amax;
  for (std::size_t i = 0; i < n; ++i) {
    // Round half away from zero with a truncating conversion and its exact remainder (|y| <= 127 + a few ulp): no
    // library call, and plain SSE2 vectorises it.
    const float y = x[i] * inv;
    int t = static_cast<int>(y);
    const float f = y - static_cast<float>(t);
    t += (f >= 0.5f ? 1 : 0) - (f <= -0.5f ? 1 : 0);
    q[i] = static_cast<i8>(t > 127 ? 127 : (t < -127 ? -127 : t));
  }
  return scale;
}

}  // namespace kvcache
