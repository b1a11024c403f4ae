// select_removals (policy/select.hpp) against a brute-force selection, for every ISA this CPU has: the single-removal
// scan (vectorised per ISA) and the many-removal path, with many tied priorities, NaN, sinks, a recent window, a
// newest position given or scanned for, a priority given as a product (VATP's fused form), no priorities at all
// (StreamingLLM's selection by age), negated priorities (L2Norm's), and lengths around the vector widths, and longer
// ones (ties far apart); and KVCache's decode steps against the same brute force.

#include "kvcache/policy/select.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "kvcache/kvcache.hpp"
#include "kvcache/policy/h2o.hpp"
#include "kvcache/policy/vatp.hpp"
#include "test_util.hpp"

namespace {

using kvcache::Position;

// What select_removals must return, written the slow way: protected rows stay; the others are sorted by priority
// descending (NaN lowest, below -inf), newer position first among equals; the first budget - protected are kept.
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
  // (NaN first, then the value: NaN sorts below -inf; -0 == +0 as floats compare.)
  auto key = [&](std::int32_t s) {
    const float p = pri[std::size_t(s)];
    return std::pair<int, float>(std::isnan(p) ? 0 : 1, std::isnan(p) ? 0.0f : p);
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
      // common, some NaN, -inf, +inf and -0.0 / +0.0 among them (NaN must rank below -inf on both paths).
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
            : r == 4 ? -std::numeric_limits<float>::infinity()
            : r == 9 ? std::numeric_limits<float>::infinity()
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
      // No priorities (Priority::by_age(): every row alike): the oldest unprotected rows go.
      const auto want_by_age = expected_removals(pos, std::vector<float>(pri.size(), 0.0f), b);
      // Negated (Priority::negated: the scan flips the sign): -pri given, pri's selection expected.
      // Also negated and fused (variant 5: the product's sign flipped, -base x factor).
      std::vector<float> negated(pri.size()), neg_base(base.size());
      for (std::size_t i = 0; i < pri.size(); ++i) {
        negated[i] = -pri[i];
        neg_base[i] = -base[i];
      }
      for (int variant = 0; variant < 6; ++variant) {
        const bool give_newest = variant == 1, fused = variant == 2, by_age = variant == 3, negate = variant >= 4;
        std::vector<std::int32_t> scratch(pos.size()), removals(pos.size());
        const Position newest = give_newest ? *std::max_element(pos.begin(), pos.end()) : -1;
        const std::size_t r =
            fused ? kvcache::select_removals(pos, kvcache::Priority::product(base, factor), b, scratch, removals,
                                             GetParam(), newest)
            : by_age
                ? kvcache::select_removals(pos, kvcache::Priority::by_age(), b, scratch, removals, GetParam(), newest)
            : variant == 4 ? kvcache::select_removals(pos, kvcache::Priority::negated(negated), b, scratch, removals,
                                                      GetParam(), newest)
            : variant == 5
                ? kvcache::select_removals(pos, kvcache::Priority{neg_base, factor, true}, b, scratch, removals,
                                           GetParam(), newest)
                : kvcache::select_removals(pos, kvcache::Priority::of(pri), b, scratch, removals, GetParam(), newest);
        const std::set<std::int32_t> got(removals.begin(), removals.begin() + std::ptrdiff_t(r));
        EXPECT_EQ(got.size(), r) << "a slot listed twice";
        EXPECT_EQ(got, by_age ? want_by_age : want)
            << "n " << n << " trial " << trial << " total " << b.total << " sinks " << b.sinks << " recent " << b.recent
            << (give_newest ? " (newest given)" : "") << (fused ? " (fused product)" : "")
            << (by_age ? " (by age)" : "") << (negate ? " (negated)" : "");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, SelectTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

// A policy ranking by a hash of (position, newest, head) with 61 levels, NaN and both zeros among them (so that the
// lowest priority is sometimes tied), two heads with different budgets, and head 1's window changing every 50
// positions (a dynamic budget).
struct HashRanked {
  static constexpr std::string_view kName = "hash_ranked";
  [[nodiscard]] kvcache::PolicyNeeds needs() const noexcept { return {}; }
  [[nodiscard]] kvcache::ResolvedBudget budget(int, int h, std::int64_t) const {
    kvcache::ResolvedBudget b;
    b.total = h == 0 ? 40 : 33;
    b.recent = h == 0 ? 9 : 12;
    b.sinks = h == 0 ? 3 : 0;
    return b;
  }
  [[nodiscard]] kvcache::ResolvedBudget budget_now(const kvcache::RankInput& in, kvcache::ResolvedBudget b) const {
    if (in.kv_head == 1 && (in.newest / 50) % 2 == 1) b.recent = 5;
    return b;
  }
  static float priority(Position p, Position newest, int h) {
    std::uint32_t x = std::uint32_t(p) * 2654435761u ^ std::uint32_t(newest) * 40503u ^ std::uint32_t(h) * 97u;
    x ^= x >> 13;
    const std::uint32_t r = (x * 2246822519u) >> 26;  // 0 .. 63
    return r == 0 ? std::numeric_limits<float>::quiet_NaN() : r == 1 ? -0.0f : r == 2 ? 0.0f : float(r % 61) * 0.125f;
  }
  void rank(const kvcache::RankInput& in, std::span<float> out) const noexcept {
    for (std::size_t j = 0; j < out.size(); ++j) out[j] = priority(in.positions[j], in.newest, in.kv_head);
  }
};

// KVCache's decode steps against the slow selection: over 700 steps whose positions advance by 1, by 3 and by 300, with
// ties, NaN, sinks and a window that changes, each head keeps after every step what expected_removals keeps (eviction
// slack 0: one removal a step, the vectorised scan; 3: batched).
TEST_P(SelectTest, DecodeStepsKeepWhatThePositionsSelect) {
  kvtest::ScopedIsa isa(GetParam());
  const int n_kv = 2, d = 8;
  const HashRanked policy;
  for (const std::int64_t slack : {0, 3}) {
    kvcache::KVCacheOptions opt;
    opt.eviction_slack = slack;
    kvcache::KVCache<HashRanked> cache({1, {n_kv, n_kv, d, d}, 64, kvcache::DType::kF32}, policy, opt);
    const std::int64_t m = 50;
    const auto k = kvtest::random_vector(std::size_t(n_kv * m * d), 3),
               q = kvtest::random_vector(std::size_t(m * n_kv * d), 4);
    std::vector<float> out(q.size());
    std::vector<Position> prompt(static_cast<std::size_t>(m));
    std::iota(prompt.begin(), prompt.end(), Position(0));
    cache.prefill(0, kvcache::ConstTensorView<float, 3>(k.data(), n_kv, m, d),
                  kvcache::ConstTensorView<float, 3>(k.data(), n_kv, m, d), prompt,
                  kvcache::ConstTensorView<float, 3>(q.data(), m, n_kv, d),
                  kvcache::TensorView<float, 3>(out.data(), m, n_kv, d));
    // The test's own cache: the positions each head keeps, cut by the slow selection.
    std::vector<std::vector<Position>> want(n_kv, prompt);
    auto cut = [&](int h, Position newest, std::int64_t allowed) {
      kvcache::RankInput in;
      in.kv_head = h;
      in.newest = newest;
      const kvcache::ResolvedBudget b = policy.budget_now(in, policy.budget(0, h, m));
      auto& w = want[std::size_t(h)];
      if (std::int64_t(w.size()) <= b.total + allowed) return;
      std::vector<float> pri;
      for (Position p : w) pri.push_back(HashRanked::priority(p, newest, h));
      const auto removals = expected_removals(w, pri, b);
      std::vector<Position> left;
      for (std::size_t s = 0; s < w.size(); ++s)
        if (!removals.count(std::int32_t(s))) left.push_back(w[s]);
      w = left;
    };
    for (int h = 0; h < n_kv; ++h) cut(h, m - 1, 0);
    Position pos = m - 1;
    const auto kt = kvtest::random_vector(std::size_t(n_kv * d), 5),
               qt = kvtest::random_vector(std::size_t(n_kv * d), 6);
    std::vector<float> o(std::size_t(n_kv * d));
    for (int step = 1; step <= 700; ++step) {
      pos += step % 97 == 0 ? 300 : step % 7 == 0 ? 3 : 1;
      cache.decode(0, kvcache::ConstTensorView<float, 2>(kt.data(), n_kv, d),
                   kvcache::ConstTensorView<float, 2>(kt.data(), n_kv, d), pos,
                   kvcache::ConstTensorView<float, 2>(qt.data(), n_kv, d),
                   kvcache::TensorView<float, 2>(o.data(), n_kv, d));
      for (int h = 0; h < n_kv; ++h) {
        want[std::size_t(h)].push_back(pos);
        cut(h, pos, slack);
        const std::set<Position> expect(want[std::size_t(h)].begin(), want[std::size_t(h)].end());
        auto got = cache.layer(0).positions(h);
        ASSERT_EQ(std::set<Position>(got.begin(), got.end()), expect)
            << "slack " << slack << " step " << step << " head " << h << " position " << pos;
      }
    }
  }
}

// H2O's priority is read in place; a policy derived from it that ranks otherwise hides that form, so its own
// ranking is the one used.
struct RanksOtherwise : kvcache::H2O {
  static constexpr std::string_view kName = "ranks_otherwise";
  void rank(const kvcache::RankInput& in, std::span<float> priority) const noexcept {
    for (std::size_t j = 0; j < priority.size(); ++j) priority[j] = -in.scores[j];
  }
};
static_assert(kvcache::RanksInPlace<kvcache::H2O> && kvcache::RanksInPlace<kvcache::VATP>);
static_assert(!kvcache::RanksInPlace<RanksOtherwise> && kvcache::RanksIntoArray<RanksOtherwise>);
static_assert(kvcache::Policy<RanksOtherwise>);

}  // namespace
