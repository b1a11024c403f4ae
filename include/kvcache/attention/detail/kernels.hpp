#pragma once

// The attention kernels (decode.ipp, prefill.ipp) compiled for every op set in kvcache::kernels::{scalar, avx2,
// avx512} (simd/foreach_isa.inc). The AMX leaf (attention/kernels/amx.hpp) builds on the avx512 copy.

#include "kvcache/attention/detail/kernel_deps.hpp"

#define KVCACHE_FOREACH_ISA_FILE "kvcache/attention/detail/kernels.ipp"
#define KVCACHE_FOREACH_ISA_NAMESPACE kvcache::kernels
#include "kvcache/simd/foreach_isa.inc"
