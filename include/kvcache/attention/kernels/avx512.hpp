#pragma once

// Attention kernels compiled for the avx512 op set: the generic bodies of attention/detail/*.ipp instantiated in
// namespace kvcache::kernels::avx512 inside the ISA's target region.

#include "kvcache/attention/detail/kernel_deps.hpp"
#include "kvcache/simd/avx512.hpp"

#if KVCACHE_HAVE_AVX512
KVCACHE_TARGET_AVX512_BEGIN
namespace kvcache::kernels::avx512 {
namespace ops = ::kvcache::simd::avx512;
#include "kvcache/attention/detail/decode.ipp"
#include "kvcache/attention/detail/prefill.ipp"
#include "kvcache/cache/detail/merge_rows.ipp"
#include "kvcache/policy/detail/fastgen_scan.ipp"
#include "kvcache/policy/detail/select_scan.ipp"
}  // namespace kvcache::kernels::avx512
KVCACHE_TARGET_END
#endif
