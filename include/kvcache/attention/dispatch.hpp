#pragma once

// One switch per kernel entry point over (ISA, element type). Public calls resolve the ISA once (active_isa()) and
// stay on it for the whole layer step.

#include "kvcache/attention/kernels/amx.hpp"
#include "kvcache/attention/kernels/avx2.hpp"
#include "kvcache/attention/kernels/avx512.hpp"
#include "kvcache/attention/kernels/scalar.hpp"
#include "kvcache/simd/isa.hpp"

// Expands to a switch that calls kernels::<isa>::FN ARGS for the given ISA.
#define KVCACHE_DISPATCH_ISA(ISA, FN, ARGS)                          \
  switch (ISA) {                                                     \
    case ::kvcache::Isa::kAmx:                                       \
      KVCACHE_IF_AMX(return ::kvcache::kernels::amx::FN ARGS;)       \
      [[fallthrough]];                                               \
    case ::kvcache::Isa::kAvx512:                                    \
      KVCACHE_IF_AVX512(return ::kvcache::kernels::avx512::FN ARGS;) \
      [[fallthrough]];                                               \
    case ::kvcache::Isa::kAvx2:                                      \
      KVCACHE_IF_AVX2(return ::kvcache::kernels::avx2::FN ARGS;)     \
      [[fallthrough]];                                               \
    default:                                                         \
      return ::kvcache::kernels::scalar::FN ARGS;                    \
  }

#if KVCACHE_HAVE_AVX512
#define KVCACHE_IF_AVX512(...) __VA_ARGS__
#else
#define KVCACHE_IF_AVX512(...)
#endif
#if KVCACHE_HAVE_AMX
#define KVCACHE_IF_AMX(...) __VA_ARGS__
#else
#define KVCACHE_IF_AMX(...)
#endif
#if KVCACHE_HAVE_AVX2
#define KVCACHE_IF_AVX2(...) __VA_ARGS__
#else
#define KVCACHE_IF_AVX2(...)
#endif
