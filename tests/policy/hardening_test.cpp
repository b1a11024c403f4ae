// Bad input through the public API: every entry point checks indices, shapes, positions and budgets before it changes
// anything, so a kvcache::Error leaves the cache's observable state (lengths, positions, scores, kv_bytes) as it was.
// Also: the executor decides prefill's threads, and SnapKV scores a second prompt afresh.

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <map>
#include <numeric>
#include <vector>

#include "policy_test_util.hpp"

namespace {

using kvcache::CacheConfig;
using kvcache::ConstTensorView;
using kvcache::Count;
using kvcache::DType;
using kvcache::KVCache;
using kvcache::Position;
using kvcache::TensorView;
using kvtest::expect_error_mentioning;

// What an engine can observe of a cache.
struct Snapshot {
  std::vector<std::int64_t> lengths;
  std::vector<std::vector<Position>> positions;
  std::vector<std::vector<float>> scores;
  std::size_t kv_bytes = 0;
  bool operator==(const Snapshot&) const = default;
};

template <class Cache>
Snapshot snapshot(const Cache& cache) {
  Snapshot s;
  const auto& c = cache.config();
  for (int l = 0; l < c.n_layers; ++l)
    for (int h = 0; h < c.shape.n_kv_heads; ++h) {
      s.lengths.push_back(cache.length(l, h));
      auto p = cache.layer(l).positions(h);
      s.positions.emplace_back(p.begin(), p.end());
      auto sc = cache.scores(l, h);
      s.scores.emplace_back(sc.begin(), sc.end());
    }
  s.kv_bytes = cache.kv_bytes();
  return s;
}

// Random rows for `m` tokens of a layer with n_kv KV heads and n_q query heads of width d.
struct Rows {
  int n_kv = 2, n_q = 4, d = 16;
  std::int64_t m = 0;
  std::vector<float> k, v, q, out;
  std::vector<Position> positions;
  Rows(int n_kv_, int n_q_, int d_, std::vector<Position> pos, std::uint32_t seed)
      : n_kv(n_kv_), n_q(n_q_), d(d_), m(std::int64_t(pos.size())), positions(std::move(pos)) {
    k = kvtest::random_vector(std::size_t(n_kv * m * d), seed);
    v = kvtest::random_vector(std::size_t(n_kv * m * d), seed + 1);
    q = kvtest::random_vector(std::size_t(m * n_q * d), seed + 2);
    out.assign(std::size_t(m * n_q * d), 0.0f);
  }
  template <class Cache>
  void prefill(Cache& cache, int layer, bool last_chunk = true) {
    cache.prefill(layer, ConstTensorView<float, 3>(k.data(), n_kv, m, d),
                  ConstTensorView<float, 3>(v.data(), n_kv, m, d), positions,
                  ConstTensorView<float, 3>(q.data(), m, n_q, d), TensorView<float, 3>(out.data(), m, n_q, d),
                  last_chunk);
  }
  // Decodes token 0 of these rows at `position`.
  template <class Cache>
  void decode(Cache& cache, int layer, Position position) {
    std::vector<float> k1(std::size_t(n_kv * d)), v1(std::size_t(n_kv * d));
    for (int h = 0; h < n_kv; ++h)
      for (int e = 0; e < d; ++e) {
        k1[std::size_t(h * d + e)] = k[std::size_t(h * m * d + e)];
        v1[std::size_t(h * d + e)] = v[std::size_t(h * m * d + e)];
      }
    cache.decode(layer, ConstTensorView<float, 2>(k1.data(), n_kv, d), ConstTensorView<float, 2>(v1.data(), n_kv, d),
                 position, ConstTensorView<float, 2>(q.data(), n_q, d), TensorView<float, 2>(out.data(), n_q, d));
  }
};

std::vector<Position> iota_positions(std::int64_t n, Position first = 0) {
  std::vector<Position> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), first);
  return p;
}

const CacheConfig kConfig{2, {4, 2, 16, 16}, 128, DType::kF32};

TEST(HardeningTest, IndicesOutOfRangeAreErrors) {
  KVCache<kvcache::H2O> cache(kConfig, kvcache::H2O(Count::of(8), Count::of(8)));
  Rows prompt(2, 4, 16, iota_positions(20), 1);
  prompt.prefill(cache, 0);
  const Snapshot before = snapshot(cache);
  expect_error_mentioning([&] { (void)cache.length(0, 99); }, "KV head 99 does not exist");
  expect_error_mentioning([&] { (void)cache.budget(0, 99); }, "KV head 99 does not exist");
  expect_error_mentioning([&] { (void)cache.scores(0, 99); }, "KV head 99 does not exist");
  expect_error_mentioning([&] { (void)cache.scores(0, -1); }, "KV head -1 does not exist");
  expect_error_mentioning([&] { (void)cache.length(7, 0); }, "layer 7 does not exist");
  expect_error_mentioning([&] { (void)cache.layer(2); }, "layer 2 does not exist");
  expect_error_mentioning([&] { (void)cache.query_head_scores(0, 4); }, "query head 4 does not exist");
  // Found by the API-sequence fuzzer: a policy that sums its scores answered for any layer.
  expect_error_mentioning([&] { (void)cache.query_head_scores(5, 0); }, "layer 5 does not exist");
  expect_error_mentioning([&] { prompt.prefill(cache, 7); }, "layer 7 does not exist");
  expect_error_mentioning([&] { prompt.decode(cache, -1, 30); }, "layer -1 does not exist");
  std::vector<float> q(4 * 16), out(4 * 16);
  expect_error_mentioning(
      [&] {
        cache.read_decode(7, ConstTensorView<float, 2>(q.data(), 4, 16), TensorView<float, 2>(out.data(), 4, 16));
      },
      "layer 7 does not exist");
  EXPECT_EQ(snapshot(cache), before);
}

// Found by the API-sequence fuzzer: an empty chunk's tensors have null data (std::vector's), which reached memcpy.
TEST(HardeningTest, EmptyChunkChangesNothing) {
  KVCache<kvcache::H2O> cache(kConfig, kvcache::H2O(Count::of(8), Count::of(8)));
  Rows prompt(2, 4, 16, iota_positions(20), 1);
  prompt.prefill(cache, 0, /*last_chunk=*/false);
  const Snapshot before = snapshot(cache);
  Rows empty(2, 4, 16, {}, 2);
  ASSERT_EQ(empty.k.data(), nullptr);
  empty.prefill(cache, 0, /*last_chunk=*/false);
  EXPECT_EQ(snapshot(cache), before);
}

// Found by the API-sequence fuzzer: DMC's decode step (which may merge instead of appending) read keys of the
// wrong width past their end.
TEST(HardeningTest, DmcDecodeChecksShapes) {
  KVCache<kvcache::DMC> cache(kConfig, kvcache::DMC{});
  Rows prompt(2, 4, 16, iota_positions(4), 1);
  prompt.prefill(cache, 0);
  const Snapshot before = snapshot(cache);
  std::vector<float> k(2 * 8), v(2 * 16), q(4 * 16), out(4 * 16);
  expect_error_mentioning(
      [&] {
        cache.decode(0, ConstTensorView<float, 2>(k.data(), 2, 8), ConstTensorView<float, 2>(v.data(), 2, 16), 9,
                     ConstTensorView<float, 2>(q.data(), 4, 16), TensorView<float, 2>(out.data(), 4, 16));
      },
      "keys have width 8");
  EXPECT_EQ(snapshot(cache), before);
}

TEST(HardeningTest, PositionsMustBeNonNegativeAndIncreasing) {
  KVCache<kvcache::H2O> cache(kConfig, kvcache::H2O(Count::of(8), Count::of(8)));
  const Snapshot empty = snapshot(cache);
  Rows unordered(2, 4, 16, {200, 150, 150, 5}, 2);
  expect_error_mentioning([&] { unordered.prefill(cache, 0); }, "150 comes after 200");
  Rows repeated(2, 4, 16, {1, 2, 2}, 3);
  expect_error_mentioning([&] { repeated.prefill(cache, 0); }, "2 comes after 2");
  Rows negative(2, 4, 16, {-1, 0}, 4);
  expect_error_mentioning([&] { negative.prefill(cache, 0); }, "positions must be >= 0, got -1");
  EXPECT_EQ(snapshot(cache), empty);

  Rows prompt(2, 4, 16, iota_positions(20), 5);
  prompt.prefill(cache, 0);
  const Snapshot before = snapshot(cache);
  expect_error_mentioning([&] { prompt.decode(cache, 0, 19); }, "19 comes after 19");
  expect_error_mentioning([&] { prompt.decode(cache, 0, 3); }, "3 comes after 19");
  Rows later(2, 4, 16, iota_positions(4, 10), 6);
  expect_error_mentioning([&] { later.prefill(cache, 0); }, "10 comes after 19");
  EXPECT_EQ(snapshot(cache), before);
  // Each layer is its own sequence of positions; reset() starts a new one.
  prompt.prefill(cache, 1);
  cache.reset();
  later.prefill(cache, 0);
  EXPECT_EQ(cache.length(0, 0), 4);
}

TEST(HardeningTest, NegativePositionWithInCachePositionsChangesNothing) {
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{};
  KVCache<kvcache::StreamingLLM> cache(kConfig, kvcache::StreamingLLM(2, 6), opt);
  Rows prompt(2, 4, 16, iota_positions(6), 7);
  prompt.prefill(cache, 0);
  const Snapshot before = snapshot(cache);
  expect_error_mentioning([&] { prompt.decode(cache, 0, -5); }, "positions must be >= 0, got -5");
  EXPECT_EQ(snapshot(cache), before);
  for (Position p = 6; p < 20; ++p) prompt.decode(cache, 0, p);  // the cache still works
  EXPECT_EQ(cache.length(0, 0), 8);
}

TEST(HardeningTest, BudgetErrorsComeBeforeTheAppend) {
  // 0.001 of a 100-token prompt is 0 rows: found when the last chunk arrives, before its rows are stored.
  KVCache<kvcache::H2O> cache(kConfig, kvcache::H2O(Count::fraction(0.001), Count::fraction(0.001)));
  Rows prompt(2, 4, 16, iota_positions(100), 8);
  expect_error_mentioning([&] { prompt.prefill(cache, 0); }, "has a budget of 0 rows");
  EXPECT_EQ(cache.length(0, 0), 0);
  EXPECT_EQ(cache.kv_bytes(), 0u);
  EXPECT_EQ(cache.prompt_length(0), 0);
  // A chunk that is not the last is stored; the error comes with the last one, which then leaves it as it was.
  Rows first(2, 4, 16, iota_positions(50), 9), second(2, 4, 16, iota_positions(50, 50), 10);
  first.prefill(cache, 0, /*last_chunk=*/false);
  const Snapshot before = snapshot(cache);
  expect_error_mentioning([&] { second.prefill(cache, 0); }, "has a budget of 0 rows");
  EXPECT_EQ(snapshot(cache), before);
  EXPECT_EQ(cache.prompt_length(0), 50);
}

TEST(HardeningTest, ImpossibleSettingsFailAtConstruction) {
  expect_error_mentioning([] { kvcache::SnapKV(Count::of(16), 32, 7); },
                          "capacity of 16 rows cannot hold the observation window of 32");
  kvcache::KVCacheOptions threads;
  threads.max_threads = -1;
  expect_error_mentioning([&] { KVCache<kvcache::Full> c(kConfig, kvcache::Full{}, threads); }, "max_threads");
}

// A budget above the capacity is allowed (a cache sized for short sequences never reaches it); the step that finds a
// head full is an error naming the capacity, and changes nothing.
TEST(HardeningTest, BudgetAboveTheCapacityFailsAtTheFullStep) {
  const CacheConfig small{2, {4, 2, 16, 16}, 100, DType::kF32};
  KVCache<kvcache::H2O> cache(small, kvcache::H2O(Count::of(500), Count::of(500)));
  Rows prompt(2, 4, 16, iota_positions(99), 18);
  prompt.prefill(cache, 0);
  prompt.decode(cache, 0, 99);
  const Snapshot before = snapshot(cache);
  expect_error_mentioning([&] { prompt.decode(cache, 0, 100); }, "1 more row would exceed the capacity of 100");
  EXPECT_EQ(snapshot(cache), before);
}

// An executor of concurrency 8 that runs tasks in turn and records how many prefill was split into.
struct CountingExecutor {
  int* widest = nullptr;
  [[nodiscard]] int concurrency() const noexcept { return 8; }
  template <class F>
  void parallel_for(int n, F&& f) const noexcept {
    *widest = std::max(*widest, n);
    for (int i = 0; i < n; ++i) f(i);
  }
};

TEST(HardeningTest, TheExecutorDecidesPrefillThreads) {
  int widest = 0;
  KVCache<kvcache::Full, CountingExecutor> cache(kConfig, kvcache::Full{}, {}, CountingExecutor{&widest});
  Rows prompt(2, 4, 16, iota_positions(100), 11);
  prompt.prefill(cache, 0);
  EXPECT_GT(widest, 1) << "prefill ran as one task on an executor of concurrency 8";
  // max_threads caps it.
  int capped = 0;
  kvcache::KVCacheOptions opt;
  opt.max_threads = 1;
  KVCache<kvcache::Full, CountingExecutor> one(kConfig, kvcache::Full{}, opt, CountingExecutor{&capped});
  prompt.prefill(one, 0);
  EXPECT_EQ(capped, 1);
}

// One NaN contract on every ISA: a non-finite key, value or query is an error before anything changes.
class FiniteTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(FiniteTest, NonFiniteInputsAreErrors) {
  KVCache<kvcache::H2O> cache(kConfig, kvcache::H2O(Count::of(8), Count::of(8)));
  Rows bad_key(2, 4, 16, iota_positions(20), 15);
  bad_key.k[std::size_t(16 * 20 + 37)] = std::numeric_limits<float>::quiet_NaN();  // head 1, row 2, element 5
  expect_error_mentioning([&] { bad_key.prefill(cache, 0); },
                          "prefill: the keys hold a non-finite value (nan) at element 357");
  EXPECT_EQ(cache.length(0, 0), 0);
  Rows prompt(2, 4, 16, iota_positions(20), 16);
  prompt.prefill(cache, 0);
  const Snapshot before = snapshot(cache);
  Rows step(2, 4, 16, {20}, 17);
  step.q[3] = std::numeric_limits<float>::quiet_NaN();
  expect_error_mentioning([&] { step.decode(cache, 0, 20); }, "decode: the queries hold a non-finite value");
  step.q[3] = 0.5f;
  step.v[5] = -std::numeric_limits<float>::infinity();
  expect_error_mentioning([&] { step.decode(cache, 0, 20); }, "decode: the values hold a non-finite value (-inf)");
  EXPECT_EQ(snapshot(cache), before);
  step.v[5] = 0.5f;
  step.decode(cache, 0, 20);
  EXPECT_EQ(cache.length(0, 0), 16);
}

INSTANTIATE_TEST_SUITE_P(Isa, FiniteTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

// position -> score of layer 0, head h.
template <class Cache>
std::map<Position, float> scores_by_position(const Cache& cache, int h) {
  std::map<Position, float> m;
  auto p = cache.layer(0).positions(h);
  auto s = cache.scores(0, h);
  for (std::size_t i = 0; i < p.size(); ++i) m[p[i]] = s[i];
  return m;
}

// A second prompt (multi-turn) is compressed as a fresh cache holding the same rows would compress it: the first
// prompt's window votes do not carry over.
TEST(HardeningTest, SnapKVScoresASecondPromptAfresh) {
  const CacheConfig cfg{1, {4, 2, 16, 16}, 128, DType::kF32};
  const kvcache::SnapKV policy(Count::of(16), 4, 3);
  KVCache<kvcache::SnapKV> turns(cfg, policy);
  Rows first(2, 4, 16, iota_positions(40), 12), second(2, 4, 16, iota_positions(20, 40), 13);
  first.prefill(turns, 0);
  ASSERT_EQ(turns.length(0, 0), 16);

  // The rows the first turn kept, per head in position order, as the first (not last) chunk of a fresh cache. Heads
  // keep different positions, so each head gets a cache of its own (both of its heads hold that head's rows).
  std::vector<Rows> held;
  for (int h = 0; h < 2; ++h) {
    std::vector<std::int32_t> slots(16);
    std::iota(slots.begin(), slots.end(), 0);
    auto pos = turns.layer(0).positions(h);
    std::sort(slots.begin(), slots.end(), [&](auto a, auto b) { return pos[std::size_t(a)] < pos[std::size_t(b)]; });
    std::vector<Position> kept_pos;
    for (auto s : slots) kept_pos.push_back(pos[std::size_t(s)]);
    Rows rows(2, 4, 16, kept_pos, 14);
    const auto K = turns.layer(0).k<float>(h), V = turns.layer(0).v<float>(h);
    for (int hh = 0; hh < 2; ++hh)
      for (std::size_t i = 0; i < slots.size(); ++i)
        for (int e = 0; e < 16; ++e) {
          rows.k[std::size_t(hh * 16 * 16) + i * 16 + std::size_t(e)] = K(slots[i], e);
          rows.v[std::size_t(hh * 16 * 16) + i * 16 + std::size_t(e)] = V(slots[i], e);
        }
    held.push_back(std::move(rows));
  }
  second.prefill(turns, 0);
  for (int h = 0; h < 2; ++h) {
    KVCache<kvcache::SnapKV> fresh(cfg, policy);
    held[std::size_t(h)].prefill(fresh, 0, /*last_chunk=*/false);
    second.prefill(fresh, 0);
    EXPECT_EQ(kvtest::kept(turns, 0, h), kvtest::kept(fresh, 0, h)) << "head " << h;
    const auto a = scores_by_position(turns, h), b = scores_by_position(fresh, h);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [p, sc] : a) EXPECT_NEAR(sc, b.at(p), 1e-5f) << "head " << h << " position " << p;
  }
}

}  // namespace
