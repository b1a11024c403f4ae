// DMC (docs/policies/dmc.md): the worked example of docs/policies/dmc.md and its neuron mapping through the real
// KVCache path, and the properties: no merges is Full; a merged slot holds the weighted mean of its group's newest
// `window` pre-RoPE keys, rotated at the newest position, with the neuron zeroed; prefill equals the same tokens
// decoded one by one; the policy sees pre-RoPE keys and queries for both RoPE layouts, and every ISA stores the same
// bits; the query's neuron never reaches a score.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kvcache/kvcache.hpp"
#include "test_util.hpp"

namespace {

using kvcache::DMC;
using kvcache::KVCache;
using kvcache::Position;

std::vector<float> stored_keys(const kvcache::LayerSlots& kv, int h) {
  auto k = kv.k<float>(h);
  return std::vector<float>(k.data(), k.data() + k.size());
}
std::vector<float> stored_values(const kvcache::LayerSlots& kv, int h) {
  auto v = kv.v<float>(h);
  return std::vector<float>(v.data(), v.data() + v.size());
}

template <class Cache>
void step(Cache& cache, int layer, int n_kv, int nq, int d, const std::vector<float>& k, const std::vector<float>& v,
          Position pos, const std::vector<float>& q, std::vector<float>& out) {
  out.assign(std::size_t(nq * d), 0.0f);
  cache.decode(layer, kvcache::ConstTensorView<float, 2>(k.data(), n_kv, d),
               kvcache::ConstTensorView<float, 2>(v.data(), n_kv, d), pos,
               kvcache::ConstTensorView<float, 2>(q.data(), nq, d), kvcache::TensorView<float, 2>(out.data(), nq, d));
}

class DmcTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

// docs/policies/dmc.md's worked example: one KV head, scalar k and v (d = 1 plus the decision neuron, the last).
// Decisions come from the neuron (7 -> merge, 4.9 -> append: the official offset of 5); the table's weights are given
// directly.
TEST_P(DmcTest, WorkedExample) {
  struct Row {
    float k, v, neuron, w;
    std::vector<std::pair<float, float>> cache;  // (K, V) of each slot after the step
  };
  const Row rows[] = {{1, 2, 7.0f, 1.0f, {{1, 2}}},  // t = 0: neuron says merge, but the first token is appended
                      {3, 4, 7.0f, 1.0f, {{2, 3}}},
                      {5, 1, 4.9f, 0.5f, {{2, 3}, {5, 1}}},
                      {8, 4, 7.0f, 1.5f, {{2, 3}, {7.25f, 3.25f}}},
                      {1, 1, 7.0f, 2.0f, {{2, 3}, {4.125f, 2.125f}}}};
  DMC dmc;
  dmc.weigh = [&](const DMC::Step& s) { return rows[s.position].w; };
  KVCache<DMC> cache({1, {1, 1, 2, 2}, 8, kvcache::DType::kF32}, dmc);
  std::vector<float> out;
  for (int t = 0; t < 5; ++t) {
    const Row& r = rows[t];
    step(cache, 0, 1, 1, 2, {r.k, r.neuron}, {r.v, 0.0f}, Position(t), {0.5f, 3.0f}, out);
    const auto K = stored_keys(cache.layer(0), 0), V = stored_values(cache.layer(0), 0);
    ASSERT_EQ(cache.length(0, 0), std::int64_t(r.cache.size())) << "t = " << t;
    for (std::size_t s = 0; s < r.cache.size(); ++s) {
      EXPECT_NEAR(K[2 * s], r.cache[s].first, 1e-6) << "t = " << t << " slot " << s;
      EXPECT_EQ(K[2 * s + 1], 0.0f) << "the neuron is zeroed in stored keys";
      EXPECT_NEAR(V[2 * s], r.cache[s].second, 1e-6) << "t = " << t << " slot " << s;
    }
    // A merged slot takes the newest member's position.
    EXPECT_EQ(cache.layer(0).positions(0).back(), Position(t));
  }
  // After 5 tokens there are 2 slots: a compression of 2.5.
  EXPECT_EQ(cache.length(0, 0), 2);
}

TEST_P(DmcTest, NeuronMapping) {
  const DMC dmc = DMC::official();
  std::vector<float> key = {0.3f, 7.0f}, queries = {0.1f, -5.0f};
  DMC::Step s;
  s.key = key;
  s.queries = queries;
  s.head_dim = 2;
  EXPECT_TRUE(dmc.merges(s));
  key[1] = 4.9f;
  EXPECT_FALSE(dmc.merges(s));
  EXPECT_NEAR(dmc.importance(s), 0.5 + 0.0078125, 1e-6);  // q = -5 -> sigmoid(0) + eps
  queries[1] = 0.0f;
  EXPECT_NEAR(dmc.importance(s), 0.9933071 + 0.0078125, 1e-6);  // q = 0 -> sigmoid(5) + eps
  // GQA: the mean over the group's query neurons.
  std::vector<float> group = {0, -6.0f, 0, -4.0f};
  s.queries = group;
  EXPECT_NEAR(dmc.importance(s), 0.5 + 0.0078125, 1e-6);
  // The paper's convention: the first neuron, no offsets.
  const DMC paper = DMC::paper();
  std::vector<float> k2 = {0.2f, -9.0f};
  s.key = k2;
  s.queries = queries;
  EXPECT_TRUE(paper.merges(s));
  k2[0] = -0.2f;
  EXPECT_FALSE(paper.merges(s));
  EXPECT_NEAR(paper.importance(s), 1.0 / (1.0 + std::exp(-0.1)), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Isa, DmcTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

// RoPE at a position, written independently of kvcache::Rope: the first `rotary` dims, in pairs (i, i + rotary / 2)
// (rotate-half) or (2i, 2i + 1) (interleaved).
void rotate_layout(float* x, int rotary, bool interleaved, Position p) {
  for (int i = 0; i < rotary / 2; ++i) {
    const double a = p * std::pow(10000.0, -2.0 * i / rotary);
    const int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + rotary / 2;
    const double x0 = x[i0], x1 = x[i1];
    x[i0] = float(x0 * std::cos(a) - x1 * std::sin(a));
    x[i1] = float(x0 * std::sin(a) + x1 * std::cos(a));
  }
}
// Rotate-half over the whole head (the cache's default RopeConfig).
void rotate(float* x, int d, Position p) { rotate_layout(x, d, false, p); }

struct Inputs {
  std::vector<std::vector<float>> kpre, v, qpre;  // per step: [n_kv * d], [n_kv * d], [nq * d] (pre-RoPE)
};

Inputs random_inputs(int steps, int n_kv, int nq, int d, std::uint32_t seed) {
  Inputs in;
  for (int t = 0; t < steps; ++t) {
    in.kpre.push_back(kvtest::random_vector(std::size_t(n_kv * d), seed + 3 * t));
    in.v.push_back(kvtest::random_vector(std::size_t(n_kv * d), seed + 3 * t + 1));
    in.qpre.push_back(kvtest::random_vector(std::size_t(nq * d), seed + 3 * t + 2));
  }
  return in;
}

std::vector<float> rotated(std::vector<float> x, int rows, int d, Position p) {
  for (int r = 0; r < rows; ++r) rotate(x.data() + r * d, d, p);
  return x;
}

TEST(DmcPropertyTest, NoMergesIsFull) {
  const int n_kv = 2, g = 2, nq = n_kv * g, d = 16, steps = 40;
  const auto in = random_inputs(steps, n_kv, nq, d, 11);
  DMC never;
  never.decide = [](const DMC::Step&) { return false; };
  never.zero_neurons = false;
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{};
  const kvcache::CacheConfig cfg{1, {nq, n_kv, d, d}, 64, kvcache::DType::kF32};
  KVCache<DMC> dmc(cfg, never, opt);
  KVCache<kvcache::Full> full(cfg);
  std::vector<float> a, b;
  for (int t = 0; t < steps; ++t) {
    const auto k = rotated(in.kpre[std::size_t(t)], n_kv, d, t), q = rotated(in.qpre[std::size_t(t)], nq, d, t);
    step(dmc, 0, n_kv, nq, d, k, in.v[std::size_t(t)], t, q, a);
    step(full, 0, n_kv, nq, d, k, in.v[std::size_t(t)], t, q, b);
    EXPECT_LE(kvtest::max_abs_diff(a, b), 2e-6) << "step " << t;
  }
  for (int h = 0; h < n_kv; ++h) EXPECT_EQ(dmc.length(0, h), steps);
}

TEST(DmcPropertyTest, MergedSlotsHoldTheWeightedMeanOfTheirNewestWindow) {
  const int n_kv = 3, g = 2, nq = n_kv * g, d = 16, steps = 80;
  for (int window : {12, 3, 0}) {
    const auto in = random_inputs(steps, n_kv, nq, d, 21);
    DMC dmc = DMC::official();
    dmc.window = window;
    // Long runs of merges, different per head: merge unless (position + head) % 17 == 0 ... or the engine's rule.
    dmc.decide = [](const DMC::Step& s) { return (s.position * 7 + s.kv_head * 5) % 17 != 0; };
    dmc.weigh = [](const DMC::Step& s) { return 0.25f + float((s.position * 13 + s.kv_head) % 7) / 4.0f; };
    kvcache::KVCacheOptions opt;
    opt.rope = kvcache::RopeConfig{};
    KVCache<DMC> cache({1, {nq, n_kv, d, d}, 128, kvcache::DType::kF32}, dmc, opt);
    std::vector<float> out;
    // The test's own bookkeeping: per head, groups of (position, weight) members.
    std::vector<std::vector<std::vector<int>>> groups(n_kv);
    for (int t = 0; t < steps; ++t) {
      step(cache, 0, n_kv, nq, d, rotated(in.kpre[std::size_t(t)], n_kv, d, t), in.v[std::size_t(t)], t,
           rotated(in.qpre[std::size_t(t)], nq, d, t), out);
      for (int h = 0; h < n_kv; ++h) {
        DMC::Step s;
        s.position = t;
        s.kv_head = h;
        if (t == 0 || !dmc.decide(s))
          groups[std::size_t(h)].push_back({t});
        else
          groups[std::size_t(h)].back().push_back(t);
      }
    }
    for (int h = 0; h < n_kv; ++h) {
      const auto& gs = groups[std::size_t(h)];
      ASSERT_EQ(cache.length(0, h), std::int64_t(gs.size())) << "window " << window << " head " << h;
      const auto K = stored_keys(cache.layer(0), h), V = stored_values(cache.layer(0), h);
      for (std::size_t s = 0; s < gs.size(); ++s) {
        const auto& members = gs[s];
        const std::size_t from = window > 0 && members.size() > std::size_t(window) ? members.size() - window : 0;
        std::vector<double> kk(std::size_t(d), 0.0), vv(std::size_t(d), 0.0);
        double wsum = 0;
        for (std::size_t i = from; i < members.size(); ++i) {
          DMC::Step st;
          st.position = members[i];
          st.kv_head = h;
          const double w = dmc.weigh(st);
          wsum += w;
          for (int c = 0; c < d; ++c) {
            kk[std::size_t(c)] += w * in.kpre[std::size_t(members[i])][std::size_t(h * d + c)];
            vv[std::size_t(c)] += w * in.v[std::size_t(members[i])][std::size_t(h * d + c)];
          }
        }
        std::vector<float> expect_k(static_cast<std::size_t>(d));
        for (int c = 0; c < d; ++c) expect_k[std::size_t(c)] = float(kk[std::size_t(c)] / wsum);
        expect_k[std::size_t(d - 1)] = 0.0f;  // the neuron, zeroed before RoPE ...
        rotate(expect_k.data(), d, members.back());
        expect_k[std::size_t(d - 1)] = 0.0f;  // ... and after
        EXPECT_EQ(cache.layer(0).positions(h)[s], members.back());
        for (int c = 0; c < d; ++c) {
          ASSERT_NEAR(K[s * d + std::size_t(c)], expect_k[std::size_t(c)], 2e-5)
              << "window " << window << " head " << h << " slot " << s << " dim " << c;
          ASSERT_NEAR(V[s * d + std::size_t(c)], vv[std::size_t(c)] / wsum, 2e-5);
        }
      }
    }
  }
}

// The keys and queries a merging policy sees are the pre-RoPE ones, for both RoPE layouts and partial rotary widths
// (rotary halves of 7 and 11: not multiples of any vector width), on every ISA; and every ISA stores the same bits.
TEST(DmcPropertyTest, PreRopeStepsAndStoredRowsOnEveryIsa) {
  const int n_kv = 2, g = 3, nq = n_kv * g, d = 22, steps = 30;
  const auto in = random_inputs(steps, n_kv, nq, d, 41);
  for (const bool interleaved : {false, true})
    for (const int rotary : {22, 14}) {
      kvcache::KVCacheOptions opt;
      opt.rope = kvcache::RopeConfig{rotary, 10000.0, interleaved};
      std::vector<float> keys_first, out_first;
      for (const kvcache::Isa isa : kvcache::available_isas()) {
        kvtest::ScopedIsa scoped(isa);
        const std::string where = std::string(kvcache::isa_name(isa)) + (interleaved ? " interleaved" : " half") +
                                  " rotary " + std::to_string(rotary);
        double worst_key = 0, worst_query = 0;
        DMC dmc = DMC::official();
        dmc.window = 4;
        dmc.decide = [&](const DMC::Step& s) {
          const auto& kpre = in.kpre[std::size_t(s.position)];
          const auto& qpre = in.qpre[std::size_t(s.position)];
          for (int c = 0; c < d; ++c)
            worst_key =
                std::max(worst_key, double(std::abs(s.key[std::size_t(c)] - kpre[std::size_t(s.kv_head * d + c)])));
          for (int c = 0; c < g * d; ++c)
            worst_query = std::max(
                worst_query, double(std::abs(s.queries[std::size_t(c)] - qpre[std::size_t(s.kv_head * g * d + c)])));
          return s.position % 5 != 0;
        };
        KVCache<DMC> cache({1, {nq, n_kv, d, d}, 64, kvcache::DType::kF32}, dmc, opt);
        std::vector<float> out, outs;
        for (int t = 0; t < steps; ++t) {
          auto k = in.kpre[std::size_t(t)], q = in.qpre[std::size_t(t)];
          for (int r = 0; r < n_kv; ++r) rotate_layout(k.data() + r * d, rotary, interleaved, t);
          for (int r = 0; r < nq; ++r) rotate_layout(q.data() + r * d, rotary, interleaved, t);
          step(cache, 0, n_kv, nq, d, k, in.v[std::size_t(t)], t, q, out);
          outs.insert(outs.end(), out.begin(), out.end());
        }
        EXPECT_LE(worst_key, 1e-5) << where;
        EXPECT_LE(worst_query, 1e-5) << where;
        std::vector<float> keys;
        for (int h = 0; h < n_kv; ++h) {
          const auto kh = stored_keys(cache.layer(0), h), vh = stored_values(cache.layer(0), h);
          keys.insert(keys.end(), kh.begin(), kh.end());
          keys.insert(keys.end(), vh.begin(), vh.end());
          EXPECT_EQ(cache.length(0, h), 6) << where;  // a new slot every fifth token
        }
        if (keys_first.empty()) {
          keys_first = keys;
          out_first = outs;
        } else {
          EXPECT_EQ(keys, keys_first) << where << ": stored rows differ from the first ISA's";
          EXPECT_LE(kvtest::max_abs_diff(outs, out_first), 1e-5) << where;
        }
      }
    }
}

// Stored keys hold 0 at the neuron, so the query's neuron never reaches a score: finite or not, any value there gives
// the output of a zeroed query, bit for bit.
TEST(DmcPropertyTest, QueryNeuronNeverReachesTheScores) {
  const int n_kv = 2, g = 2, nq = n_kv * g, d = 16, steps = 12;
  const auto in = random_inputs(steps, n_kv, nq, d, 51);
  DMC dmc = DMC::official();
  dmc.decide = [](const DMC::Step& s) { return s.position % 3 != 0; };
  dmc.weigh = [](const DMC::Step&) { return 1.0f; };
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{};
  opt.check_finite = false;  // the neuron is zeroed before attention, whatever it holds
  const kvcache::CacheConfig cfg{1, {nq, n_kv, d, d}, 32, kvcache::DType::kF16};
  const float inf = std::numeric_limits<float>::infinity();
  for (const float neuron : {0.0f, 3.5f, -1e30f, inf, -inf, std::numeric_limits<float>::quiet_NaN()}) {
    KVCache<DMC> zeroed(cfg, dmc, opt), other(cfg, dmc, opt);
    std::vector<float> a, b;
    for (int t = 0; t < steps; ++t) {
      const auto k = rotated(in.kpre[std::size_t(t)], n_kv, d, t);
      auto q = rotated(in.qpre[std::size_t(t)], nq, d, t), qz = q;
      for (int r = 0; r < nq; ++r) {
        qz[std::size_t(r * d + d - 1)] = 0.0f;
        q[std::size_t(r * d + d - 1)] = neuron;
      }
      step(zeroed, 0, n_kv, nq, d, k, in.v[std::size_t(t)], t, qz, a);
      step(other, 0, n_kv, nq, d, k, in.v[std::size_t(t)], t, q, b);
      ASSERT_EQ(a, b) << "query neuron " << neuron << ", step " << t;
    }
  }
}

TEST(DmcPropertyTest, PrefillIsTheSameTokensDecodedOneByOne) {
  const int n_kv = 2, g = 3, nq = n_kv * g, d = 8, m = 30;
  const auto in = random_inputs(m, n_kv, nq, d, 31);
  DMC dmc = DMC::official();
  dmc.decide = [](const DMC::Step& s) { return s.position % 3 != 0; };
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{};
  const kvcache::CacheConfig cfg{1, {nq, n_kv, d, d}, 64, kvcache::DType::kF16};
  KVCache<DMC> a(cfg, dmc, opt), b(cfg, dmc, opt);
  std::vector<float> k(std::size_t(n_kv * m * d)), v(k.size()), q(std::size_t(m * nq * d)), out(q.size()), o1;
  std::vector<Position> pos;
  for (int t = 0; t < m; ++t) {
    const auto kt = rotated(in.kpre[std::size_t(t)], n_kv, d, t), qt = rotated(in.qpre[std::size_t(t)], nq, d, t);
    for (int h = 0; h < n_kv; ++h)
      for (int c = 0; c < d; ++c) {
        k[std::size_t((h * m + t) * d + c)] = kt[std::size_t(h * d + c)];
        v[std::size_t((h * m + t) * d + c)] = in.v[std::size_t(t)][std::size_t(h * d + c)];
      }
    std::copy(qt.begin(), qt.end(), q.begin() + std::ptrdiff_t(t * nq * d));
    pos.push_back(t);
  }
  a.prefill(0, kvcache::ConstTensorView<float, 3>(k.data(), n_kv, m, d),
            kvcache::ConstTensorView<float, 3>(v.data(), n_kv, m, d), pos,
            kvcache::ConstTensorView<float, 3>(q.data(), m, nq, d),
            kvcache::TensorView<float, 3>(out.data(), m, nq, d));
  for (int t = 0; t < m; ++t) {
    step(b, 0, n_kv, nq, d, rotated(in.kpre[std::size_t(t)], n_kv, d, t), in.v[std::size_t(t)], t,
         rotated(in.qpre[std::size_t(t)], nq, d, t), o1);
    for (int c = 0; c < nq * d; ++c) ASSERT_EQ(out[std::size_t(t * nq * d + c)], o1[std::size_t(c)]) << "token " << t;
  }
  for (int h = 0; h < n_kv; ++h) EXPECT_EQ(a.length(0, h), 10);  // a new slot every third token
}

TEST(DmcPropertyTest, ClearErrors) {
  DMC bad;
  bad.neuron = 16;
  kvtest::expect_error_mentioning([&] { KVCache<DMC> c({1, {2, 2, 16, 16}, 8, kvcache::DType::kF32}, bad); }, "neuron");
  DMC zero;
  zero.weigh = [](const DMC::Step&) { return 0.0f; };
  KVCache<DMC> c({1, {1, 1, 4, 4}, 8, kvcache::DType::kF32}, zero);
  std::vector<float> out;
  kvtest::expect_error_mentioning(
      [&] {
        step(c, 0, 1, 1, 4, {1, 2, 3, 4}, {1, 2, 3, 4}, 0, {1, 1, 1, 1}, out);
      },
      "importance");
}

}  // namespace
