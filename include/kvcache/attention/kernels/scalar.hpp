#pragma once

// Attention kernels compiled for the scalar op set: the generic bodies of attention/detail/*.ipp instantiated in
// namespace kvcache::kernels::scalar. This code is compiled with the
// translation unit's own flags, so it sits in an inline namespace named after them: two TUs built with different -m
// flags then never share (and the linker never swaps) a scalar symbol.

#include "kvcache/attention/detail/kernel_deps.hpp"
#include "kvcache/simd/scalar.hpp"

namespace kvcache::kernels::scalar {
inline namespace KVCACHE_BASELINE_NS {
namespace ops = ::kvcache::simd::scalar;
#include "kvcache/attention/detail/decode.ipp"
#include "kvcache/attention/detail/prefill.ipp"
#include "kvcache/cache/detail/merge_rows.ipp"
#include "kvcache/policy/detail/fastgen_scan.ipp"
#include "kvcache/policy/detail/select_scan.ipp"
}  // namespace KVCACHE_BASELINE_NS
}  // namespace kvcache::kernels::scalar
