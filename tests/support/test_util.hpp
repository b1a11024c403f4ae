#pragma once

// Helpers shared by the tests: random data, filling storage, comparing, and running a body under each ISA.

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvcache/kvcache.hpp"
#include "kvcache/testing/testing.hpp"

namespace kvtest {

inline std::vector<float> random_vector(std::size_t n, std::uint32_t seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

/// Appends n random rows to every head of kv (positions continue from `first_position`).
inline void fill_random(kvcache::LayerSlots& kv, std::int64_t n, std::uint32_t seed, std::int32_t first_position = 0,
                        float sigma = 1.0f) {
  const int n_kv = kv.n_kv_heads(), dk = kv.head_dim_k(), dv = kv.head_dim_v();
  auto k = random_vector(static_cast<std::size_t>(n_kv * n * dk), seed, sigma);
  auto v = random_vector(static_cast<std::size_t>(n_kv * n * dv), seed + 1000003u);
  std::vector<kvcache::Position> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = first_position + static_cast<std::int32_t>(i);
  // The latent layout (MLA) stores keys only.
  kv.append(kvcache::ConstTensorView<float, 3>(k.data(), n_kv, n, dk),
            kvcache::ConstTensorView<float, 3>(v.data(), kv.values_in_keys() ? 0 : n_kv, n, dv), pos);
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, static_cast<double>(std::abs(a[i] - b[i])));
  return m;
}

/// Forces an ISA for the lifetime of the object.
struct ScopedIsa {
  explicit ScopedIsa(kvcache::Isa isa) { kvcache::set_isa_for_testing(isa); }
  ~ScopedIsa() { kvcache::set_isa_for_testing(std::nullopt); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;
};

/// Runs f, which must throw kvcache::Error with a message containing needle.
template <class F>
void expect_error_mentioning(F&& f, const std::string& needle) {
  try {
    f();
    FAIL() << "no kvcache::Error; expected one mentioning '" << needle << "'";
  } catch (const kvcache::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

inline std::string isa_param_name(const testing::TestParamInfo<kvcache::Isa>& info) {
  return std::string(kvcache::isa_name(info.param));
}

}  // namespace kvtest

namespace kvtest {

/// An executor with real threads, one per task up to `threads` at once, to exercise the parallel paths.
struct ThreadExecutor {
  int threads = 2;
  [[nodiscard]] int concurrency() const noexcept { return threads; }
  template <class F>
  void parallel_for(int n, F&& f) const noexcept {
    std::vector<std::thread> pool;
    std::atomic<int> next{0};
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        for (int i = next++; i < n; i = next++) f(i);
      });
    for (auto& th : pool) th.join();
  }
};

}  // namespace kvtest
