#pragma once

// Selection shared by every ranking policy: keep the protected rows (the first `sinks` positions, and the `recent`
// newest positions: those within `recent` of the newest position), then the best-ranked other rows up to the budget.
// Order: priority descending; among equal priorities the newer position is kept (the one defined behaviour of the
// official codes, where torch.argmin evicts the oldest). NaN ranks below everything, -inf included, so a bad score
// never evicts a good row (and never a protected one); -0 and +0 are equal.
//
// One removal (the paper-faithful decode step) is a single scan, compiled per ISA (policy/detail/select_scan.ipp);
// more use nth_element. Nothing allocates: the caller passes scratch of capacity size.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>

#include "kvcache/core/budget.hpp"
#include "kvcache/core/macros.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/simd/dispatch.hpp"

#define KVCACHE_FOREACH_ISA_FILE "kvcache/policy/detail/select_scan.ipp"
#define KVCACHE_FOREACH_ISA_NAMESPACE kvcache::select_kernels
#include "kvcache/simd/foreach_isa.inc"

namespace kvcache {

/// The priority of every row of one head, as the selection reads it without a ranking copy: row j ranks by
/// values[j], times factor[j] when a factor is given, negated when `negate`. No values: every row ranks alike, so
/// the oldest unprotected rows go. A policy whose priority is one of these forms returns it from
/// `Priority rank(RankInput const&) const` (policy/policy.hpp); any other writes its priorities into an array.
struct Priority {
  std::span<const float> values;
  std::span<const float> factor;
  bool negate = false;

  /// Age alone decides (StreamingLLM).
  static constexpr Priority by_age() noexcept { return {}; }
  /// values[j] (H2O's accumulated attention).
  static constexpr Priority of(std::span<const float> v) noexcept { return {v, {}, false}; }
  /// values[j] x factor[j] (VATP: attention x value norm).
  static constexpr Priority product(std::span<const float> v, std::span<const float> f) noexcept {
    return {v, f, false};
  }
  /// -values[j] (L2Norm: the highest key norms go first).
  static constexpr Priority negated(std::span<const float> v) noexcept { return {v, {}, true}; }
  [[nodiscard]] constexpr bool by_age_only() const noexcept { return values.empty(); }
};

namespace detail {
/// True when row a should be kept before row b. NaN is below -inf (the single-removal scan's order keys rank it so),
/// -0 equals +0, and equal priorities keep the newer position.
inline bool keep_before(float pa, Position a, float pb, Position b) noexcept {
  const bool na = std::isnan(pa), nb = std::isnan(pb);
  if (na != nb) return nb;
  return !na && pa != pb ? pa > pb : a > b;
}
}  // namespace detail

/// Fills `removals` with the slots to drop so that at most budget.total rows remain; returns how many.
/// positions: per slot [0, n); priority: spans of n entries (or none: by age). scratch, removals: at least n entries.
/// isa: where the scans run. newest: the largest position among the rows when the caller knows it (KVCache does:
/// RankInput::newest), else -1 and it is scanned for.
inline std::size_t select_removals(std::span<const Position> positions, const Priority& priority_in,
                                   const ResolvedBudget& budget, std::span<std::int32_t> scratch,
                                   std::span<std::int32_t> removals, Isa isa = Isa::kScalar,
                                   Position newest = -1) noexcept {
  const std::span<const float> priority = priority_in.values, factor = priority_in.factor;
  const bool negate = priority_in.negate;
  const auto n = static_cast<std::int64_t>(positions.size());
  if (budget.unlimited() || n <= budget.total) return 0;
  if (newest < 0 && budget.recent > 0)
    newest = [&]() noexcept -> Position {
      KVCACHE_DISPATCH(isa, kvcache::select_kernels, newest_position, (positions.data(), n))
    }();
  const std::int64_t recent_from =
      budget.recent > 0 ? std::int64_t{newest} - budget.recent + 1 : std::numeric_limits<std::int64_t>::max();
  auto is_protected = [&](std::int64_t s) {
    const Position p = positions[static_cast<std::size_t>(s)];
    return p < budget.sinks || p >= recent_from;
  };
  const std::int64_t to_remove = n - budget.total;
  if (to_remove == 1) {  // the paper-faithful decode step: one vectorised scan, no sort
    const auto clamp32 = [](std::int64_t x) {
      return static_cast<std::int32_t>(std::clamp<std::int64_t>(x, std::numeric_limits<std::int32_t>::min(),
                                                                std::numeric_limits<std::int32_t>::max()));
    };
    const std::int32_t sinks = clamp32(budget.sinks), from = clamp32(recent_from);
    const std::int64_t slot = [&]() noexcept -> std::int64_t {
      if (priority.empty()) {
        KVCACHE_DISPATCH(isa, kvcache::select_kernels, select_oldest, (positions.data(), n, sinks, from))
      }
      KVCACHE_DISPATCH(
          isa, kvcache::select_kernels, select_one,
          (positions.data(), priority.data(), factor.empty() ? nullptr : factor.data(), n, sinks, from, negate))
    }();
    if (slot < 0) return 0;  // everything is protected (budget below sinks + recent: rejected at configuration)
    removals[0] = static_cast<std::int32_t>(slot);
    return 1;
  }
  std::size_t m = 0;
  std::int64_t kept_protected = 0;
  for (std::int64_t s = 0; s < n; ++s) {
    if (is_protected(s))
      ++kept_protected;
    else
      scratch[m++] = static_cast<std::int32_t>(s);
  }
  const std::int64_t keep_others = std::clamp<std::int64_t>(budget.total - kept_protected, 0, std::int64_t(m));
  auto at = [&](std::int32_t s) {
    if (priority.empty()) return 0.0f;
    const float p = factor.empty() ? priority[std::size_t(s)] : priority[std::size_t(s)] * factor[std::size_t(s)];
    return negate ? -p : p;
  };
  auto better = [&](std::int32_t a, std::int32_t b) {
    return detail::keep_before(at(a), positions[std::size_t(a)], at(b), positions[std::size_t(b)]);
  };
  if (keep_others > 0 && keep_others < std::int64_t(m))
    std::nth_element(scratch.begin(), scratch.begin() + keep_others, scratch.begin() + std::ptrdiff_t(m), better);
  std::size_t r = 0;
  for (std::size_t i = static_cast<std::size_t>(keep_others); i < m; ++i) removals[r++] = scratch[i];
  return r;
}

}  // namespace kvcache
