// FastGen (docs/policies/fastgen.md): the worked example of docs/policies/fastgen.md through the real KVCache path on
// every ISA, the profiling statistics against a brute-force attention map, the generation rules per chosen policy, and
// its properties (T = 1 keeps everything; every head's length is what its chosen policy keeps).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "kvcache/kvcache.hpp"
#include "policy_test_util.hpp"

namespace {

using kvcache::FastGen;
using kvcache::KVCache;
using kvcache::Position;
using kvcache::TokenClass;
using kvtest::kept;

// docs/policies/fastgen.md's worked example: special = {0} (BOS), punctuation = {3, 6}; later positions: 9 and 12 are
// punctuation.
TokenClass example_class(Position p) {
  if (p == 0) return TokenClass::kSpecial;
  return p == 3 || p == 6 || p == 9 || p == 12 ? TokenClass::kPunctuation : TokenClass::kOther;
}

int choice(FastGen::Choice c) { return static_cast<int>(c); }

// Head h's keys as stored (after rounding to the storage type), in f32: [length, d].
std::vector<double> key_rows(const kvcache::LayerSlots& kv, int h) {
  std::vector<double> out;
  auto read = [&](const auto* k) {
    for (std::int64_t i = 0; i < kv.length(h) * kv.head_dim_k(); ++i) out.push_back(kvcache::to_f32(k[i]));
  };
  switch (kv.dtype()) {
    case kvcache::DType::kF32:
      read(kv.k_rows<float>(h));
      break;
    case kvcache::DType::kF16:
      read(kv.k_rows<kvcache::f16>(h));
      break;
    case kvcache::DType::kBF16:
      read(kv.k_rows<kvcache::bf16>(h));
      break;
    case kvcache::DType::kI8:
      for (std::int64_t i = 0; i < kv.length(h) * kv.head_dim_k(); ++i)
        out.push_back(double(kv.k_rows<kvcache::i8>(h)[i]) * double(kv.k_scales(h)[i / kv.head_dim_k()]));
      break;
  }
  return out;
}

class FastGenTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(FastGenTest, WorkedExampleChoosesAndKeepsPerThreshold) {
  struct Case {
    double t;
    FastGen::Choice c;
    std::set<int> keep;
  };
  const Case cases[] = {{0.95, FastGen::Choice::kFrequent, {0, 1, 2, 3, 4, 6}},
                        {0.98, FastGen::Choice::kLocal, {0, 1, 2, 3, 4, 6, 7}},
                        {0.99, FastGen::Choice::kFull, {0, 1, 2, 3, 4, 5, 6, 7}},
                        {0.40, FastGen::Choice::kSpecial, {0}},
                        {0.45, FastGen::Choice::kPunctuation, {0, 3, 6}}};
  for (const Case& c : cases) {
    KVCache<FastGen> cache(kvtest::one_head_config(16, 12), FastGen(c.t, example_class));
    kvtest::prefill(cache, 0, kvtest::prompt_from_attention(kvtest::kA, 16));
    EXPECT_EQ(cache.policy_state().choice(0, 0), choice(c.c)) << "T = " << c.t;
    EXPECT_EQ(kept(cache, 0), c.keep) << "T = " << c.t;
    EXPECT_EQ(cache.length(0, 0), std::int64_t(c.keep.size()));
  }
}

TEST_P(FastGenTest, WorkedExampleRecoveries) {
  // The statistics KVCache profiles with, computed by attention_profile on the prompt whose attention is kA.
  const auto p = kvtest::prompt_from_attention(kvtest::kA, 16);
  kvcache::LayerSlots kv({1, 1, 16, 16}, 12, kvcache::DType::kF32);
  kv.append(kvcache::ConstTensorView<float, 3>(p.k.data(), 1, 8, 16),
            kvcache::ConstTensorView<float, 3>(p.v.data(), 1, 8, 16), p.positions);
  std::vector<float> cols(12, 0.0f), band(12, 0.0f);
  kvcache::attention_profile(kv, kvcache::ConstTensorView<float, 3>(p.q.data(), 8, 1, 16), 2, cols.data(), band.data(),
                             12);
  const double expect_cols[] = {3.3, 1.1, 1.4, 0.5, 1.2, 0.2, 0.2, 0.1};
  for (int j = 0; j < 8; ++j) {
    EXPECT_NEAR(cols[std::size_t(j)], expect_cols[j], 1e-5) << j;
    double b = 0;  // rows i in [j, j + 1]
    for (int i = j; i < std::min(8, j + 2); ++i) b += kvtest::kA[std::size_t(i)][std::size_t(j)];
    EXPECT_NEAR(band[std::size_t(j)], b, 1e-5) << j;
  }
  std::vector<std::uint8_t> tags;
  for (Position j = 0; j < 8; ++j) tags.push_back(static_cast<std::uint8_t>(example_class(j)));
  kvcache::ProfileInput in;
  in.positions = kv.positions(0);
  in.column_sums = {cols.data(), 8};
  in.band_sums = {band.data(), 8};
  in.tags = tags;
  in.prompt_length = 8;
  in.window = 2;
  const FastGen fg(0.95, example_class);
  EXPECT_EQ(fg.profile_window(8), 2);  // int(0.3 x 8)
  EXPECT_EQ(fg.frequent_count(8), 3);  // ceil(2.4)
  const auto rec = fg.recoveries(in);
  const double expect[] = {0.4125, 0.5, 0.9625, 0.9875, 1.0};
  for (int c = 0; c < FastGen::kChoices; ++c) EXPECT_NEAR(rec[std::size_t(c)], expect[c], 1e-5) << c;
}

TEST_P(FastGenTest, GenerationFollowsTheChosenPolicy) {
  const auto prompt = kvtest::prompt_from_attention(kvtest::kA, 16);
  {  // special only: every new token is dropped after it attends, punctuation included
    KVCache<FastGen> cache(kvtest::one_head_config(16, 14), FastGen(0.40, example_class));
    kvtest::prefill(cache, 0, prompt);
    kvtest::decode_with_attention(cache, 16, 8, {{0, 0.5}, {8, 0.5}});
    kvtest::decode_with_attention(cache, 16, 9, {{0, 0.5}, {9, 0.5}});
    EXPECT_EQ(kept(cache, 0), (std::set<int>{0}));
  }
  {  // special + punctuation: the new punctuation stays, the rest goes
    KVCache<FastGen> cache(kvtest::one_head_config(16, 14), FastGen(0.45, example_class));
    kvtest::prefill(cache, 0, prompt);
    kvtest::decode_with_attention(cache, 16, 8, {{0, 0.5}, {8, 0.5}});
    kvtest::decode_with_attention(cache, 16, 9, {{0, 0.5}, {9, 0.5}});
    EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 3, 6, 9}));
  }
  {  // + frequent: len 9 -> ceil(2.7) = 3 unclassed rows among {1, 2, 4, 8} by mean attention
    KVCache<FastGen> cache(kvtest::one_head_config(16, 14), FastGen(0.95, example_class));
    kvtest::prefill(cache, 0, prompt);
    // Means after this step: 1: (1.1 + 0.1) / 8 = 0.15, 2: (1.4 + 0.05) / 7 = 0.207, 4: (1.2 + 0.05) / 5 = 0.25,
    // 8: 0.6 / 1 = 0.6; so 1 goes.
    kvtest::decode_with_attention(cache, 16, 8,
                                  {{0, 0.1}, {1, 0.1}, {2, 0.05}, {3, 0.05}, {4, 0.05}, {6, 0.05}, {8, 0.6}});
    EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 2, 3, 4, 6, 8}));
  }
  {  // + local (W = 2 of the prompt's 8): the two newest are protected whatever their attention
    KVCache<FastGen> cache(kvtest::one_head_config(16, 14), FastGen(0.98, example_class));
    kvtest::prefill(cache, 0, prompt);
    kvtest::decode_with_attention(cache, 16, 8, {{0, 0.9}, {8, 0.1}});
    const auto k = kept(cache, 0);
    EXPECT_TRUE(k.count(7) && k.count(8));
    EXPECT_TRUE(k.count(0) && k.count(3) && k.count(6));
    // len 9: W (2) + classed outside it (0, 3, 6) + 3 frequent = 8 of the 8 + 1 rows.
    EXPECT_EQ(cache.length(0, 0), 8);
  }
}

// The per-step loops (compiled per ISA: policy/detail/fastgen_scan.ipp) against their definitions, written the slow
// way: budget_now counts the window and the classed rows outside it; rank gives kept classes +inf, the others their
// column's mean attention (float of the double quotient) or -inf without + frequent. Lengths around the vector widths.
TEST_P(FastGenTest, RankAndBudgetMatchTheirDefinitions) {
  const FastGen fg(0.9, example_class);
  std::mt19937 rng(3);
  for (std::int64_t n : {1, 2, 15, 16, 17, 63, 64, 65, 200}) {
    std::vector<Position> pos(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < pos.size(); ++i) pos[i] = Position(i);
    std::shuffle(pos.begin(), pos.end(), rng);  // compaction leaves positions out of order
    std::vector<std::uint8_t> tags(pos.size());
    std::vector<float> scores(pos.size());
    for (std::size_t i = 0; i < pos.size(); ++i) {
      tags[i] = std::uint8_t(rng() % 3);  // other, special, punctuation
      scores[i] = float(rng() % 1000) / 37.0f;
    }
    kvcache::SlotColumns columns(1, n);
    columns.add<FastGen::Tag>();
    std::copy(tags.begin(), tags.end(), columns.data<FastGen::Tag>(0));
    kvcache::RankInput in;
    in.positions = pos;
    in.columns = &columns;
    in.scores = scores;
    in.prompt_length = 40;
    in.newest = Position(n - 1);
    for (int c = 0; c < choice(FastGen::Choice::kFull); ++c) {
      const bool punct = c >= choice(FastGen::Choice::kPunctuation), frequent = c >= choice(FastGen::Choice::kFrequent);
      const std::int64_t window = c == choice(FastGen::Choice::kLocal) ? fg.profile_window(in.prompt_length) : 0;
      std::int64_t in_window = 0, classed = 0;
      std::vector<float> priority(pos.size()), want(pos.size());
      for (std::size_t i = 0; i < pos.size(); ++i) {
        const bool keep = tags[i] == std::uint8_t(TokenClass::kSpecial) ||
                          (punct && tags[i] == std::uint8_t(TokenClass::kPunctuation));
        const bool recent = window > 0 && pos[i] > in.newest - window;
        in_window += recent;
        classed += keep && !recent;
        want[i] = keep       ? std::numeric_limits<float>::infinity()
                  : frequent ? float(double(scores[i]) / double(in.newest - pos[i] + 1))
                             : -std::numeric_limits<float>::infinity();
      }
      const auto b = fg.budget_for(in, c);
      std::int64_t total = in_window + classed;
      if (frequent) total += std::min(n - in_window - classed, fg.frequent_count(in.newest + 1));
      EXPECT_EQ(b.total, total) << "n " << n << " " << FastGen::choice_name(c);
      EXPECT_EQ(b.recent, window);
      fg.rank_for(in, c, priority);
      EXPECT_EQ(priority, want) << "n " << n << " " << FastGen::choice_name(c);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, FastGenTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

// attention_profile against an attention map computed in double from the same (rounded) keys.
TEST(AttentionProfileTest, MatchesBruteForce) {
  std::mt19937 rng(5);
  for (kvcache::DType dt : {kvcache::DType::kF32, kvcache::DType::kF16, kvcache::DType::kBF16, kvcache::DType::kI8}) {
    for (int g : {1, 2, 3, 8}) {
      for (std::int64_t m : {1, 37, 300}) {
        const int n_kv = 2, d = 24;
        const std::int64_t window = 5;
        kvcache::LayerSlots kv({n_kv * g, n_kv, d, d}, m + 3, dt);
        const auto k = kvtest::random_vector(std::size_t(n_kv * m * d), rng(), 1.5f);
        const auto v = kvtest::random_vector(std::size_t(n_kv * m * d), rng());
        const auto q = kvtest::random_vector(std::size_t(m * n_kv * g * d), rng(), 1.5f);
        std::vector<Position> pos;
        for (std::int64_t i = 0; i < m; ++i) pos.push_back(Position(i));
        kv.append(kvcache::ConstTensorView<float, 3>(k.data(), n_kv, m, d),
                  kvcache::ConstTensorView<float, 3>(v.data(), n_kv, m, d), pos);
        const std::int64_t stride = m + 3;
        std::vector<float> cols(std::size_t(n_kv * stride), 0.0f), band(cols.size(), 0.0f);
        kvcache::attention_profile(kv, kvcache::ConstTensorView<float, 3>(q.data(), m, n_kv * g, d), window,
                                   cols.data(), band.data(), stride);
        for (int h = 0; h < n_kv; ++h) {
          std::vector<double> ec(std::size_t(m), 0.0), eb(std::size_t(m), 0.0);
          const auto keys = key_rows(kv, h);
          for (std::int64_t i = 0; i < m; ++i) {
            for (int a = 0; a < g; ++a) {
              std::vector<double> logit(std::size_t(i + 1));
              double mx = -1e300, sum = 0;
              for (std::int64_t j = 0; j <= i; ++j) {
                double dot = 0;
                for (int c = 0; c < d; ++c)
                  dot += double(q[std::size_t((i * n_kv * g + h * g + a) * d + c)]) * keys[std::size_t(j * d + c)];
                logit[std::size_t(j)] = dot / std::sqrt(double(d));
                mx = std::max(mx, logit[std::size_t(j)]);
              }
              for (auto& x : logit) sum += (x = std::exp(x - mx));
              for (std::int64_t j = 0; j <= i; ++j) {
                const double p = logit[std::size_t(j)] / sum / g;
                ec[std::size_t(j)] += p;
                if (i - j < window) eb[std::size_t(j)] += p;
              }
            }
          }
          for (std::int64_t j = 0; j < m; ++j) {
            ASSERT_NEAR(cols[std::size_t(h * stride + j)], ec[std::size_t(j)], 1e-4 * (1 + ec[std::size_t(j)]))
                << kvcache::dtype_name(dt) << " g " << g << " m " << m << " head " << h << " j " << j;
            ASSERT_NEAR(band[std::size_t(h * stride + j)], eb[std::size_t(j)], 1e-4 * (1 + eb[std::size_t(j)]));
          }
        }
      }
    }
  }
}

// A GQA prompt with random attention; token classes: 0 special, every fifth position punctuation.
TokenClass every_fifth(Position p) {
  return p == 0 ? TokenClass::kSpecial : p % 5 == 3 ? TokenClass::kPunctuation : TokenClass::kOther;
}

struct Run {
  std::vector<std::vector<std::int64_t>> lengths;  // [layer * n_kv + head] after each step
};

template <class Cache>
void run_random(Cache& cache, int n_kv, int g, int d, std::int64_t prompt, int steps, std::mt19937& rng) {
  const int nq = n_kv * g;
  const auto k = kvtest::random_vector(std::size_t(n_kv * prompt * d), rng(), 2.0f);
  const auto v = kvtest::random_vector(std::size_t(n_kv * prompt * d), rng());
  const auto q = kvtest::random_vector(std::size_t(prompt * nq * d), rng(), 2.0f);
  std::vector<float> out(std::size_t(prompt * nq * d));
  std::vector<Position> pos;
  for (std::int64_t i = 0; i < prompt; ++i) pos.push_back(Position(i));
  cache.prefill(0, kvcache::ConstTensorView<float, 3>(k.data(), n_kv, prompt, d),
                kvcache::ConstTensorView<float, 3>(v.data(), n_kv, prompt, d), pos,
                kvcache::ConstTensorView<float, 3>(q.data(), prompt, nq, d),
                kvcache::TensorView<float, 3>(out.data(), prompt, nq, d));
  for (int s = 0; s < steps; ++s) {
    const auto k1 = kvtest::random_vector(std::size_t(n_kv * d), rng(), 2.0f);
    const auto v1 = kvtest::random_vector(std::size_t(n_kv * d), rng());
    const auto q1 = kvtest::random_vector(std::size_t(nq * d), rng(), 2.0f);
    std::vector<float> o1(std::size_t(nq * d));
    cache.decode(0, kvcache::ConstTensorView<float, 2>(k1.data(), n_kv, d),
                 kvcache::ConstTensorView<float, 2>(v1.data(), n_kv, d), Position(prompt + s),
                 kvcache::ConstTensorView<float, 2>(q1.data(), nq, d), kvcache::TensorView<float, 2>(o1.data(), nq, d));
  }
}

TEST(FastGenPropertyTest, ThresholdOneKeepsEverything) {
  std::mt19937 rng(8);
  const int n_kv = 2, g = 3, d = 16;
  KVCache<FastGen> cache({1, {n_kv * g, n_kv, d, d}, 128, kvcache::DType::kF16}, FastGen(1.0, every_fifth));
  run_random(cache, n_kv, g, d, 60, 20, rng);
  for (int h = 0; h < n_kv; ++h) {
    EXPECT_EQ(cache.policy_state().choice(0, h), choice(FastGen::Choice::kFull));
    EXPECT_EQ(cache.length(0, h), 80);
  }
}

TEST(FastGenPropertyTest, EveryHeadHoldsWhatItsPolicyKeeps) {
  std::mt19937 rng(9);
  const int n_kv = 8, g = 2, d = 16;
  const std::int64_t prompt = 90;
  const int steps = 25;
  std::set<int> seen;
  for (double t : {0.3, 0.6, 0.8, 0.9, 0.95}) {
    KVCache<FastGen> cache({1, {n_kv * g, n_kv, d, d}, 160, kvcache::DType::kF32}, FastGen(t, every_fifth));
    run_random(cache, n_kv, g, d, prompt, steps, rng);
    const std::int64_t len = prompt + steps, window = std::int64_t(0.3 * double(prompt));
    const std::int64_t frequent = std::int64_t(std::ceil(0.3 * double(len) - 1e-9));
    for (int h = 0; h < n_kv; ++h) {
      const int c = cache.policy_state().choice(0, h);
      seen.insert(c);
      std::int64_t special = 0, punct = 0, in_window = 0, other = 0;
      for (Position p = 0; p < len; ++p) {
        const bool recent = c == choice(FastGen::Choice::kLocal) && p >= len - window;
        if (recent)
          ++in_window;
        else if (every_fifth(p) == TokenClass::kSpecial)
          ++special;
        else if (every_fifth(p) == TokenClass::kPunctuation)
          ++punct;
        else
          ++other;
      }
      std::int64_t expect = len;
      if (c == choice(FastGen::Choice::kSpecial)) expect = special;
      if (c == choice(FastGen::Choice::kPunctuation)) expect = special + punct;
      if (c == choice(FastGen::Choice::kFrequent)) expect = special + punct + std::min(other, frequent);
      if (c == choice(FastGen::Choice::kLocal)) expect = in_window + special + punct + std::min(other, frequent);
      EXPECT_EQ(cache.length(0, h), expect) << "T " << t << " head " << h << " " << FastGen::choice_name(c);
      // Every classed row the policy keeps is there.
      const auto k = kept(cache, 0, h);
      for (Position p = 0; p < len; ++p) {
        if (every_fifth(p) == TokenClass::kSpecial ||
            (every_fifth(p) == TokenClass::kPunctuation && c >= choice(FastGen::Choice::kPunctuation))) {
          EXPECT_TRUE(k.count(p)) << "T " << t << " head " << h << " position " << p;
        }
      }
    }
  }
  EXPECT_GE(seen.size(), 3u);  // the thresholds reach several policies
}

// Heads evict in the decode task that finished them; with threads, at once. Same rows kept, same outputs.
TEST(FastGenPropertyTest, ThreadsKeepWhatSerialKeeps) {
  const int n_kv = 4, g = 2, d = 16;
  std::mt19937 rng_a(12), rng_b(12);
  KVCache<FastGen> serial({1, {n_kv * g, n_kv, d, d}, 160, kvcache::DType::kF16}, FastGen(0.9, every_fifth));
  KVCache<FastGen, kvtest::ThreadExecutor> threaded({1, {n_kv * g, n_kv, d, d}, 160, kvcache::DType::kF16},
                                                    FastGen(0.9, every_fifth), {}, kvtest::ThreadExecutor{n_kv});
  run_random(serial, n_kv, g, d, 90, 25, rng_a);
  run_random(threaded, n_kv, g, d, 90, 25, rng_b);
  for (int h = 0; h < n_kv; ++h) {
    EXPECT_EQ(threaded.policy_state().choice(0, h), serial.policy_state().choice(0, h));
    auto p = serial.layer(0).positions(h), q = threaded.layer(0).positions(h);
    EXPECT_EQ(std::vector<Position>(p.begin(), p.end()), std::vector<Position>(q.begin(), q.end())) << "head " << h;
  }
}

TEST(FastGenPropertyTest, ClearErrors) {
  kvtest::expect_error_mentioning([] { FastGen(1.5, every_fifth); }, "threshold");
  kvtest::expect_error_mentioning([] { FastGen(0.9, nullptr); }, "token_class");
  KVCache<FastGen> cache(kvtest::one_head_config(16, 12), FastGen(0.9, every_fifth));
  const auto p = kvtest::prompt_from_attention(kvtest::kA, 16);
  kvtest::expect_error_mentioning([&] { kvtest::prefill(cache, 0, p, /*last_chunk=*/false); }, "one prefill call");
  EXPECT_EQ(cache.length(0, 0), 0);  // the rejected call changed nothing
}

}  // namespace
