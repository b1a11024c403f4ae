#pragma once

// Rotary position embedding helper: rotate a key (or query) that is already rotated at one position so that it is
// rotated at another, by the angle-addition identity. Two layouts: rotate-half (Llama/HF: pairs (i, i + r/2)) and
// interleaved (GPT-J/Meta: pairs (2i, 2i + 1)); r = rotary dims (partial rotary allowed).
//
// Pair i turns by p x inv_freq[i] at position p, so a shift by delta is a rotation by delta x inv_freq[i] whatever
// the frequencies are. RoPE scaling changes only inv_freq; the fields and names are those of a model's config.json
// (`rope_theta`, `rope_scaling: {rope_type, factor, ...}`), the formulas those of Hugging Face transformers'
// modeling_rope_utils (M = original_max_position_embeddings):
//   default  inv_freq[i] = base^(-2i / r)
//   linear   inv_freq[i] / factor
//   dynamic  (dynamic NTK) for a sequence of L > M tokens, the default frequencies of
//            base x (factor L / M - (factor - 1))^(r / (r - 2)); up to M the default ones. They change with the
//            length: Rope takes the length it is built for, and the policies build theirs once, for up to M tokens
//            (StreamingLLM's in-cache positions stay below the cache size).
//   llama3   wavelengths 2 pi / inv_freq above M / low_freq_factor are divided by factor, those below
//            M / high_freq_factor kept, and those between blended by s = (M / wavelength - low) / (high - low):
//            (1 - s) inv_freq / factor + s inv_freq
//   yarn     between the dims where a pair turns beta_fast and beta_slow times over M, a linear ramp from the
//            original frequency (extrapolation) to inv_freq / factor (interpolation); YaRN also scales attention
//            (rope_attention_factor, rope_softmax_scale_factor).
// A re-rotation is a pure rotation, so keys that a model scaled (YaRN's attention factor on cos and sin) keep it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "kvcache/core/error.hpp"

namespace kvcache {

/// config.json's rope_scaling.rope_type (older files: "type").
enum class RopeScaling : std::uint8_t { kNone, kLinear, kDynamic, kLlama3, kYarn };

struct RopeConfig {
  int rotary_dims = 0;    ///< 0: the whole head
  double base = 10000.0;  ///< rope_theta
  bool interleaved = false;
  RopeScaling scaling = RopeScaling::kNone;
  double factor = 1.0;  ///< rope_scaling.factor
  /// M: rope_scaling.original_max_position_embeddings (llama3, yarn); for dynamic, max_position_embeddings.
  std::int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0;   ///< llama3
  double high_freq_factor = 4.0;  ///< llama3
  double beta_fast = 32.0;        ///< yarn
  double beta_slow = 1.0;         ///< yarn
  double mscale = 0.0;            ///< yarn (DeepSeek-V2); 0: unset
  double mscale_all_dim = 0.0;    ///< yarn (DeepSeek-V2); 0: unset
};

namespace detail {
// YaRN's magnitude correction: 0.1 m ln(scale) + 1 above a scale of 1.
inline double yarn_mscale(double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; }
// The (fractional) dim at which a pair turns `rotations` times over max_pos tokens.
inline double yarn_correction_dim(double rotations, int dims, double base, double max_pos) {
  return dims * std::log(max_pos / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
}
}  // namespace detail

/// YaRN's attention factor (from mscale / mscale_all_dim when both are set, else from the factor alone): what a model
/// multiplies cos and sin by, so queries and keys. 1 for every other scaling.
inline double rope_attention_factor(const RopeConfig& c) {
  if (c.scaling != RopeScaling::kYarn) return 1.0;
  if (c.mscale > 0 && c.mscale_all_dim > 0)
    return detail::yarn_mscale(c.factor, c.mscale) / detail::yarn_mscale(c.factor, c.mscale_all_dim);
  return detail::yarn_mscale(c.factor, 1.0);
}

/// What DeepSeek-V2's attention multiplies its softmax scale by under YaRN: yarn_mscale(factor, mscale_all_dim)^2
/// (1 when mscale_all_dim is unset or the scaling is not YaRN). Multiply KVCacheOptions::softmax_scale by it.
inline double rope_softmax_scale_factor(const RopeConfig& c) {
  if (c.scaling != RopeScaling::kYarn || c.mscale_all_dim <= 0) return 1.0;
  const double m = detail::yarn_mscale(c.factor, c.mscale_all_dim);
  return m * m;
}

/// The inverse frequencies of `dims` rotary dims (dims / 2 pairs) under c's scaling, for a sequence of `length`
/// tokens (read by dynamic scaling only).
inline std::vector<double> rope_inv_freq(const RopeConfig& c, int dims, std::int64_t length = 0) {
  KVCACHE_REQUIRE(c.base > 1.0, "RoPE base must be above 1, got ", c.base);
  KVCACHE_REQUIRE(c.scaling == RopeScaling::kNone || (std::isfinite(c.factor) && c.factor >= 1.0),
                  "rope_scaling.factor must be >= 1, got ", c.factor);
  const bool needs_m =
      c.scaling == RopeScaling::kDynamic || c.scaling == RopeScaling::kLlama3 || c.scaling == RopeScaling::kYarn;
  KVCACHE_REQUIRE(!needs_m || c.original_max_position_embeddings > 0,
                  "this RoPE scaling needs original_max_position_embeddings > 0, got ",
                  c.original_max_position_embeddings);
  KVCACHE_REQUIRE(c.scaling != RopeScaling::kDynamic || dims > 2, "dynamic RoPE scaling needs more than 2 rotary dims");
  const double M = double(c.original_max_position_embeddings);
  double base = c.base;
  if (c.scaling == RopeScaling::kDynamic && double(length) > M)
    base *= std::pow(c.factor * double(length) / M - (c.factor - 1.0), double(dims) / double(dims - 2));
  std::vector<double> f(std::size_t(dims / 2));
  for (int i = 0; i < dims / 2; ++i) f[std::size_t(i)] = std::pow(base, -2.0 * i / dims);
  switch (c.scaling) {
    case RopeScaling::kNone:
    case RopeScaling::kDynamic:
      break;
    case RopeScaling::kLinear:
      for (double& x : f) x /= c.factor;
      break;
    case RopeScaling::kLlama3: {
      KVCACHE_REQUIRE(c.high_freq_factor > c.low_freq_factor && c.low_freq_factor > 0,
                      "llama3 RoPE scaling needs high_freq_factor > low_freq_factor > 0, got ", c.high_freq_factor,
                      " and ", c.low_freq_factor);
      const double low_wavelen = M / c.low_freq_factor, high_wavelen = M / c.high_freq_factor;
      for (double& x : f) {
        const double wavelen = 2.0 * std::numbers::pi / x;
        if (wavelen > low_wavelen) {
          x /= c.factor;
        } else if (wavelen >= high_wavelen) {
          const double s = (M / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
          x = (1.0 - s) * x / c.factor + s * x;
        }
      }
      break;
    }
    case RopeScaling::kYarn: {
      double lo = std::floor(detail::yarn_correction_dim(c.beta_fast, dims, c.base, M));
      double hi = std::ceil(detail::yarn_correction_dim(c.beta_slow, dims, c.base, M));
      lo = std::max(lo, 0.0);
      hi = std::min(hi, double(dims - 1));
      if (lo == hi) hi += 0.001;
      for (int i = 0; i < dims / 2; ++i) {
        // The share of the original frequency: 1 below lo (fast pairs extrapolate), 0 above hi (interpolated).
        const double keep = 1.0 - std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0);
        double& x = f[std::size_t(i)];
        x = x / c.factor * (1.0 - keep) + x * keep;
      }
      break;
    }
  }
  return f;
}

/// Precomputed inverse frequencies for one head width.
class Rope {
 public:
  Rope() = default;
  /// length: the sequence length the frequencies are for (dynamic scaling only; 0 or anything up to
  /// original_max_position_embeddings gives the unscaled ones).
  Rope(const RopeConfig& cfg, int head_dim, std::int64_t length = 0) : cfg_(cfg) {
    const int r = cfg.rotary_dims > 0 ? cfg.rotary_dims : head_dim;
    KVCACHE_REQUIRE(r % 2 == 0 && r <= head_dim, "rotary_dims must be even and at most head_dim ", head_dim, ", got ",
                    r);
    dims_ = r;
    inv_freq_ = rope_inv_freq(cfg, r, length);
  }
  [[nodiscard]] const std::vector<double>& inv_freq() const noexcept { return inv_freq_; }
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
