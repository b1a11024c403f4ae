// select_removals (policy/select.hpp) against a brute-force selection, for every ISA this CPU has: the single-removal
// scan (vectorised per ISA) and the many-removal path, with many tied priorities, NaN, sinks, a recent window, a
// newest position given or scanned for, a priority given as a product (VATP's fused form), and lengths around the
// vector widths, and longer ones (ties far apart).

#include "kvcache/policy/select.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "kvcache/policy/h2o.hpp"
#include "kvcache/policy/vatp.hpp"
#include "test_util.hpp"

namespace {

using kvcache::Position;

// What select_removals must return, written the slow way: protected rows stay; the others are sorted by priority
// descending (NaN lowest), newer position first among equals; the first budget - protected are kept.
std::set<std::int32_t> expected_removals(const std::vector<Position>& pos, const std::vector<float>& pri,
                                         const kvcache::ResolvedBudget& b) {
  const auto n = static_cast<std::int64_t>(pos.size());
  if (n <= b.total) return {};
  const Position newest = *std::max_element(pos.begin(), pos.end());
  std::vector<std::int32_t> others;
  std::int64_t kept = 0;
  for (std::int32_t s = 0; s < n; ++s) {
    const bool prot = pos[std::size_t(s)] < b.sinks || (b.recent > 0 && pos[std::size_t(s)] > newest - b.recent);
    if (prot)
      ++kept;
    else
      others.push_back(s);
  }
  auto key = [&](std::int32_t s) {
    const float p = pri[std::size_t(s)];
    return std::isnan(p) ? -std::numeric_limits<float>::infinity() : p;
  };
  std::sort(others.begin(), others.end(), [&](std::int32_t a, std::int32_t c) {
    return key(a) != key(c) ? key(a) > key(c) : pos[std::size_t(a)] > pos[std::size_t(c)];
  });
  const auto keep = static_cast<std::size_t>(std::clamp<std::int64_t>(b.total - kept, 0, std::int64_t(others.size())));
  return {others.begin() + std::ptrdiff_t(keep), others.end()};
}

class SelectTest : public testing::TestWithParam<kvcache::Isa> {};

TEST_P(SelectTest, MatchesBruteForce) {
  std::uint32_t seed = 7;
  auto next = [&seed] { return (seed = seed * 1664525u + 1013904223u) >> 8; };
  for (std::int64_t n : {1, 2, 7, 15, 16, 17, 31, 33, 64, 100, 511, 512, 513, 1000, 2049}) {
    for (int trial = 0; trial < 24; ++trial) {
      // Shuffled distinct positions (compaction leaves them out of order), a few priority levels so that ties are
      // common, some NaN and -0.0 / +0.0 among them.
      std::vector<Position> pos(static_cast<std::size_t>(n));
      // Every third trial starts below zero, with a sink count below that (nothing protected as a sink): the
      // single-removal scan orders positions as biased unsigned numbers.
      const bool negative = trial % 3 == 0;
      std::iota(pos.begin(), pos.end(), Position(negative ? -40 : 3));
      for (std::size_t i = pos.size(); i > 1; --i) std::swap(pos[i - 1], pos[next() % i]);
      std::vector<float> pri(pos.size());
      for (auto& p : pri) {
        // Every fifth trial: only -0, +0 and 0.25, so the lowest is a tie between the two zeros.
        const std::uint32_t r = trial % 5 == 0 ? 1 + next() % 3 : next() % 16;
        p = r == 0   ? std::numeric_limits<float>::quiet_NaN()
            : r == 1 ? -0.0f
            : r == 2 ? 0.0f
                     : static_cast<float>(int(r % 5) - 2) * 0.25f;
      }
      kvcache::ResolvedBudget b;
      b.sinks = negative ? -50 : std::int64_t(next() % 6);
      b.recent = trial % 4 == 0 ? 0 : std::int64_t(next() % 5);
      // One removal (the decode step) for half the trials, then several, then everything not protected.
      b.total = trial % 2 == 0 ? n - 1 : std::max<std::int64_t>(0, n - 1 - std::int64_t(next() % std::uint32_t(n)));
      if (b.total < b.sinks + b.recent) b.total = std::min<std::int64_t>(n, b.sinks + b.recent);
      // The fused product form: priority = base x factor with factors in {0.5, 1, 2} (exact products, so the
      // expected selection is that of the multiplied-out priorities).
      std::vector<float> base(pri.size()), factor(pri.size());
      for (std::size_t i = 0; i < pri.size(); ++i) {
        factor[i] = 0.5f * float(1u << (next() % 3));
        base[i] = pri[i] / factor[i];
      }
      const auto want = expected_removals(pos, pri, b);
      for (int variant = 0; variant < 3; ++variant) {
        const bool give_newest = variant == 1, fused = variant == 2;
        std::vector<std::int32_t> scratch(pos.size()), removals(pos.size());
        const Position newest = give_newest ? *std::max_element(pos.begin(), pos.end()) : -1;
        const std::size_t r =
            fused ? kvcache::select_removals(pos, base, b, scratch, removals, GetParam(), newest, factor)
                  : kvcache::select_removals(pos, pri, b, scratch, removals, GetParam(), newest);
        const std::set<std::int32_t> got(removals.begin(), removals.begin() + std::ptrdiff_t(r));
        EXPECT_EQ(got.size(), r) << "a slot listed twice";
        EXPECT_EQ(got, want) << "n " << n << " trial " << trial << " total " << b.total << " sinks " << b.sinks
                             << " recent " << b.recent << (give_newest ? " (newest given)" : "")
                             << (fused ? " (fused product)" : "");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, SelectTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

// H2O selects straight from its scores; a policy derived from it that ranks otherwise does not inherit that.
struct RanksOtherwise : kvcache::H2O {
  static constexpr std::string_view kName = "ranks_otherwise";
  void rank(const kvcache::RankInput& in, std::span<float> priority) const noexcept {
    for (std::size_t j = 0; j < priority.size(); ++j) priority[j] = -in.scores[j];
  }
};
static_assert(kvcache::RanksByScores<kvcache::H2O>);
static_assert(!kvcache::RanksByScores<RanksOtherwise>);
static_assert(!kvcache::RanksByScores<kvcache::VATP>);
static_assert(kvcache::RanksByScoresTimesValueNorms<kvcache::VATP>);
static_assert(!kvcache::RanksByScoresTimesValueNorms<kvcache::H2O>);

}  // namespace
