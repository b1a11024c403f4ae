#pragma once

// Re-rotation of stored key rows, for policies that move keys between RoPE positions: StreamingLLM's in-cache
// positions rotate sink keys forward, DMC rotates keys and queries back to pre-RoPE. The row loop is compiled per ISA
// (policy/detail/rotate_rows.ipp) and gives the same bits on every ISA.

#include <cstdint>
#include <vector>

#include "kvcache/core/macros.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/simd/dispatch.hpp"

#define KVCACHE_FOREACH_ISA_FILE "kvcache/policy/detail/rotate_rows.ipp"
#define KVCACHE_FOREACH_ISA_NAMESPACE kvcache::rotate_kernels
#include "kvcache/simd/foreach_isa.inc"

namespace kvcache {

/// out = the n rows of x ([n, width], contiguous; out may be x) rotated by the angles whose cosines and sines are
/// cos, sin (from Rope::angles; negate sin to rotate back). Elements past rope.rotary_dims() are copied.
inline void rotate_rows(Isa isa, const Rope& rope, float* out, const float* x, std::int64_t n, int width,
                        const std::vector<double>& cos, const std::vector<double>& sin) noexcept {
  KVCACHE_DISPATCH(isa, kvcache::rotate_kernels, rope_rows,
                   (out, x, n, width, width, rope.rotary_dims() / 2, rope.interleaved(), cos.data(), sin.data()))
}

}  // namespace kvcache
