// One cache layer read by several model layers (YOCO's global cache; KVCacheOptions::readers): scores add up over
// the readers, eviction waits for the last one, and reads out of order are clear errors.

#include <gtest/gtest.h>

#include <vector>

#include "test_util.hpp"

namespace {

using kvcache::ConstTensorView;
using kvcache::Count;
using kvcache::TensorView;

constexpr int kQ = 4, kKv = 2, kD = 16;

kvcache::KVCacheOptions two_readers() {
  kvcache::KVCacheOptions o;
  o.readers = 2;
  return o;
}

TEST(SharedCacheTest, ScoresAddUpOverReadersAndEvictionWaitsForTheLast) {
  const kvcache::CacheConfig cfg{1, {kQ, kKv, kD, kD}, 64, kvcache::DType::kF32};
  // H2O with 6 heavy + 2 recent: a 10-token prompt is cut to 8 after the second read, not the first.
  kvcache::KVCache<kvcache::H2O> cache(cfg, kvcache::H2O(Count::of(6), Count::of(2)), two_readers());
  kvcache::KVCache<kvcache::Full> a(cfg), b(cfg);  // the two reads, separately
  const int m = 10;
  const auto k = kvtest::random_vector(kKv * m * kD, 1), v = kvtest::random_vector(kKv * m * kD, 2);
  const auto q0 = kvtest::random_vector(m * kQ * kD, 3), q1 = kvtest::random_vector(m * kQ * kD, 4);
  std::vector<kvcache::Position> pos(m);
  for (int i = 0; i < m; ++i) pos[std::size_t(i)] = i;
  std::vector<float> out(m * kQ * kD), ref0(out.size()), ref1(out.size());
  const ConstTensorView<float, 3> kv_k(k.data(), kKv, m, kD), kv_v(v.data(), kKv, m, kD);
  cache.prefill(0, kv_k, kv_v, pos, ConstTensorView<float, 3>(q0.data(), m, kQ, kD),
                TensorView<float, 3>(out.data(), m, kQ, kD));
  EXPECT_EQ(cache.length(0, 0), m);  // waiting for the second reader
  EXPECT_EQ(cache.scores(0, 0).size(), std::size_t(m));
  const std::vector<float> after_first(cache.scores(0, 0).begin(), cache.scores(0, 0).end());
  cache.read_prefill(0, ConstTensorView<float, 3>(q1.data(), m, kQ, kD), TensorView<float, 3>(out.data(), m, kQ, kD));
  EXPECT_EQ(cache.length(0, 0), 8);
  // The second read saw the whole prompt: its output equals attention over all m rows.
  b.prefill(0, kv_k, kv_v, pos, ConstTensorView<float, 3>(q1.data(), m, kQ, kD),
            TensorView<float, 3>(ref1.data(), m, kQ, kD));
  EXPECT_LE(kvtest::max_abs_diff(out, ref1), 1e-6);
  // The first read's column sums are those of q0 alone (a single reader with the same queries).
  kvcache::KVCache<kvcache::H2O> one(cfg, kvcache::H2O(Count::of(60), Count::of(2)));
  one.prefill(0, kv_k, kv_v, pos, ConstTensorView<float, 3>(q0.data(), m, kQ, kD),
              TensorView<float, 3>(ref0.data(), m, kQ, kD));
  for (int j = 0; j < m; ++j) EXPECT_NEAR(after_first[std::size_t(j)], one.scores(0, 0)[std::size_t(j)], 1e-6);
  // After both reads, every kept row's score is the sum of the two readers' column sums at its position.
  kvcache::KVCache<kvcache::H2O> two(cfg, kvcache::H2O(Count::of(60), Count::of(2)));
  two.prefill(0, kv_k, kv_v, pos, ConstTensorView<float, 3>(q1.data(), m, kQ, kD),
              TensorView<float, 3>(ref1.data(), m, kQ, kD));
  for (int h = 0; h < kKv; ++h)
    for (std::size_t j = 0; j < cache.scores(0, h).size(); ++j) {
      const auto p = std::size_t(cache.layer(0).positions(h)[j]);
      EXPECT_NEAR(cache.scores(0, h)[j], one.scores(0, h)[p] + two.scores(0, h)[p], 1e-5) << "head " << h;
    }
}

TEST(SharedCacheTest, ReadsOutOfOrderAreClearErrors) {
  const kvcache::CacheConfig cfg{1, {kQ, kKv, kD, kD}, 16, kvcache::DType::kF32};
  kvcache::KVCache<kvcache::Full> cache(cfg, {}, two_readers());
  std::vector<float> k(kKv * kD), v(kKv * kD), q(kQ * kD), out(kQ * kD);
  const ConstTensorView<float, 2> kk(k.data(), kKv, kD), vv(v.data(), kKv, kD), qq(q.data(), kQ, kD);
  const TensorView<float, 2> oo(out.data(), kQ, kD);
  kvtest::expect_error_mentioning([&] { cache.read_decode(0, qq, oo); }, "no decode step waiting");
  cache.decode(0, kk, vv, 0, qq, oo);
  kvtest::expect_error_mentioning([&] { cache.decode(0, kk, vv, 1, qq, oo); }, "still waits for 1 read");
  cache.read_decode(0, qq, oo);
  kvtest::expect_error_mentioning([&] { cache.read_decode(0, qq, oo); }, "no decode step waiting");
  kvtest::expect_error_mentioning(
      [&] {
        kvcache::KVCacheOptions o;
        o.readers = 0;
        kvcache::KVCache<kvcache::Full> bad(cfg, {}, o);
      },
      "readers must be >= 1");
  kvtest::expect_error_mentioning(
      [&] { kvcache::KVCache<kvcache::DMC> bad(cfg, kvcache::DMC::official(), two_readers()); }, "one reader");
}

}  // namespace
