#pragma once

// Executors: threading belongs to the engine. A kernel that can use several threads takes an executor, which is
// any type with
//   int concurrency() const;                                   how many tasks may run at once
//   void parallel_for(int n, F&& f) const;                     calls f(i) for i in [0, n), possibly concurrently
// The calls of f must all have returned when parallel_for returns. f is noexcept.

#include <concepts>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <utility>

namespace kvcache {

template <class E>
concept Executor = requires(E const& e) {
  { e.concurrency() } -> std::convertible_to<int>;
  e.parallel_for(1, [](int) noexcept {});
};

/// Runs every task on the calling thread, in order. The default.
struct SerialExecutor {
  [[nodiscard]] int concurrency() const noexcept { return 1; }
  template <class F>
  void parallel_for(int n, F&& f) const noexcept {
    for (int i = 0; i < n; ++i) f(i);
  }
};

#if defined(_OPENMP)
/// Uses the includer's OpenMP runtime: a parallel loop over the tasks with dynamic scheduling.
struct OpenMPExecutor {
  int threads = 0;  ///< 0: omp_get_max_threads()
  [[nodiscard]] int concurrency() const noexcept { return threads > 0 ? threads : omp_get_max_threads(); }
  template <class F>
  void parallel_for(int n, F&& f) const noexcept {
    const int t = concurrency();
#pragma omp parallel for schedule(dynamic, 1) num_threads(t)
    for (int i = 0; i < n; ++i) f(i);
  }
};
#endif

}  // namespace kvcache
