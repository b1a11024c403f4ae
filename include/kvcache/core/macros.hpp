#pragma once

// Compiler and build-mode macros shared by every header.

#include <cstdio>
#include <cstdlib>

#if defined(__GNUC__) || defined(__clang__)
#define KVCACHE_INLINE inline __attribute__((always_inline))
#define KVCACHE_NOINLINE __attribute__((noinline))
#define KVCACHE_RESTRICT __restrict__
#define KVCACHE_LIKELY(x) __builtin_expect(!!(x), 1)
#define KVCACHE_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define KVCACHE_INLINE inline
#define KVCACHE_NOINLINE
#define KVCACHE_RESTRICT
#define KVCACHE_LIKELY(x) (x)
#define KVCACHE_UNLIKELY(x) (x)
#endif

// KVCACHE_ASSERT checks preconditions of hot paths (which are noexcept and must not throw).
// It is on in debug builds and compiled out when NDEBUG is defined, unless KVCACHE_ENABLE_ASSERTS is.
#if !defined(NDEBUG) || defined(KVCACHE_ENABLE_ASSERTS)
#define KVCACHE_ASSERT(cond, msg)                                                                            \
  do {                                                                                                       \
    if (KVCACHE_UNLIKELY(!(cond))) {                                                                         \
      std::fprintf(stderr, "kvcache: assertion failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, #cond, msg); \
      std::abort();                                                                                          \
    }                                                                                                        \
  } while (0)
#else
#define KVCACHE_ASSERT(cond, msg) ((void)0)
#endif

// Runtime dispatch (default) compiles scalar, AVX2 and AVX-512 kernels under target attributes and picks one per
// call. Static dispatch (define KVCACHE_DISPATCH_STATIC, or CMake KVCACHE_DISPATCH=static) compiles only the best ISA
// the compiler flags imply, so a -march=native build carries no unused code.
#if defined(__x86_64__) || defined(_M_X64)
#define KVCACHE_X86 1
#else
#define KVCACHE_X86 0
#endif

#if KVCACHE_X86 && (defined(__GNUC__) || defined(__clang__))
#if defined(KVCACHE_DISPATCH_STATIC)
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KVCACHE_HAVE_AVX2 1
#else
#define KVCACHE_HAVE_AVX2 0
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define KVCACHE_HAVE_AVX512 1
#else
#define KVCACHE_HAVE_AVX512 0
#endif
#if KVCACHE_HAVE_AVX512 && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__linux__) && !defined(__clang__)
#define KVCACHE_HAVE_AMX 1
#else
#define KVCACHE_HAVE_AMX 0
#endif
#if KVCACHE_HAVE_AVX512 && defined(__AVX512VNNI__)
#define KVCACHE_HAVE_VNNI 1
#else
#define KVCACHE_HAVE_VNNI 0
#endif
#else
#define KVCACHE_HAVE_AVX2 1
#define KVCACHE_HAVE_AVX512 1
// AVX-512 VNNI: the integer dot products of int8 decode (attention/kernels/vnni.hpp), used where the CPU has them.
#define KVCACHE_HAVE_VNNI 1
// AMX needs the CPU probe to name amx-tile / amx-bf16, which GCC's __builtin_cpu_supports does and Clang 14's does not.
#if defined(__linux__) && !defined(__clang__)
#define KVCACHE_HAVE_AMX 1
#else
#define KVCACHE_HAVE_AMX 0
#endif
#endif
#else
#define KVCACHE_HAVE_AVX2 0
#define KVCACHE_HAVE_AVX512 0
#define KVCACHE_HAVE_AMX 0
#define KVCACHE_HAVE_VNNI 0
#endif

// Tag of the baseline the translation unit is compiled for; code compiled with the TU's own flags (the scalar ISA)
// lives in an inline namespace of this name so that TUs with different flags cannot exchange its symbols.
#if defined(__AVX512F__)
#define KVCACHE_BASELINE_NS baseline_avx512
#elif defined(__AVX2__)
#define KVCACHE_BASELINE_NS baseline_avx2
#else
#define KVCACHE_BASELINE_NS baseline
#endif

// Before the kernels' loops over compile-time counts (head blocks, register tiles): unroll them fully so their arrays
// of vectors live in registers. GCC unrolls them at -O3 (-fpeel-loops) but not at -O2, where prefill ran at a third of
// its -O3 speed; engines are often built at -O2 (bench/decode_bench_O2, prefill_bench_O2).
#if defined(__GNUC__) && !defined(__clang__)
#define KVCACHE_UNROLL _Pragma("GCC unroll 16")
#elif defined(__clang__)
#define KVCACHE_UNROLL _Pragma("unroll")
#else
#define KVCACHE_UNROLL
#endif

// For the few plain loops the library leaves to the auto-vectoriser (the selection scans): GCC's -O2 uses a cost
// model that refuses reductions of unknown length, so ask for the dynamic one on those functions only.
#if defined(__GNUC__) && !defined(__clang__)
#define KVCACHE_VECTORIZE __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define KVCACHE_VECTORIZE
#endif

// The same for loops whose every ISA must give the same bits (RoPE rotations in double): no contraction of a * b + c
// into an FMA, which GCC does by default in gnu++ modes and Clang within an expression. GCC takes it as a function
// attribute (KVCACHE_VECTORIZE_EXACT), Clang as a pragma at the top of the function body (KVCACHE_FP_CONTRACT_OFF).
#if defined(__GNUC__) && !defined(__clang__)
#define KVCACHE_VECTORIZE_EXACT \
  __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic", "fp-contract=off")))
#define KVCACHE_FP_CONTRACT_OFF
#elif defined(__clang__)
#define KVCACHE_VECTORIZE_EXACT
#define KVCACHE_FP_CONTRACT_OFF _Pragma("clang fp contract(off)")
#else
#define KVCACHE_VECTORIZE_EXACT
#define KVCACHE_FP_CONTRACT_OFF
#endif

// Compiled kernels. By default every translation unit that calls a kernel compiles it for every ISA (header-only).
// A build may compile the attention kernels once instead: exactly one translation unit defines
// KVCACHE_INSTANTIATE_KERNELS before including kvcache, and every other one defines KVCACHE_EXTERN_KERNELS, which turns
// the kernels' instantiations into extern declarations (about four fifths of a translation unit's compile time with
// GCC at -O3). All of them must be built with the same -m flags and KVCACHE_DISPATCH_STATIC setting: the scalar copy's
// namespace (KVCACHE_BASELINE_NS) and the set of ISA copies depend on both, so a mismatch fails to link rather than
// running the wrong copy. KVCACHE_KERNEL_INSTANCE is what the kernel families put before their instantiations.
#if defined(KVCACHE_INSTANTIATE_KERNELS) && defined(KVCACHE_EXTERN_KERNELS)
#error "kvcache: define KVCACHE_INSTANTIATE_KERNELS or KVCACHE_EXTERN_KERNELS, not both"
#elif defined(KVCACHE_INSTANTIATE_KERNELS)
#define KVCACHE_KERNEL_INSTANCE template
#elif defined(KVCACHE_EXTERN_KERNELS)
#define KVCACHE_KERNEL_INSTANCE extern template
#endif
