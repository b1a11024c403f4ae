#pragma once

// Rotary position embedding helper: rotate a key (or query) that is already rotated at one position so that it is
// rotated at another, by the angle-addition identity. Two layouts: rotate-half (Llama/HF: pairs (i, i + r/2)) and
// interleaved (GPT-J/Meta: pairs (2i, 2i + 1)); r = rotary dims (partial rotary allowed).

#include <cmath>
#include <vector>

#include "kvcache/core/error.hpp"

namespace kvcache {

struct RopeConfig {
  int rotary_dims = 0;  ///< 0: the whole head
  double base = 10000.0;
  bool interleaved = false;
};

/// Precomputed inverse frequencies for one head width.
class Rope {
 public:
  Rope() = default;
  Rope(const RopeConfig& cfg, int head_dim) : cfg_(cfg) {
    const int r = cfg.rotary_dims > 0 ? cfg.rotary_dims : head_dim;
    KVCACHE_REQUIRE(r % 2 == 0 && r <= head_dim, "rotary_dims must be even and at most head_dim ", head_dim, ", got ",
                    r);
    KVCACHE_REQUIRE(cfg.base > 1.0, "RoPE base must be above 1, got ", cfg.base);
    dims_ = r;
    inv_freq_.resize(static_cast<std::size_t>(r / 2));
    for (int i = 0; i < r / 2; ++i) inv_freq_[std::size_t(i)] = std::pow(cfg.base, -2.0 * i / r);
  }
  [[nodiscard]] int rotary_dims() const noexcept { return dims_; }

  /// x (f32, head_dim wide) is rotated at some position p; afterwards it is rotated at p + delta.
  void shift(float* x, double delta) const noexcept {
    const int half = dims_ / 2;
    for (int i = 0; i < half; ++i) {
      const double a = delta * inv_freq_[std::size_t(i)];
      const double c = std::cos(a), s = std::sin(a);
      const int i0 = cfg_.interleaved ? 2 * i : i, i1 = cfg_.interleaved ? 2 * i + 1 : i + half;
      const double x0 = x[i0], x1 = x[i1];
      x[i0] = static_cast<float>(x0 * c - x1 * s);
      x[i1] = static_cast<float>(x0 * s + x1 * c);
    }
  }

 private:
  RopeConfig cfg_{};
  int dims_ = 0;
  std::vector<double> inv_freq_;
};

}  // namespace kvcache
