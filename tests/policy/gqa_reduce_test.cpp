// GQA reduction (docs/policies/README.md): how the scores of a group's query heads become one per slot.
//   - A hand-checkable example where the sum and the maximum over two query heads keep different tokens (H2O, VATP).
//   - H2O and SnapKV with GqaReduce::kMax against a double-precision oracle written here from the specification, on
//     random prompts and decode steps, for every ISA; the same data under kSum keeps a different set, so the test
//     tells the two apart.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "policy_test_util.hpp"

namespace {

using kvtest::expect_error_mentioning;

using kvcache::CacheConfig;
using kvcache::ConstTensorView;
using kvcache::Count;
using kvcache::DType;
using kvcache::GqaReduce;
using kvcache::KVCache;
using kvcache::Position;
using kvcache::TensorView;

// Two query heads on one KV head, five prompt tokens; key j = e_j, so query head i's attention row t is A_i[t].
// Column sums (H2O's prefill scores):
//   head 0: t0 1.8, t1 0.7,  t2 2.35, t3 0.05, t4 0.05     (head 0 relies on token 2)
//   head 1: t0 2.4, t1 2.15, t2 0.2,  t3 0.2,  t4 0.05     (head 1 spreads over tokens 0 and 1)
//   sum:    t0 4.2, t1 2.85, t2 2.55, t3 0.25;  max: t0 2.4, t1 2.15, t2 2.35, t3 0.2
// heavy 2 + recent 1 keeps token 4 and the two best of 0..3: {0, 1} by the sum, {0, 2} by the maximum.
const std::vector<std::vector<double>> kHead0 = {
    {1.0}, {0.5, 0.5}, {0.1, 0.1, 0.8}, {0.1, 0.05, 0.8, 0.05}, {0.1, 0.05, 0.75, 0.05, 0.05}};
const std::vector<std::vector<double>> kHead1 = {
    {1.0}, {0.4, 0.6}, {0.4, 0.55, 0.05}, {0.3, 0.5, 0.1, 0.1}, {0.3, 0.5, 0.05, 0.1, 0.05}};

kvtest::Prompt two_head_prompt(int d) {
  kvtest::Prompt p = kvtest::prompt_from_attention(kHead0, d);
  p.n_q = 2;
  const auto p1 = kvtest::prompt_from_attention(kHead1, d);
  std::vector<float> q(std::size_t(p.tokens * 2 * d));
  for (std::int64_t t = 0; t < p.tokens; ++t)
    for (int c = 0; c < d; ++c) {
      q[std::size_t((t * 2 + 0) * d + c)] = p.q[std::size_t(t * d + c)];
      q[std::size_t((t * 2 + 1) * d + c)] = p1.q[std::size_t(t * d + c)];
    }
  p.q = q;
  return p;
}

// Kept positions after the prompt; with head_scores, each query head's stored score by position.
template <class P>
std::set<int> kept_after_prompt(P policy, std::vector<std::map<int, float>>* head_scores = nullptr) {
  constexpr int d = 16;
  KVCache<P> cache(CacheConfig{1, {2, 1, d, d}, 16, DType::kF32}, policy);
  kvtest::prefill(cache, 0, two_head_prompt(d));
  if (head_scores != nullptr)
    for (int i = 0; i < 2; ++i) {
      auto s = cache.query_head_scores(0, i);
      auto pos = cache.layer(0).positions(0);
      auto& m = head_scores->emplace_back();
      for (std::size_t j = 0; j < s.size(); ++j) m[pos[j]] = s[j];
    }
  return kvtest::kept(cache, 0);
}

TEST(GqaReduceTest, MaxKeepsWhatOneQueryHeadReliesOn) {
  EXPECT_EQ(kept_after_prompt(kvcache::H2O(Count::of(2), Count::of(1))), (std::set<int>{0, 1, 4}));
  EXPECT_EQ(kept_after_prompt(kvcache::H2O(Count::of(2), Count::of(1), GqaReduce::kMean)), (std::set<int>{0, 1, 4}));
  std::vector<std::map<int, float>> s;
  EXPECT_EQ(kept_after_prompt(kvcache::H2O(Count::of(2), Count::of(1), GqaReduce::kMax), &s), (std::set<int>{0, 2, 4}));
  // Each query head's row holds its own column sums of the kept tokens (rows move with their slots).
  const std::vector<std::map<int, float>> expect = {{{0, 1.8f}, {2, 2.35f}, {4, 0.05f}},
                                                    {{0, 2.4f}, {2, 0.2f}, {4, 0.05f}}};
  ASSERT_EQ(s.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(s[i].size(), 3u);
    for (auto [p, v] : expect[i]) EXPECT_NEAR(s[i][p], v, 1e-5) << "query head " << i << " position " << p;
  }
  // VATP with equal value norms and no sinks ranks as H2O.
  EXPECT_EQ(kept_after_prompt(kvcache::VATP(Count::of(2), Count::of(1), 0)), (std::set<int>{0, 1, 4}));
  EXPECT_EQ(kept_after_prompt(kvcache::VATP(Count::of(2), Count::of(1), 0, GqaReduce::kMax)), (std::set<int>{0, 2, 4}));
}

TEST(GqaReduceTest, ScoreAccessorsSayWhichToRead) {
  constexpr int d = 16;
  KVCache<kvcache::H2O> max_cache(CacheConfig{1, {2, 1, d, d}, 16, DType::kF32},
                                  kvcache::H2O(Count::of(8), Count::of(1), GqaReduce::kMax));
  kvtest::prefill(max_cache, 0, two_head_prompt(d));
  expect_error_mentioning([&] { (void)max_cache.scores(0, 0); }, "query_head_scores");
  expect_error_mentioning([&] { (void)max_cache.query_head_scores(0, 2); }, "query head 2");
  EXPECT_EQ(max_cache.query_head_scores(0, 1).size(), 5u);
  KVCache<kvcache::H2O> sum_cache(CacheConfig{1, {2, 1, d, d}, 16, DType::kF32},
                                  kvcache::H2O(Count::of(8), Count::of(1)));
  kvtest::prefill(sum_cache, 0, two_head_prompt(d));
  EXPECT_TRUE(sum_cache.query_head_scores(0, 0).empty());
  EXPECT_NEAR(sum_cache.scores(0, 0)[2], 2.55, 1e-5);
}

// state_bytes() counts what the policy keeps per slot: one score row per KV head under kSum, g rows plus their maximum
// under kMax, none for Full; all of it fixed at construction.
// SnapKV's pool_each_query_head (kvpress's order): each query head's window scores pooled, then their mean. With
// avg-pooling that ranks as pooling the group's sum (pooling is linear); with max-pooling it can differ.
TEST(GqaReduceTest, SnapKVPoolEachQueryHeadTakesTheMeanOfPooledRows) {
  // Two query heads, 6 slots in position order, window 1 (the last slot), kernel 3.
  const std::vector<Position> pos = {0, 1, 2, 3, 4, 5};
  const std::int64_t stride = 8;
  std::vector<float> rows(2 * stride, 0.0f);
  const float a[] = {4, 0, 0, 0, 1, 0}, b[] = {0, 0, 3, 0, 0, 0};
  for (int j = 0; j < 6; ++j) rows[std::size_t(j)] = a[j], rows[std::size_t(stride + j)] = b[j];
  std::vector<float> sum(6);
  for (int j = 0; j < 6; ++j) sum[std::size_t(j)] = a[j] + b[j];
  kvcache::RankInput per_head;
  per_head.positions = pos;
  per_head.group_size = 2;
  per_head.query_head_scores = {rows.data(), std::size_t(stride + 6)};
  per_head.query_head_stride = stride;
  kvcache::RankInput summed;
  summed.positions = pos;
  summed.scores = sum;
  for (auto pooling : {kvcache::SnapKV::Pooling::kAvg, kvcache::SnapKV::Pooling::kMax}) {
    kvcache::SnapKV each(Count::of(4), 1, 3, pooling);
    each.pool_each_query_head = true;
    EXPECT_EQ(each.needs().gqa_reduce, GqaReduce::kMax);  // the scores are kept per query head
    const kvcache::SnapKV plain(Count::of(4), 1, 3, pooling);
    std::vector<float> got(6), base(6);
    each.rank(per_head, got);
    plain.rank(summed, base);
    // Prefix slots 0 - 4 (slot 5 is the window). Max-pool, head a: 4 4 0 1 1; head b: 0 3 3 3 0.
    const float want_max[] = {2.0f, 3.5f, 1.5f, 2.0f, 0.5f};
    for (int j = 0; j < 5; ++j) {
      if (pooling == kvcache::SnapKV::Pooling::kAvg)
        EXPECT_FLOAT_EQ(got[std::size_t(j)], base[std::size_t(j)] / 2.0f) << j;  // the mean of pooled = pooled mean
      else
        EXPECT_FLOAT_EQ(got[std::size_t(j)], want_max[j]) << j;
    }
  }
  // Max-pooling the sum ranks slot 0 (4) above slot 2 (3); the mean of the pooled heads puts slot 1 first.
  kvcache::SnapKV plain_max(Count::of(4), 1, 3, kvcache::SnapKV::Pooling::kMax);
  std::vector<float> base(6);
  plain_max.rank(summed, base);
  EXPECT_GT(base[0], base[2]);
}

TEST(GqaReduceTest, StateBytesShowThePerQueryHeadRows) {
  constexpr int d = 16, layers = 2, n_kv = 1, g = 2;  // the shape two_head_prompt() fits
  constexpr std::int64_t cap = 64;
  const CacheConfig config{layers, {n_kv * g, n_kv, d, d}, cap, DType::kF32};
  KVCache<kvcache::Full> full(config, kvcache::Full{});
  KVCache<kvcache::H2O> sum(config, kvcache::H2O(Count::of(8), Count::of(1)));
  KVCache<kvcache::H2O> max(config, kvcache::H2O(Count::of(8), Count::of(1), GqaReduce::kMax));
  const std::size_t row = sizeof(float) * std::size_t(cap) * n_kv * layers;  // one score row per KV head and layer
  // H2O also keeps the decode export ([g, capacity] per KV head in the decode workspace) that Full does not.
  const std::size_t exported = sizeof(float) * std::size_t(cap) * n_kv * g;
  EXPECT_GE(sum.state_bytes(), full.state_bytes() + row + exported);
  EXPECT_EQ(max.state_bytes() - sum.state_bytes(), row * g);  // g rows and the maximum instead of one row
  const std::size_t before = max.state_bytes();
  kvtest::prefill(max, 0, two_head_prompt(d));
  EXPECT_EQ(max.state_bytes(), before);
  EXPECT_GT(max.kv_bytes(), 0u);
}

// ---- Random sequences against an oracle -------------------------------------------------------------------------

constexpr int kD = 16;

struct Rows {
  int n_kv, n_q;
  std::int64_t tokens;
  std::vector<float> k, v, q;  // k, v: [tokens][n_kv][kD]; q: [tokens][n_q][kD]
  Rows(int n_kv_, int n_q_, std::int64_t tokens_, std::uint32_t seed) : n_kv(n_kv_), n_q(n_q_), tokens(tokens_) {
    k = kvtest::random_vector(std::size_t(tokens * n_kv * kD), seed);
    v = kvtest::random_vector(std::size_t(tokens * n_kv * kD), seed + 1);
    q = kvtest::random_vector(std::size_t(tokens * n_q * kD), seed + 2, 2.0f);
  }
  const float* key(std::int64_t t, int h) const { return k.data() + (t * n_kv + h) * kD; }
  const float* query(std::int64_t t, int i) const { return q.data() + (t * n_q + i) * kD; }
};

// Softmax over `keys` of query (t, i), in double, with the cache's scale 1 / sqrt(d).
std::vector<double> attention(const Rows& r, std::int64_t t, int i, int h, const std::vector<Position>& keys) {
  std::vector<double> s(keys.size());
  double mx = -1e300, sum = 0;
  for (std::size_t j = 0; j < keys.size(); ++j) {
    double dot = 0;
    for (int c = 0; c < kD; ++c) dot += double(r.query(t, i)[c]) * double(r.key(keys[j], h)[c]);
    s[j] = dot / std::sqrt(double(kD));
    mx = std::max(mx, s[j]);
  }
  for (auto& x : s) sum += (x = std::exp(x - mx));
  for (auto& x : s) x /= sum;
  return s;
}

// Keeps `keep` of `pos` (ascending): the `recent` newest always, then the highest priority (ties: the newer).
std::vector<Position> select(const std::vector<Position>& pos, const std::vector<double>& priority, std::size_t keep,
                             std::size_t recent) {
  if (pos.size() <= keep) return pos;
  std::vector<std::size_t> order;
  for (std::size_t j = 0; j + recent < pos.size(); ++j) order.push_back(j);
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return priority[a] != priority[b] ? priority[a] > priority[b] : pos[a] > pos[b];
  });
  std::set<Position> out(pos.end() - std::ptrdiff_t(recent), pos.end());
  for (std::size_t j = 0; j < keep - recent; ++j) out.insert(pos[order[j]]);
  return {out.begin(), out.end()};
}

double reduce(const std::vector<double>& per_head, GqaReduce how) {
  double r = how == GqaReduce::kMax ? -1e300 : 0.0;
  for (double x : per_head) r = how == GqaReduce::kMax ? std::max(r, x) : r + x;
  return r;
}

template <class P>
void feed_prompt(KVCache<P>& cache, const Rows& r, std::int64_t prompt) {
  std::vector<float> k(std::size_t(r.n_kv * prompt * kD)), v(k.size()), out(std::size_t(prompt * r.n_q * kD));
  for (int h = 0; h < r.n_kv; ++h)
    for (std::int64_t t = 0; t < prompt; ++t)
      for (int c = 0; c < kD; ++c) {
        k[std::size_t((h * prompt + t) * kD + c)] = r.k[std::size_t((t * r.n_kv + h) * kD + c)];
        v[std::size_t((h * prompt + t) * kD + c)] = r.v[std::size_t((t * r.n_kv + h) * kD + c)];
      }
  std::vector<Position> pos(static_cast<std::size_t>(prompt));
  for (std::int64_t t = 0; t < prompt; ++t) pos[std::size_t(t)] = Position(t);
  cache.prefill(0, ConstTensorView<float, 3>(k.data(), r.n_kv, prompt, kD),
                ConstTensorView<float, 3>(v.data(), r.n_kv, prompt, kD), pos,
                ConstTensorView<float, 3>(r.q.data(), prompt, r.n_q, kD),
                TensorView<float, 3>(out.data(), prompt, r.n_q, kD));
}

// H2O real-drop (docs/policies/h2o.md) with the given reduction: kept positions of every KV head after the prompt and
// after each decode step.
std::vector<std::vector<std::vector<Position>>> h2o_oracle(const Rows& r, std::int64_t prompt, std::size_t heavy,
                                                           std::size_t recent, GqaReduce how) {
  const int g = r.n_q / r.n_kv;
  std::vector<std::vector<std::vector<Position>>> trace;
  std::vector<std::vector<Position>> kept(std::size_t(r.n_kv));
  std::vector<std::map<Position, std::vector<double>>> score(std::size_t(r.n_kv));  // position -> per query head
  auto cut = [&](int h) {
    auto& pos = kept[std::size_t(h)];
    std::vector<double> pr;
    for (Position p : pos) pr.push_back(reduce(score[std::size_t(h)][p], how));
    pos = select(pos, pr, heavy + recent, recent);
  };
  for (int h = 0; h < r.n_kv; ++h) {
    for (std::int64_t t = 0; t < prompt; ++t) {
      kept[std::size_t(h)].push_back(Position(t));
      score[std::size_t(h)][Position(t)].assign(std::size_t(g), 0.0);
      for (int i = 0; i < g; ++i) {
        const auto a = attention(r, t, h * g + i, h, kept[std::size_t(h)]);
        for (std::size_t j = 0; j < a.size(); ++j) score[std::size_t(h)][Position(j)][std::size_t(i)] += a[j];
      }
    }
    cut(h);
  }
  trace.push_back(kept);
  for (std::int64_t t = prompt; t < r.tokens; ++t) {
    for (int h = 0; h < r.n_kv; ++h) {
      kept[std::size_t(h)].push_back(Position(t));
      score[std::size_t(h)][Position(t)].assign(std::size_t(g), 0.0);
      for (int i = 0; i < g; ++i) {
        const auto a = attention(r, t, h * g + i, h, kept[std::size_t(h)]);
        for (std::size_t j = 0; j < a.size(); ++j)
          score[std::size_t(h)][kept[std::size_t(h)][j]][std::size_t(i)] += a[j];
      }
      cut(h);
    }
    trace.push_back(kept);
  }
  return trace;
}

// Compaction moves survivors into holes, so slots are not in position order.
template <class Cache>
std::vector<Position> sorted_positions(const Cache& cache, int h) {
  auto pos = cache.layer(0).positions(h);
  std::vector<Position> v(pos.begin(), pos.end());
  std::sort(v.begin(), v.end());
  return v;
}

class GqaReduceIsaTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(GqaReduceIsaTest, H2OMaxFollowsTheOracleStepByStep) {
  for (int g : {2, 3, 8}) {
    const int n_kv = 2, n_q = n_kv * g;
    const std::int64_t prompt = 24, steps = 16;
    const std::size_t heavy = 5, recent = 4;
    const Rows r(n_kv, n_q, prompt + steps, 31u + std::uint32_t(g));
    const auto want = h2o_oracle(r, prompt, heavy, recent, GqaReduce::kMax);
    // The data tells the reductions apart: the sum keeps a different set at some point.
    EXPECT_NE(want, h2o_oracle(r, prompt, heavy, recent, GqaReduce::kSum)) << "g " << g;
    // f32 storage: the oracle reads the keys as given (f16 storage is the kernel tests' business).
    KVCache<kvcache::H2O> cache(
        CacheConfig{1, {n_q, n_kv, kD, kD}, 64, DType::kF32},
        kvcache::H2O(Count::of(std::int64_t(heavy)), Count::of(std::int64_t(recent)), GqaReduce::kMax));
    feed_prompt(cache, r, prompt);
    std::vector<float> out(std::size_t(n_q * kD));
    for (std::int64_t step = 0;; ++step) {
      for (int h = 0; h < n_kv; ++h) {
        ASSERT_EQ(sorted_positions(cache, h), want[std::size_t(step)][std::size_t(h)])
            << "g " << g << " step " << step << " head " << h;
      }
      const std::int64_t t = prompt + step;
      if (t >= r.tokens) break;
      cache.decode(0, ConstTensorView<float, 2>(r.key(t, 0), n_kv, kD),
                   ConstTensorView<float, 2>(r.v.data() + t * n_kv * kD, n_kv, kD), Position(t),
                   ConstTensorView<float, 2>(r.query(t, 0), n_q, kD), TensorView<float, 2>(out.data(), n_q, kD));
    }
  }
}

// SnapKV (docs/policies/snapkv.md) with kMax: each query head's window votes pooled on their own, then the maximum.
std::vector<std::vector<Position>> snapkv_oracle(const Rows& r, std::int64_t window, int kernel, bool avg,
                                                 std::size_t capacity, GqaReduce how) {
  const int g = r.n_q / r.n_kv, half = kernel / 2;
  const std::int64_t n = r.tokens, prefix = n - window;
  std::vector<std::vector<Position>> kept;
  for (int h = 0; h < r.n_kv; ++h) {
    std::vector<std::vector<double>> votes(std::size_t(g), std::vector<double>(std::size_t(n), 0.0));
    for (std::int64_t t = n - window; t < n; ++t)
      for (int i = 0; i < g; ++i) {
        std::vector<Position> keys;
        for (Position p = 0; p <= t; ++p) keys.push_back(p);
        const auto a = attention(r, t, h * g + i, h, keys);
        for (std::size_t j = 0; j < a.size(); ++j) votes[std::size_t(i)][j] += a[j];
      }
    if (how != GqaReduce::kMax) {  // the group's sum, then pooled
      for (int i = 1; i < g; ++i)
        for (std::int64_t j = 0; j < n; ++j) votes[0][std::size_t(j)] += votes[std::size_t(i)][std::size_t(j)];
      votes.resize(1);
    }
    std::vector<Position> pos;
    std::vector<double> pr;
    for (std::int64_t j = 0; j < n; ++j) {
      double best = -1e300;
      for (const auto& row : votes) {
        double pooled = avg ? 0.0 : -1e300;
        for (std::int64_t o = j - half; o <= j + half; ++o) {
          if (o < 0 || o >= prefix) continue;
          pooled = avg ? pooled + row[std::size_t(o)] : std::max(pooled, row[std::size_t(o)]);
        }
        best = std::max(best, avg ? pooled / kernel : pooled);
      }
      pos.push_back(Position(j));
      pr.push_back(best);
    }
    kept.push_back(select(pos, pr, capacity, std::size_t(window)));
  }
  return kept;
}

TEST_P(GqaReduceIsaTest, SnapKVMaxPoolsEachQueryHeadThenTakesTheMaximum) {
  for (bool avg : {true, false}) {
    const int n_kv = 2, g = 3, n_q = n_kv * g;
    const std::int64_t n = 48, window = 6;
    const int kernel = 5;
    const std::size_t capacity = 14;
    const Rows r(n_kv, n_q, n, avg ? 71u : 73u);
    const auto want = snapkv_oracle(r, window, kernel, avg, capacity, GqaReduce::kMax);
    EXPECT_NE(want, snapkv_oracle(r, window, kernel, avg, capacity, GqaReduce::kSum)) << (avg ? "avg" : "max");
    KVCache<kvcache::SnapKV> cache(
        CacheConfig{1, {n_q, n_kv, kD, kD}, 64, DType::kF32},
        kvcache::SnapKV(Count::of(std::int64_t(capacity)), window, kernel,
                        avg ? kvcache::SnapKV::Pooling::kAvg : kvcache::SnapKV::Pooling::kMax, GqaReduce::kMax));
    feed_prompt(cache, r, n);
    for (int h = 0; h < n_kv; ++h) {
      EXPECT_EQ(sorted_positions(cache, h), want[std::size_t(h)]) << (avg ? "avg" : "max") << " head " << h;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, GqaReduceIsaTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

}  // namespace
