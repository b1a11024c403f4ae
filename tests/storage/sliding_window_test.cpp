// The sliding-window ring of YOCO's self-decoder: it holds exactly the last `window` tokens, overwriting the oldest
// in place, and attention over it equals attention over those tokens in order.

#include "kvcache/storage/sliding_window.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "kvcache/testing/testing.hpp"
#include "test_util.hpp"

namespace {

using kvcache::ConstTensorView;
using kvcache::DType;
using kvcache::SlidingWindowRing;
using kvcache::TensorView;

TEST(SlidingWindowTest, HoldsTheLastWindowTokens) {
  const kvcache::AttentionShape shape{4, 2, 8, 8};
  SlidingWindowRing ring(shape, 5, DType::kF32);
  kvcache::LayerSlots all(shape, 40, DType::kF32);  // every token, in order
  kvcache::DecodeWorkspace ws(shape, 40);
  for (int t = 0; t < 23; ++t) {
    const auto k = kvtest::random_vector(16, 100 + t), v = kvtest::random_vector(16, 200 + t);
    ring.push(ConstTensorView<float, 2>(k.data(), 2, 8), ConstTensorView<float, 2>(v.data(), 2, 8), t);
    const kvcache::Position pos[1] = {t};
    all.append(ConstTensorView<float, 3>(k.data(), 2, 1, 8), ConstTensorView<float, 3>(v.data(), 2, 1, 8), pos);
    // Positions held: exactly (t - 5, t].
    for (int h = 0; h < 2; ++h) {
      std::vector<kvcache::Position> held(ring.slots().positions(h).begin(), ring.slots().positions(h).end());
      std::sort(held.begin(), held.end());
      std::vector<kvcache::Position> expect;
      for (int p = std::max(0, t - 4); p <= t; ++p) expect.push_back(p);
      ASSERT_EQ(held, expect) << "after token " << t;
    }
    EXPECT_EQ(ring.kv_bytes(), std::size_t(std::min(t + 1, 5)) * 2 * 16 * 4);
    // Attention over the ring = reference attention over the window's rows of `all`.
    const auto q = kvtest::random_vector(4 * 8, 300 + t);
    std::vector<float> got(32), want(32);
    kvcache::decode_attention(ring.slots(), ConstTensorView<float, 2>(q.data(), 4, 8),
                              TensorView<float, 2>(got.data(), 4, 8), ws);
    kvcache::LayerSlots window(shape, 5, DType::kF32);
    for (int p = std::max(0, t - 4); p <= t; ++p)
      for (int h = 0; h < 2; ++h) {
        const kvcache::Position at[1] = {p};
        window.append(h, ConstTensorView<float, 2>(all.k_rows<float>(h) + p * 8, 1, 8),
                      ConstTensorView<float, 2>(all.v_rows<float>(h) + p * 8, 1, 8), at);
      }
    kvcache::reference::decode_attention(window, ConstTensorView<float, 2>(q.data(), 4, 8),
                                         TensorView<float, 2>(want.data(), 4, 8));
    ASSERT_LE(kvtest::max_abs_diff(got, want), 1e-5) << "after token " << t;
  }
  EXPECT_EQ(ring.pushed(), 23);
  ring.clear();
  EXPECT_EQ(ring.slots().length(0), 0);
}

TEST(SlidingWindowTest, BadInputIsAClearError) {
  kvtest::expect_error_mentioning([] { SlidingWindowRing({4, 2, 8, 8}, 0, DType::kF16); }, "sliding window must be");
  SlidingWindowRing ring({4, 2, 8, 8}, 4, DType::kF16);
  std::vector<float> k(16), v(16);
  kvtest::expect_error_mentioning(
      [&] { ring.push(ConstTensorView<float, 2>(k.data(), 2, 8), ConstTensorView<float, 2>(v.data(), 1, 8), 0); },
      "push takes");
}

}  // namespace
