// StreamingLLM's in-cache positions (paper Sec. 3.2, docs/policies/streaming_llm.md): at each decode step the attention
// must equal the paper's computation, where the cached pre-RoPE keys, ordered by position, are rotated at 0 .. n-1 and
// the query at n-1. The engine gives KVCache keys and queries rotated at their original positions, as for every other
// policy. The reference below rotates independently (its own rotate-half, in double).

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "policy_test_util.hpp"

namespace {

constexpr int kD = 16;
constexpr double kBase = 10000.0;

std::vector<double> rotate(std::vector<double> x, double pos) {  // rotate-half RoPE at position pos
  const int half = kD / 2;
  for (int i = 0; i < half; ++i) {
    const double a = pos * std::pow(kBase, -2.0 * i / kD);
    const double x0 = x[std::size_t(i)], x1 = x[std::size_t(i + half)];
    x[std::size_t(i)] = x0 * std::cos(a) - x1 * std::sin(a);
    x[std::size_t(i + half)] = x0 * std::sin(a) + x1 * std::cos(a);
  }
  return x;
}

class StreamingPositionsTest : public testing::TestWithParam<kvcache::DType> {};

TEST_P(StreamingPositionsTest, AttentionMatchesThePapersInCachePositions) {
  const int S = 2, R = 3;
  const std::int64_t T = 40;
  auto kraw = kvtest::random_vector(std::size_t(T * kD), 3), vraw = kvtest::random_vector(std::size_t(T * kD), 4);
  auto qraw = kvtest::random_vector(std::size_t(T * kD), 5, 2.0f);
  auto row = [](const std::vector<float>& m, std::int64_t t) {
    return std::vector<double>(m.begin() + t * kD, m.begin() + (t + 1) * kD);
  };
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{0, kBase, false};
  kvcache::KVCache<kvcache::StreamingLLM> cache({1, {1, 1, kD, kD}, 16, GetParam()}, kvcache::StreamingLLM(S, R), opt);
  std::vector<std::int64_t> kept_positions;  // what the paper's cache holds, in position order
  for (std::int64_t t = 0; t < T; ++t) {
    std::vector<float> k(kD), v(kD), q(kD), out(kD);
    const auto kr = rotate(row(kraw, t), double(t)), qr = rotate(row(qraw, t), double(t));
    for (int c = 0; c < kD; ++c) {
      k[std::size_t(c)] = float(kr[std::size_t(c)]);
      q[std::size_t(c)] = float(qr[std::size_t(c)]);
      v[std::size_t(c)] = vraw[std::size_t(t * kD + c)];
    }
    if (t == 0) {
      const kvcache::Position p0[1] = {0};
      cache.prefill(0, kvcache::ConstTensorView<float, 3>(k.data(), 1, 1, kD),
                    kvcache::ConstTensorView<float, 3>(v.data(), 1, 1, kD), p0,
                    kvcache::ConstTensorView<float, 3>(q.data(), 1, 1, kD),
                    kvcache::TensorView<float, 3>(out.data(), 1, 1, kD));
    } else {
      cache.decode(0, kvcache::ConstTensorView<float, 2>(k.data(), 1, kD),
                   kvcache::ConstTensorView<float, 2>(v.data(), 1, kD), kvcache::Position(t),
                   kvcache::ConstTensorView<float, 2>(q.data(), 1, kD),
                   kvcache::TensorView<float, 2>(out.data(), 1, kD));
    }
    // The paper: keys of the cache plus the new token at ranks 0 .. n-1, query at n-1.
    kept_positions.push_back(t);
    const std::size_t n = kept_positions.size();
    const auto qp = rotate(row(qraw, t), double(n - 1));
    std::vector<double> logits(n), expect(kD, 0.0);
    for (std::size_t r = 0; r < n; ++r) {
      const auto kp = rotate(row(kraw, kept_positions[r]), double(r));
      double dot = 0;
      for (int c = 0; c < kD; ++c) dot += qp[std::size_t(c)] * kp[std::size_t(c)];
      logits[r] = dot / std::sqrt(double(kD));
    }
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (double& x : logits) sum += (x = std::exp(x - mx));
    for (std::size_t r = 0; r < n; ++r)
      for (int c = 0; c < kD; ++c) {
        const float stored = vraw[std::size_t(kept_positions[r] * kD + c)];
        const double vv =
            GetParam() == kvcache::DType::kF32 ? stored : kvcache::to_f32(kvcache::from_f32<kvcache::f16>(stored));
        expect[std::size_t(c)] += logits[r] / sum * vv;
      }
    const double tol = GetParam() == kvcache::DType::kF32 ? 2e-5 : 5e-3;  // f16 keys round the logits
    for (int c = 0; c < kD; ++c)
      ASSERT_NEAR(out[std::size_t(c)], expect[std::size_t(c)], tol) << "t " << t << " c " << c;
    // The paper's eviction after the step: sinks + the R newest.
    if (n > std::size_t(S + R)) kept_positions.erase(kept_positions.begin() + S);
    EXPECT_EQ(kvtest::kept(cache, 0), std::set<int>(kept_positions.begin(), kept_positions.end())) << "t " << t;
  }
}

// The latent layout (MLA): rows [c (kC) | k_R (kD)], values c, queries [q_c | q_R]; only the RoPE tail is rotated.
// The paper's computation: the kept rows' tails rotated at ranks 0 .. n-1, the query's tail at n-1.
TEST_P(StreamingPositionsTest, LatentRowsRotateOnlyTheirRopeTail) {
  constexpr int kC = 8, kW = kC + kD;
  const int S = 2, R = 3;
  const std::int64_t T = 30;
  const double scale = 0.25;
  auto kraw = kvtest::random_vector(std::size_t(T * kW), 13), qraw = kvtest::random_vector(std::size_t(T * kW), 15);
  auto part = [](const std::vector<float>& m, std::int64_t t, int from, int n) {
    return std::vector<double>(m.begin() + t * kW + from, m.begin() + t * kW + from + n);
  };
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{0, kBase, false};
  opt.softmax_scale = float(scale);
  const kvcache::AttentionShape shape{2, 1, kW, kC, /*values_in_keys=*/true};
  kvcache::KVCache<kvcache::StreamingLLM> cache({1, shape, 16, GetParam()}, kvcache::StreamingLLM(S, R), opt);
  std::vector<std::int64_t> kept_positions;
  for (std::int64_t t = 0; t < T; ++t) {
    // Two query heads: the second is the first scaled, so both see the same rows differently.
    std::vector<float> k(kW), q(2 * kW), out(2 * kC);
    const auto kr = rotate(part(kraw, t, kC, kD), double(t)), qr = rotate(part(qraw, t, kC, kD), double(t));
    for (int c = 0; c < kW; ++c) {
      k[std::size_t(c)] = c < kC ? kraw[std::size_t(t * kW + c)] : float(kr[std::size_t(c - kC)]);
      q[std::size_t(c)] = c < kC ? qraw[std::size_t(t * kW + c)] : float(qr[std::size_t(c - kC)]);
      q[std::size_t(kW + c)] = 2.0f * q[std::size_t(c)];
    }
    const kvcache::Position p0[1] = {0};
    if (t == 0)
      cache.prefill(0, kvcache::ConstTensorView<float, 3>(k.data(), 1, 1, kW),
                    kvcache::ConstTensorView<float, 3>(nullptr, 1, 1, 0), p0,
                    kvcache::ConstTensorView<float, 3>(q.data(), 1, 2, kW),
                    kvcache::TensorView<float, 3>(out.data(), 1, 2, kC));
    else
      cache.decode(0, kvcache::ConstTensorView<float, 2>(k.data(), 1, kW),
                   kvcache::ConstTensorView<float, 2>(nullptr, 1, 0), kvcache::Position(t),
                   kvcache::ConstTensorView<float, 2>(q.data(), 2, kW),
                   kvcache::TensorView<float, 2>(out.data(), 2, kC));
    kept_positions.push_back(t);
    const std::size_t n = kept_positions.size();
    const auto qp = rotate(part(qraw, t, kC, kD), double(n - 1));
    for (int head = 0; head < 2; ++head) {
      const double m = head == 0 ? 1.0 : 2.0;
      std::vector<double> logits(n), expect(kC, 0.0);
      for (std::size_t r = 0; r < n; ++r) {
        const std::int64_t p = kept_positions[r];
        const auto kp = rotate(part(kraw, p, kC, kD), double(r));
        double dot = 0;
        for (int c = 0; c < kC; ++c) dot += double(qraw[std::size_t(t * kW + c)]) * kraw[std::size_t(p * kW + c)];
        for (int c = 0; c < kD; ++c) dot += qp[std::size_t(c)] * kp[std::size_t(c)];
        logits[r] = m * dot * scale;
      }
      const double mx = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (double& x : logits) sum += (x = std::exp(x - mx));
      for (std::size_t r = 0; r < n; ++r)
        for (int c = 0; c < kC; ++c) {
          const float stored = kraw[std::size_t(kept_positions[r] * kW + c)];
          const double vv =
              GetParam() == kvcache::DType::kF32 ? stored : kvcache::to_f32(kvcache::from_f32<kvcache::f16>(stored));
          expect[std::size_t(c)] += logits[r] / sum * vv;
        }
      const double tol = GetParam() == kvcache::DType::kF32 ? 2e-5 : 1e-2;
      for (int c = 0; c < kC; ++c)
        ASSERT_NEAR(out[std::size_t(head * kC + c)], expect[std::size_t(c)], tol) << "t " << t << " head " << head;
    }
    if (n > std::size_t(S + R)) kept_positions.erase(kept_positions.begin() + S);
    EXPECT_EQ(kvtest::kept(cache, 0), std::set<int>(kept_positions.begin(), kept_positions.end())) << "t " << t;
  }
}

// The same model in original-position mode differs once the window has moved (a check that the test can tell).
TEST(StreamingPositionsTest, OriginalModeIsDifferentAfterEviction) {
  kvcache::KVCacheOptions opt;
  opt.rope = kvcache::RopeConfig{};
  kvcache::KVCache<kvcache::StreamingLLM> in_cache({1, {1, 1, kD, kD}, 16, kvcache::DType::kF32},
                                                   kvcache::StreamingLLM(2, 3), opt);
  kvcache::KVCache<kvcache::StreamingLLM> original(
      {1, {1, 1, kD, kD}, 16, kvcache::DType::kF32},
      kvcache::StreamingLLM(2, 3, kvcache::StreamingLLM::Positions::kOriginal));
  auto k = kvtest::random_vector(std::size_t(20 * kD), 1), q = kvtest::random_vector(std::size_t(20 * kD), 2, 3.0f);
  std::vector<float> a(kD), b(kD);
  const kvcache::Position p0[1] = {0};
  in_cache.prefill(
      0, kvcache::ConstTensorView<float, 3>(k.data(), 1, 1, kD), kvcache::ConstTensorView<float, 3>(k.data(), 1, 1, kD),
      p0, kvcache::ConstTensorView<float, 3>(q.data(), 1, 1, kD), kvcache::TensorView<float, 3>(a.data(), 1, 1, kD));
  original.prefill(
      0, kvcache::ConstTensorView<float, 3>(k.data(), 1, 1, kD), kvcache::ConstTensorView<float, 3>(k.data(), 1, 1, kD),
      p0, kvcache::ConstTensorView<float, 3>(q.data(), 1, 1, kD), kvcache::TensorView<float, 3>(b.data(), 1, 1, kD));
  double diff = 0;
  for (int t = 1; t < 20; ++t) {
    auto step = [&](auto& cache, std::vector<float>& out) {
      cache.decode(0, kvcache::ConstTensorView<float, 2>(k.data() + t * kD, 1, kD),
                   kvcache::ConstTensorView<float, 2>(k.data() + t * kD, 1, kD), kvcache::Position(t),
                   kvcache::ConstTensorView<float, 2>(q.data() + t * kD, 1, kD),
                   kvcache::TensorView<float, 2>(out.data(), 1, kD));
    };
    step(in_cache, a);
    step(original, b);
    for (int c = 0; c < kD; ++c) diff = std::max(diff, double(std::abs(a[std::size_t(c)] - b[std::size_t(c)])));
  }
  EXPECT_GT(diff, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(DType, StreamingPositionsTest, testing::Values(kvcache::DType::kF32, kvcache::DType::kF16));

}  // namespace
