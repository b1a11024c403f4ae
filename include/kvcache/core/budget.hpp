#pragma once

// Budgets: how many rows each (layer, KV head) keeps, written as absolute tokens or as a ratio of the prompt length.

#include <cmath>
#include <cstdint>
#include <limits>

#include "kvcache/core/error.hpp"

namespace kvcache {

enum class Rounding : std::uint8_t { kFloor, kCeil };

/// A count of tokens: `tokens` as given, or `ratio` x the prompt length rounded as stated (H2O and VATP floor,
/// l2compress rounds up; docs/policies/README.md). A ratio takes precedence when it is positive.
struct Count {
  std::int64_t tokens = 0;
  double ratio = 0.0;
  Rounding rounding = Rounding::kFloor;

  static constexpr Count of(std::int64_t t) noexcept { return Count{t, 0.0, Rounding::kFloor}; }
  static constexpr Count fraction(double r, Rounding round = Rounding::kFloor) noexcept { return Count{0, r, round}; }
  static constexpr Count unlimited() noexcept { return Count{std::numeric_limits<std::int64_t>::max(), 0.0}; }

  [[nodiscard]] std::int64_t resolve(std::int64_t prompt_length) const {
    KVCACHE_REQUIRE(ratio >= 0.0 && std::isfinite(ratio), "a budget ratio must be finite and >= 0, got ", ratio);
    KVCACHE_REQUIRE(tokens >= 0, "a token count must be >= 0, got ", tokens);
    if (ratio <= 0.0) return tokens;
    const double x = ratio * static_cast<double>(prompt_length);
    return static_cast<std::int64_t>(rounding == Rounding::kCeil ? std::ceil(x - 1e-9) : std::floor(x + 1e-9));
  }
};

/// What one (layer, KV head) keeps after a selection: `total` rows, of which the positions below `sinks` and those
/// within `recent` of the newest position are protected. Both count positions, not rows: in a sequence whose
/// positions are contiguous they are the first `sinks` and the `recent` newest tokens; where a sequence skips
/// positions, fewer rows are protected. kUnlimited means "never evict".
struct ResolvedBudget {
  static constexpr std::int64_t kUnlimited = std::numeric_limits<std::int64_t>::max();
  std::int64_t total = kUnlimited;
  std::int64_t recent = 0;
  std::int64_t sinks = 0;

  [[nodiscard]] bool unlimited() const noexcept { return total == kUnlimited; }
};

}  // namespace kvcache
