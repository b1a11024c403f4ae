// The worked examples of docs/policies/ (H2O, StreamingLLM, VATP, L2-norm, SnapKV), each run through
// the real KVCache<Policy> path, with their contrast cases.

#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "policy_test_util.hpp"

namespace {

using kvcache::Count;
using kvcache::KVCache;
using kvtest::kept;

class WorkedExampleTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(WorkedExampleTest, H2OPrefillThenOneDecodeStep) {
  KVCache<kvcache::H2O> cache(kvtest::one_head_config(16, 12), kvcache::H2O(Count::of(2), Count::of(2)));
  kvtest::prefill(cache, 0, kvtest::prompt_from_attention(kvtest::kA, 16));
  EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 2, 6, 7}));
  // Accumulated (unnormalised) column sums of the kept tokens: {0: 3.3, 2: 1.4, 6: 0.2, 7: 0.1}.
  auto pos = cache.layer(0).positions(0);
  auto sc = cache.scores(0, 0);
  for (std::size_t s = 0; s < pos.size(); ++s) {
    const double expect = pos[s] == 0 ? 3.3 : pos[s] == 2 ? 1.4 : pos[s] == 6 ? 0.2 : 0.1;
    EXPECT_NEAR(sc[s], expect, 1e-5) << "position " << pos[s];
  }
  kvtest::decode_with_attention(cache, 16, 8, {{0, 0.3}, {2, 0.1}, {6, 0.1}, {7, 0.2}, {8, 0.3}});
  EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 2, 7, 8}));
}

// kvpress's ObservedAttention divides each column sum by the number of queries that saw the token: not H2O.
struct NormalisedAttention : kvcache::H2O {
  static constexpr std::string_view kName = "normalised_attention";
  using H2O::H2O;
  void rank(const kvcache::RankInput& in, std::span<float> priority) const noexcept {
    for (std::size_t j = 0; j < priority.size(); ++j)
      priority[j] = in.scores[j] / static_cast<float>(in.prompt_length - in.positions[j]);
  }
};
static_assert(kvcache::Policy<NormalisedAttention>);

TEST_P(WorkedExampleTest, H2OContrastWithNormalisedScores) {
  KVCache<NormalisedAttention> cache(kvtest::one_head_config(16, 12), NormalisedAttention(Count::of(2), Count::of(2)));
  kvtest::prefill(cache, 0, kvtest::prompt_from_attention(kvtest::kA, 16));
  EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 4, 6, 7}));
}

TEST_P(WorkedExampleTest, VatpProtectsTheSink) {
  const std::vector<double> vnorm = {0.5, 4.0, 2.0, 6.0, 1.0, 8.0, 3.0, 3.0};
  {
    KVCache<kvcache::VATP> cache(kvtest::one_head_config(16, 12), kvcache::VATP(Count::of(2), Count::of(2), 1));
    kvtest::prefill(cache, 0, kvtest::prompt_from_attention(kvtest::kA, 16, vnorm));
    EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 1, 6, 7}));
  }
  {
    KVCache<kvcache::VATP> cache(kvtest::one_head_config(16, 12), kvcache::VATP(Count::of(2), Count::of(2), 0));
    kvtest::prefill(cache, 0, kvtest::prompt_from_attention(kvtest::kA, 16, vnorm));
    EXPECT_EQ(kept(cache, 0), (std::set<int>{1, 3, 6, 7}));  // the sink is lost without protection
  }
}

TEST_P(WorkedExampleTest, L2NormKeepsTheLowestNorms) {
  // docs/policies/l2_norm.md: 2-d keys with norms [1, 5, 3, 7, 2, 6, 4, 8].
  const std::vector<float> k2 = {0.6f, 0.8f, 3, 4, 0, 3, 7, 0, 1.2f, 1.6f, 3.6f, 4.8f, 0, 4, 4.8f, 6.4f};
  kvtest::Prompt p;
  p.d = 2;
  p.tokens = 8;
  p.k = k2;
  p.v.assign(16, 1.0f);
  p.q.assign(16, 0.1f);
  for (int i = 0; i < 8; ++i) p.positions.push_back(i);
  {
    // keep_ratio 0.5 (ceil), layer 0 skipped: layer 0 keeps all 8, layer 1 keeps {0, 2, 4, 6}.
    KVCache<kvcache::L2Norm> cache(kvtest::one_head_config(2, 12, 2),
                                   kvcache::L2Norm(Count::fraction(0.5, kvcache::Rounding::kCeil), {0}));
    kvtest::prefill(cache, 0, p);
    kvtest::prefill(cache, 1, p);
    EXPECT_EQ(kept(cache, 0).size(), 8u);
    EXPECT_EQ(kept(cache, 1), (std::set<int>{0, 2, 4, 6}));
  }
  {
    // cold-compress style: recent R = 2 protected, budget 4.
    KVCache<kvcache::L2Norm> cache(kvtest::one_head_config(2, 12),
                                   kvcache::L2Norm(Count::of(4), {}, kvcache::L2Norm::Mode::kOnce, 0, 2));
    kvtest::prefill(cache, 0, p);
    EXPECT_EQ(kept(cache, 0), (std::set<int>{0, 4, 6, 7}));
  }
}

TEST_P(WorkedExampleTest, SnapKVPoolsTheWindowVotes) {
  // docs/policies/snapkv.md: L = 8, w = 2, C = 5, k = 3. Only the window rows q6, q7 matter.
  std::vector<std::vector<double>> a(8);
  for (int i = 0; i < 6; ++i) a[std::size_t(i)] = std::vector<double>(std::size_t(i + 1), 1.0 / (i + 1));
  a[6] = {0.30, 0.00, 0.05, 0.25, 0.10, 0.10, 0.20};
  a[7] = {0.20, 0.05, 0.05, 0.35, 0.05, 0.10, 0.10, 0.10};
  const auto p = kvtest::prompt_from_attention(a, 16);
  auto run = [&](int kernel, kvcache::SnapKV::Pooling pooling) {
    KVCache<kvcache::SnapKV> cache(kvtest::one_head_config(16, 12), kvcache::SnapKV(Count::of(5), 2, kernel, pooling));
    kvtest::prefill(cache, 0, p);
    return kept(cache, 0);
  };
  EXPECT_EQ(run(3, kvcache::SnapKV::Pooling::kAvg), (std::set<int>{2, 3, 4, 6, 7}));
  EXPECT_EQ(run(3, kvcache::SnapKV::Pooling::kMax), (std::set<int>{2, 3, 4, 6, 7}));
  EXPECT_EQ(run(1, kvcache::SnapKV::Pooling::kMax), (std::set<int>{0, 3, 5, 6, 7}));  // no pooling
  // L = 4 < C = 5: no compression.
  std::vector<std::vector<double>> shortp(a.begin(), a.begin() + 4);
  KVCache<kvcache::SnapKV> cache(kvtest::one_head_config(16, 12), kvcache::SnapKV(Count::of(5), 2, 3));
  kvtest::prefill(cache, 0, kvtest::prompt_from_attention(shortp, 16));
  EXPECT_EQ(kept(cache, 0).size(), 4u);
}

// docs/policies/streaming_llm.md: S = 2, R = 2, tokens fed one at a time.
TEST_P(WorkedExampleTest, StreamingLLMSinksAndWindow) {
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{};
  KVCache<kvcache::StreamingLLM> cache(kvtest::one_head_config(16, 12), kvcache::StreamingLLM(2, 2), opt);
  const std::vector<std::set<int>> expect = {{0},          {0, 1},       {0, 1, 2},    {0, 1, 2, 3}, {0, 1, 3, 4},
                                             {0, 1, 4, 5}, {0, 1, 5, 6}, {0, 1, 6, 7}, {0, 1, 7, 8}};
  auto one = kvtest::prompt_from_attention({{1.0}}, 16);
  kvtest::prefill(cache, 0, one);
  EXPECT_EQ(kept(cache, 0), expect[0]);
  for (int t = 1; t <= 8; ++t) {
    kvtest::decode_with_attention(cache, 16, t, {});
    EXPECT_EQ(kept(cache, 0), expect[std::size_t(t)]) << "after token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, WorkedExampleTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

}  // namespace
