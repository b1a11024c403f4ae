#pragma once

// This machine's limits, measured in the same process as the kernels they judge:
//   read bandwidth: threads stream disjoint slices of a buffer far larger than the last-level cache (1 GiB by
//                   default; KVCACHE_BENCH_WORKING_SET_MB changes it), summing with the widest op set; median of 7.
//   FMA peak:       per ISA, 12 independent FMA chains per thread in registers; median of 7.
// Both use the executor the kernels use, so "2 threads" means the same thing on both sides of a ratio.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kvcache/kvcache.hpp"

namespace kvbench {

inline std::size_t working_set_bytes() {
  if (const char* mb = std::getenv("KVCACHE_BENCH_WORKING_SET_MB")) return std::size_t(std::atoll(mb)) << 20;
  return std::size_t{1} << 30;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace kvbench

// The measuring loops are written against the op sets, in their target regions, like the kernels.
// Not formatted: clang-format would indent the loop after KVCACHE_UNROLL as a continuation.
// clang-format off
#define KVBENCH_LOOPS                                                              \
  inline float sum_floats(const float* p, std::size_t n) noexcept {                \
    constexpr int L = ops::kLanes;                                                 \
    ops::Vec a0 = ops::zero(), a1 = a0, a2 = a0, a3 = a0;                          \
    for (std::size_t i = 0; i + 4 * L <= n; i += 4 * L) {                          \
      a0 = ops::add(a0, ops::load(p + i));                                         \
      a1 = ops::add(a1, ops::load(p + i + L));                                     \
      a2 = ops::add(a2, ops::load(p + i + 2 * L));                                 \
      a3 = ops::add(a3, ops::load(p + i + 3 * L));                                 \
    }                                                                              \
    return ops::reduce_add(ops::add(ops::add(a0, a1), ops::add(a2, a3)));          \
  }                                                                                \
  /* 12 chains x iters FMAs; returns a value that depends on all of them. */       \
  inline float fma_chains(std::int64_t iters, float seed) noexcept {               \
    ops::Vec acc[12];                                                              \
    for (int i = 0; i < 12; ++i) acc[i] = ops::set1(seed + static_cast<float>(i)); \
    const ops::Vec a = ops::set1(0.999999f), b = ops::set1(1e-7f);                 \
    for (std::int64_t it = 0; it < iters; ++it) {                                  \
      KVCACHE_UNROLL /* 12 registers, not an array on the stack, at -O2 too */     \
      for (int i = 0; i < 12; ++i) acc[i] = ops::fma(acc[i], a, b);                \
    }                                                                              \
    ops::Vec s = acc[0];                                                           \
    for (int i = 1; i < 12; ++i) s = ops::add(s, acc[i]);                          \
    return ops::reduce_add(s);                                                     \
  }
// clang-format on

namespace kvbench::scalar {
namespace ops = ::kvcache::simd::scalar;
KVBENCH_LOOPS
}  // namespace kvbench::scalar
KVCACHE_TARGET_AVX2_BEGIN
namespace kvbench::avx2 {
namespace ops = ::kvcache::simd::avx2;
KVBENCH_LOOPS
}  // namespace kvbench::avx2
KVCACHE_TARGET_END
KVCACHE_TARGET_AVX512_BEGIN
namespace kvbench::avx512 {
namespace ops = ::kvcache::simd::avx512;
KVBENCH_LOOPS
}  // namespace kvbench::avx512
KVCACHE_TARGET_END

namespace kvbench {

inline int lanes(kvcache::Isa isa) {
  return isa == kvcache::Isa::kAvx512 || isa == kvcache::Isa::kAmx ? 16 : isa == kvcache::Isa::kAvx2 ? 8 : 1;
}

inline float sum_floats(kvcache::Isa isa, const float* p, std::size_t n) {
  switch (isa) {
    case kvcache::Isa::kAmx:
    case kvcache::Isa::kAvx512:
      return avx512::sum_floats(p, n);
    case kvcache::Isa::kAvx2:
      return avx2::sum_floats(p, n);
    default:
      return scalar::sum_floats(p, n);
  }
}
inline float fma_chains(kvcache::Isa isa, std::int64_t iters, float seed) {
  switch (isa) {
    case kvcache::Isa::kAmx:
    case kvcache::Isa::kAvx512:
      return avx512::fma_chains(iters, seed);
    case kvcache::Isa::kAvx2:
      return avx2::fma_chains(iters, seed);
    default:
      return scalar::fma_chains(iters, seed);
  }
}

/// Read bandwidth in GB/s (1e9 bytes) with `threads` threads, median of 7 passes.
template <class Exec>
double read_bandwidth_gbps(const Exec& ex) {
  static std::vector<float> buf;  // shared by every measurement of the process
  const std::size_t n = working_set_bytes() / sizeof(float);
  if (buf.size() != n) buf.assign(n, 1.0f);
  const int t = ex.concurrency();
  std::vector<double> runs;
  std::vector<float> sink(static_cast<std::size_t>(t));
  const kvcache::Isa isa = kvcache::best_isa();
  for (int r = 0; r < 8; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    ex.parallel_for(t, [&](int i) noexcept {
      const std::size_t b = n / std::size_t(t) * std::size_t(i), e = n / std::size_t(t) * std::size_t(i + 1);
      sink[std::size_t(i)] += sum_floats(isa, buf.data() + b, e - b);
    });
    const double s = seconds_since(t0);
    if (r > 0) runs.push_back(static_cast<double>(n * sizeof(float)) / s / 1e9);  // the first pass warms up
  }
  if (sink[0] == 12345.0f) std::abort();  // keeps the sums alive
  return median(runs);
}

/// fp32 FMA peak of isa in GFLOP/s with ex's threads (2 FLOPs per lane per FMA), median of 7.
template <class Exec>
double fma_peak_gflops(kvcache::Isa isa, const Exec& ex) {
  const int t = ex.concurrency();
  const std::int64_t iters = 20'000'000 / lanes(isa) * 4;
  std::vector<double> runs;
  std::vector<float> sink(static_cast<std::size_t>(t));
  for (int r = 0; r < 8; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    ex.parallel_for(t, [&](int i) noexcept { sink[std::size_t(i)] += fma_chains(isa, iters, float(r + i)); });
    const double s = seconds_since(t0);
    if (r > 0) runs.push_back(12.0 * double(iters) * lanes(isa) * 2.0 * t / s / 1e9);
  }
  if (sink[0] == 12345.0f) std::abort();
  return median(runs);
}

/// The read bandwidth for each thread count (GB/s), also recorded in the benchmark context and printed on stderr.
inline std::map<int, double> measure_read_bandwidths(const std::vector<int>& threads) {
  std::map<int, double> out;
  for (int t : threads) {
    const double bw =
        t == 1 ? read_bandwidth_gbps(kvcache::SerialExecutor{}) : read_bandwidth_gbps(kvcache::OpenMPExecutor{t});
    out[t] = bw;
    benchmark::AddCustomContext("read_bw_" + std::to_string(t) + "t_GBps", std::to_string(bw));
    std::fprintf(stderr, "measured read bandwidth, %d thread(s): %.2f GB/s\n", t, bw);
  }
  benchmark::AddCustomContext("working_set_MiB", std::to_string(working_set_bytes() >> 20));
  return out;
}

/// fma_peak_gflops of isa with ex's threads, measured at the first call for that (isa, threads) and printed on
/// stderr; amx's vector ports are avx512's (the tile unit has no FMA peak to measure), so amx gets avx512's number.
template <class Exec>
double fma_peak_once(kvcache::Isa isa, const Exec& ex) {
  static std::map<std::pair<int, int>, double> peaks;
  if (isa == kvcache::Isa::kAmx) isa = kvcache::Isa::kAvx512;
  const std::pair<int, int> key{static_cast<int>(isa), ex.concurrency()};
  auto it = peaks.find(key);
  if (it == peaks.end()) {
    it = peaks.emplace(key, fma_peak_gflops(isa, ex)).first;
    std::fprintf(stderr, "measured fp32 FMA peak, %s, %d thread(s): %.1f GFLOP/s\n",
                 std::string(kvcache::isa_name(isa)).c_str(), key.second, it->second);
  }
  return it->second;
}

}  // namespace kvbench
