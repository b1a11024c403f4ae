#pragma once

// Run-time dispatch over the copies that simd/foreach_isa.inc compiles. A public entry point resolves the ISA once
// (active_isa()) and passes it down, so a whole call stays on one ISA.
//
//   KVCACHE_DISPATCH(isa, NS, FN, ARGS)          return NS::<isa>::FN ARGS; Isa::kAmx runs the avx512 copy
//   KVCACHE_DISPATCH_WITH_AMX(isa, NS, FN, ARGS) the same, with NS::amx::FN for Isa::kAmx (attention has AMX leaves)
//
// An ISA that this build does not contain falls through to the next lower one, ending at scalar.

#include "kvcache/core/macros.hpp"
#include "kvcache/simd/isa.hpp"

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

#define KVCACHE_DISPATCH_VECTOR_CASES_(ISA, NS, FN, ARGS) \
  case ::kvcache::Isa::kAvx512:                           \
    KVCACHE_IF_AVX512(return ::NS::avx512::FN ARGS;)      \
    [[fallthrough]];                                      \
  case ::kvcache::Isa::kAvx2:                             \
    KVCACHE_IF_AVX2(return ::NS::avx2::FN ARGS;)          \
    [[fallthrough]];                                      \
  default:                                                \
    return ::NS::scalar::FN ARGS;

#define KVCACHE_DISPATCH(ISA, NS, FN, ARGS)             \
  switch (ISA) {                                        \
    case ::kvcache::Isa::kAmx:                          \
      [[fallthrough]];                                  \
      KVCACHE_DISPATCH_VECTOR_CASES_(ISA, NS, FN, ARGS) \
  }

#define KVCACHE_DISPATCH_WITH_AMX(ISA, NS, FN, ARGS)    \
  switch (ISA) {                                        \
    case ::kvcache::Isa::kAmx:                          \
      KVCACHE_IF_AMX(return ::NS::amx::FN ARGS;)        \
      [[fallthrough]];                                  \
      KVCACHE_DISPATCH_VECTOR_CASES_(ISA, NS, FN, ARGS) \
  }
