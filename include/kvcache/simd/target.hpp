#pragma once

// Target regions: every function defined between KVCACHE_TARGET_<ISA>_BEGIN and KVCACHE_TARGET_END is compiled for
// that ISA whatever the translation unit's -m flags, so one binary built for baseline x86-64 carries AVX2 and
// AVX-512 code and the dispatcher picks at run time. Rules for code inside a region:
//  * include every header before the region opens (standard headers parsed inside a target region or a namespace
//    break);
//  * call only functions of the same region, or plain baseline code; a baseline function must never call an
//    always-inline function of a region (GCC refuses to inline across the target mismatch).

#include "kvcache/core/macros.hpp"

#if KVCACHE_X86 && defined(__clang__)
// _Pragma takes one string literal (no concatenation), so the pragma text is stringised from tokens: it can then
// be wrapped, and the target strings keep their quotes.
#define KVCACHE_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define KVCACHE_TARGET_AVX2_BEGIN \
  KVCACHE_PRAGMA(clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function))
#define KVCACHE_TARGET_AVX512_BEGIN                                                                                \
  KVCACHE_PRAGMA(clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl"))), \
                                      apply_to = function))
#define KVCACHE_TARGET_VNNI_BEGIN      \
  KVCACHE_PRAGMA(clang attribute push( \
      __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"))), apply_to = function))
#define KVCACHE_TARGET_AMX_BEGIN                                                                                \
  KVCACHE_PRAGMA(clang attribute push(                                                                          \
      __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16"))), \
      apply_to = function))
#define KVCACHE_TARGET_END _Pragma("clang attribute pop")
#elif KVCACHE_X86 && defined(__GNUC__)
// GCC 12 reports -W(maybe-)uninitialized inside its own AVX-512 intrinsics once they are inlined (GCC bug 105593,
// the self-initialised _mm512_undefined_ps); the region silences those two warnings for its own code.
#define KVCACHE_TARGET_AVX2_BEGIN                                                                     \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")") _Pragma("GCC diagnostic push") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")                                     \
          _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define KVCACHE_TARGET_AVX512_BEGIN                                                                       \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl\")") \
      _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")          \
          _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define KVCACHE_TARGET_VNNI_BEGIN                                                                                    \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni\")") \
      _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")                     \
          _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define KVCACHE_TARGET_AMX_BEGIN                                                                               \
  _Pragma("GCC push_options")                                                                                  \
      _Pragma("GCC target(\"avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16\")") \
          _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")           \
              _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define KVCACHE_TARGET_END _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#else
#define KVCACHE_TARGET_AVX2_BEGIN
#define KVCACHE_TARGET_AVX512_BEGIN
#define KVCACHE_TARGET_VNNI_BEGIN
#define KVCACHE_TARGET_AMX_BEGIN
#define KVCACHE_TARGET_END
#endif
