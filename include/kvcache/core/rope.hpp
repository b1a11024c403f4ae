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
  [[nodiscard]] bool interleaved() const noexcept { return cfg_.interleaved; }

  /// x (f32, head_dim wide) is rotated at some position p; afterwards it is rotated at p + delta.
  void shift(float* x, double delta) const {
    std::vector<double> c, s;
    angles(delta, c, s);
    apply(x, c, s);
  }
  /// The cosines and sines of a shift by delta, for apply(); compute once, apply to many rows.
  void angles(double delta, std::vector<double>& c, std::vector<double>& s) const {
    c.resize(inv_freq_.size());
    s.resize(inv_freq_.size());
    for (std::size_t i = 0; i < inv_freq_.size(); ++i) {
#if defined(__GLIBC__)
      // One argument reduction for both; glibc's sincos runs the code of its cos and sin, so the results are theirs.
      ::sincos(delta * inv_freq_[i], &s[i], &c[i]);
#else
      c[i] = std::cos(delta * inv_freq_[i]);
      s[i] = std::sin(delta * inv_freq_[i]);
#endif
    }
  }
  void apply(float* x, const std::vector<double>& c, const std::vector<double>& s) const noexcept {
    const int half = dims_ / 2;
    for (int i = 0; i < half; ++i) {
      const int i0 = cfg_.interleaved ? 2 * i : i, i1 = cfg_.interleaved ? 2 * i + 1 : i + half;
      const double x0 = x[i0], x1 = x[i1];
      x[i0] = static_cast<float>(x0 * c[std::size_t(i)] - x1 * s[std::size_t(i)]);
      x[i1] = static_cast<float>(x0 * s[std::size_t(i)] + x1 * c[std::size_t(i)]);
    }
  }

 private:
  RopeConfig cfg_{};
  int dims_ = 0;
  std::vector<double> inv_freq_;
};

}  // namespace kvcache
