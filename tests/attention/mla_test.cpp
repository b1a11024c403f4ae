// MLA (attention/mla.hpp): the absorbed path (absorb W_UK into the query, attend over the latent rows for all heads
// at once, apply W_UV to the latent sums) against the naive decompressed form in double precision
// (attention/mla_reference.hpp), for every ISA this CPU has and every storage type; the worked check of
// docs/architectures.md; storage of the latent layout; and clear errors.
//
// Tolerances: per-head values W_UV c are ~N(0, 1) here, outputs are convex combinations of them computed in fp32
// (absorption, attention, W_UV): 1e-4 max abs. Probabilities summed over n_heads: 2e-6 per head.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kvcache/testing/testing.hpp"
#include "test_util.hpp"

namespace {

using kvtest::expect_error_mentioning;

using kvcache::ConstTensorView;
using kvcache::DType;
using kvcache::LayerSlots;
using kvcache::MlaShape;
using kvcache::TensorView;

TEST(MlaTest, AbsorbedScoreEqualsTheContentScore) {
  // d_c = d_h = 2, W_UK = [[1, 0], [0, 2]], c = (1, 1): k = (1, 2); q = (3, 1): q.k = 5 = (W_UK^T q).c = (3, 2).c.
  const MlaShape s{1, 2, 0, 2, 1};
  const std::vector<float> kv_b = {1, 0, 0, 2, /*W_UV:*/ 1, 1};
  const std::vector<float> q = {3, 1};
  std::vector<float> q_abs(2);
  kvcache::mla_absorb_queries(s, ConstTensorView<float, 2>(kv_b.data(), 3, 2),
                              ConstTensorView<float, 2>(q.data(), 1, 2), TensorView<float, 2>(q_abs.data(), 1, 2));
  EXPECT_EQ(q_abs, (std::vector<float>{3, 2}));
  EXPECT_EQ(q_abs[0] * 1 + q_abs[1] * 1, 5.0f);
}

struct MlaCase {
  MlaShape shape;
  std::int64_t length;
  DType dtype;
  int splits = 1;
};

void check_absorbed_against_naive(const MlaCase& c) {
  const MlaShape& s = c.shape;
  const int H = s.n_heads, rank = s.kv_lora_rank, dv = s.v_head_dim;
  LayerSlots latents(s.attention_shape(), c.length + 3, c.dtype);
  if (c.length > 0) kvtest::fill_random(latents, c.length, 5u + static_cast<std::uint32_t>(c.length));
  const std::int64_t wrows = std::int64_t(H) * (s.qk_nope_head_dim + dv);
  const auto kv_b = kvtest::random_vector(std::size_t(wrows * rank), 7, 1.0f / std::sqrt(float(rank)));
  const auto q = kvtest::random_vector(std::size_t(H * s.query_width()), 9, 1.5f);
  std::vector<float> ref(std::size_t(H * dv)), ref_probs(std::size_t(latents.capacity()), 0.0f);
  const ConstTensorView<float, 2> w(kv_b.data(), wrows, rank);
  kvcache::reference::mla_decode_naive(s, latents, w, ConstTensorView<float, 2>(q.data(), H, s.query_width()),
                                       TensorView<float, 2>(ref.data(), H, dv), ref_probs.data());

  std::vector<float> q_abs(std::size_t(H * s.row_width())), o_lat(std::size_t(H * rank)), out(std::size_t(H * dv));
  std::vector<float> probs(std::size_t(latents.capacity()), 0.0f);
  kvcache::mla_absorb_queries(s, w, ConstTensorView<float, 2>(q.data(), H, s.query_width()),
                              TensorView<float, 2>(q_abs.data(), H, s.row_width()));
  kvcache::DecodeWorkspace ws(s.attention_shape(), latents.capacity(), c.splits, true);
  kvcache::DecodeOptions opt;
  opt.scale = s.softmax_scale();
  opt.max_splits = c.splits;
  opt.probabilities = probs.data();
  opt.probabilities_stride = latents.capacity();
  kvcache::decode_attention(latents, ConstTensorView<float, 2>(q_abs.data(), H, s.row_width()),
                            TensorView<float, 2>(o_lat.data(), H, rank), ws, opt);
  kvcache::mla_apply_values(s, w, ConstTensorView<float, 2>(o_lat.data(), H, rank),
                            TensorView<float, 2>(out.data(), H, dv));
  const std::string what = "heads " + std::to_string(H) + " rank " + std::to_string(rank) + " rope " +
                           std::to_string(s.qk_rope_head_dim) + " len " + std::to_string(c.length) + " " +
                           std::string(kvcache::dtype_name(c.dtype));
  // int8 latents on VNNI round the absorbed queries and the weights to 16 bits (kernels/vnni.hpp).
  const bool vnni = c.dtype == DType::kI8 && H >= 2 && kvcache::vnni_active(kvcache::active_isa());
  EXPECT_LE(kvtest::max_abs_diff(out, ref), vnni ? 1e-3 : 1e-4) << what;
  EXPECT_LE(kvtest::max_abs_diff(probs, ref_probs), (vnni ? 2e-4 : 2e-6) * H) << what;
}

class MlaIsaTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(MlaIsaTest, AbsorbedDecodeMatchesTheNaiveForm) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8}) {
    for (std::int64_t len : {0, 1, 7, 17, 1000}) check_absorbed_against_naive({{4, 96, 16, 48, 64}, len, dt});
    for (int heads : {1, 2, 3, 8}) check_absorbed_against_naive({{heads, 40, 6, 12, 20}, 33, dt});
  }
  check_absorbed_against_naive({{16, 96, 16, 48, 64}, 4099, DType::kBF16, 3});
}

INSTANTIATE_TEST_SUITE_P(Isa, MlaIsaTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

TEST(MlaTest, DeepSeekV2ShapeOnTheActiveIsa) {
  check_absorbed_against_naive({{128, 512, 64, 128, 128}, 100, DType::kBF16});
}

TEST(MlaTest, LatentStorageHoldsOneRowPerToken) {
  const MlaShape s{128, 512, 64, 128, 128};
  LayerSlots latents(s.attention_shape(), 64, DType::kBF16);
  EXPECT_TRUE(latents.values_in_keys());
  EXPECT_EQ(latents.v_stride(), 576);
  EXPECT_EQ(latents.row_bytes(), 576u * 2u);  // DeepSeek-V2: 1152 bytes per token and layer
  kvtest::fill_random(latents, 10, 3);
  EXPECT_EQ(latents.kv_bytes(), 10u * 1152u);
  EXPECT_EQ(latents.v_data(0), latents.k_data(0));
  // Removal compacts the rows (and their positions) as in the GQA layout.
  const std::vector<std::int32_t> drop = {0, 4};
  const auto last = std::vector<kvcache::bf16>(latents.k_rows<kvcache::bf16>(0) + 9 * 576,
                                               latents.k_rows<kvcache::bf16>(0) + 10 * 576);
  latents.remove(0, drop);
  ASSERT_EQ(latents.length(0), 8);
  EXPECT_EQ(latents.positions(0)[0], 9);
  for (int c = 0; c < 576; ++c) ASSERT_EQ(latents.k_rows<kvcache::bf16>(0)[c], last[std::size_t(c)]);
}

TEST(MlaTest, BadInputIsAClearError) {
  expect_error_mentioning([] { MlaShape{4, 96, 15, 48, 64}.validate(); }, "qk_rope_head_dim must be even");
  expect_error_mentioning([] { MlaShape{0, 96, 16, 48, 64}.validate(); }, "n_heads must be positive");
  const MlaShape s{2, 8, 2, 4, 4};
  LayerSlots latents(s.attention_shape(), 4, DType::kF32);
  std::vector<float> k(10), v(8);
  const kvcache::Position pos[1] = {0};
  expect_error_mentioning(
      [&] {
        latents.append(0, ConstTensorView<float, 2>(k.data(), 1, 10), ConstTensorView<float, 2>(v.data(), 1, 8), pos);
      },
      "stores no values");
  expect_error_mentioning([&] { (void)latents.v<float>(0); }, "no separate value rows");
  std::vector<float> w(16 * 8), q(2 * 6), qa(2 * 10);
  expect_error_mentioning(
      [&] {
        kvcache::mla_absorb_queries(s, ConstTensorView<float, 2>(w.data(), 15, 8),
                                    ConstTensorView<float, 2>(q.data(), 2, 6), TensorView<float, 2>(qa.data(), 2, 10));
      },
      "kv_b_proj is [15, 8], expected [16, 8]");
  expect_error_mentioning(
      [&] {
        kvcache::mla_absorb_queries(s, ConstTensorView<float, 2>(w.data(), 16, 8),
                                    ConstTensorView<float, 2>(q.data(), 2, 6), TensorView<float, 2>(qa.data(), 2, 9));
      },
      "absorbed queries are [2, 9]");
}

}  // namespace
