// The reference engines on the bundled tinylm-mla and tinylm-yoco: prefill logits match each model's reference
// logits (an fp32 forward pass over the fp16 weights, MODELS.md) to 1e-3, decoding token by token reproduces the
// prefill logits, and policies with an unlimited budget give Full's logits (YOCO: with both cross-decoder layers
// reading the one global cache).

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/tinylm_mla.hpp"
#include "engine/tinylm_yoco.hpp"
#include "engine_checks.hpp"
#include "test_util.hpp"

namespace {

using enginetest::check_decode_reproduces_prefill;
using enginetest::check_reference_logits;
using enginetest::check_unlimited_budgets;
using enginetest::kModels;
using enginetest::max_abs;

TEST(MlaEngineTest, PrefillMatchesReferenceLogits) { check_reference_logits<engine::TinyLmMla>("tinylm-mla"); }
TEST(MlaEngineTest, DecodeReproducesPrefillAtEveryPosition) {
  check_decode_reproduces_prefill<engine::TinyLmMla>("tinylm-mla");
}
TEST(YocoEngineTest, PrefillMatchesReferenceLogits) { check_reference_logits<engine::TinyLmYoco>("tinylm-yoco"); }
TEST(YocoEngineTest, DecodeReproducesPrefillAtEveryPosition) {
  check_decode_reproduces_prefill<engine::TinyLmYoco>("tinylm-yoco");
}

// Chunked prefill, then decode, past the 256-token window of YOCO's self-decoder, against one long prefill.
TEST(YocoEngineTest, SlidingWindowAcrossChunksAndDecode) {
  engine::TinyLmYoco model(kModels + "/tinylm-yoco.safetensors");
  std::vector<int> tokens;
  for (int i = 0; i < 600; ++i) tokens.push_back("the window slides; "[i % 19]);
  kvcache::KVCache<kvcache::Full> a(model.cache_config(700, kvcache::DType::kF32), kvcache::Full{},
                                    model.cache_options());
  const engine::Matrix full = model.prefill(a, tokens, 0);
  kvcache::KVCache<kvcache::Full> b(model.cache_config(700, kvcache::DType::kF32), kvcache::Full{},
                                    model.cache_options());
  const std::span<const int> all(tokens);
  (void)model.prefill(b, all.first(300), 0, false);
  const engine::Matrix second = model.prefill(b, all.subspan(300, 200), 300);
  EXPECT_LE(max_abs(second, full.middleRows(300, 200)), 1e-3);
  for (std::size_t t = 500; t < 600; ++t) {
    const Eigen::VectorXf step = model.decode(b, tokens[t], kvcache::Position(t));
    ASSERT_LE((step.transpose() - full.row(Eigen::Index(t))).cwiseAbs().maxCoeff(), 1e-3) << "position " << t;
  }
  EXPECT_EQ(model.ring_bytes(), 2u * 256u * 2u * 2u * 64u * 4u);  // 2 layers x 256 tokens x (K + V) x 2 heads x 64
}

TEST(MlaEngineTest, UnlimitedBudgetsGiveFullsLogits) { check_unlimited_budgets<engine::TinyLmMla>("tinylm-mla", true); }
TEST(YocoEngineTest, UnlimitedBudgetsGiveFullsLogits) {
  check_unlimited_budgets<engine::TinyLmYoco>("tinylm-yoco", true);
}

TEST(MlaEngineTest, DmcOnTheLatentLayoutIsAClearError) {
  engine::TinyLmMla model(kModels + "/tinylm-mla.safetensors");
  kvtest::expect_error_mentioning(
      [&] { kvcache::KVCache<kvcache::DMC> c(model.cache_config(64, kvcache::DType::kF16), kvcache::DMC::official()); },
      "latent layout");
}

}  // namespace
