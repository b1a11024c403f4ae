// The reference engines on the bundled tinylm-mla and tinylm-yoco: prefill logits match each model's reference
// logits (an fp32 forward pass over the fp16 weights, MODELS.md) to 1e-3, decoding token by token reproduces the
// prefill logits, and policies with an unlimited budget give Full's logits (YOCO: with both cross-decoder layers
// reading the one global cache).

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/tinylm_mla.hpp"
#include "engine/tinylm_yoco.hpp"
#include "test_util.hpp"

namespace {

const std::string kModels = KVCACHE_MODELS_DIR;

double max_abs(const engine::Matrix& a, const engine::Matrix& b) { return (a - b).cwiseAbs().maxCoeff(); }

struct Reference {
  std::vector<int> prompt;
  engine::Matrix logits;
};
// kind: "reference" (shipped with the models: computed before the weights were rounded to fp16, see
// tools/reference_logits.py) or "reference-fp16" (recomputed from the shipped fp16 weights by that independent
// float64 numpy forward pass).
Reference reference(const std::string& model, const std::string& kind = "reference-fp16") {
  engine::SafeTensors ref(kModels + "/" + model + "." + kind + ".safetensors");
  const auto prompt = ref.i32("prompt");
  const auto logits = ref.f32("logits", {64, 256});
  return {std::vector<int>(prompt.begin(), prompt.end()), Eigen::Map<const engine::Matrix>(logits.data(), 64, 256)};
}

template <class Model>
void check_reference_logits(const std::string& name) {
  Model model(kModels + "/" + name + ".safetensors");
  const Reference ref = reference(name), shipped = reference(name, "reference");
  ASSERT_EQ(ref.prompt, shipped.prompt);
  for (kvcache::DType dt : {kvcache::DType::kF32, kvcache::DType::kF16}) {
    kvcache::KVCache<kvcache::Full> cache(model.cache_config(128, dt), kvcache::Full{}, model.cache_options());
    const engine::Matrix got = model.prefill(cache, ref.prompt, 0);
    // fp32 cache: the same function of the same weights as the float64 reference, up to fp32 rounding: 1e-3. An f16
    // cache also rounds each cached element by up to 2^-11 relative. The shipped reference differs from any forward
    // pass over the fp16 weights by the weights' rounding (0.012 / 0.009 / 0.007 for gqa / mla / yoco): 2e-2.
    EXPECT_LE(max_abs(got, ref.logits), dt == kvcache::DType::kF32 ? 1e-3 : 3e-2) << kvcache::dtype_name(dt);
    EXPECT_LE(max_abs(got, shipped.logits), dt == kvcache::DType::kF32 ? 2e-2 : 5e-2) << kvcache::dtype_name(dt);
  }
}

template <class Model>
void check_decode_reproduces_prefill(const std::string& name) {
  Model model(kModels + "/" + name + ".safetensors");
  const Reference ref = reference(name);
  kvcache::KVCache<kvcache::Full> a(model.cache_config(128, kvcache::DType::kF32), kvcache::Full{},
                                    model.cache_options());
  const engine::Matrix full = model.prefill(a, ref.prompt, 0);
  kvcache::KVCache<kvcache::Full> b(model.cache_config(128, kvcache::DType::kF32), kvcache::Full{},
                                    model.cache_options());
  const engine::Matrix first = model.prefill(b, std::span<const int>(ref.prompt.data(), 1), 0);
  EXPECT_LE((first.row(0) - full.row(0)).cwiseAbs().maxCoeff(), 1e-3);
  for (std::size_t t = 1; t < ref.prompt.size(); ++t) {
    const Eigen::VectorXf step = model.decode(b, ref.prompt[t], kvcache::Position(t));
    ASSERT_LE((step.transpose() - full.row(Eigen::Index(t))).cwiseAbs().maxCoeff(), 1e-3) << "position " << t;
  }
}

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

// Every policy that applies, with a budget above the sequence, leaves the logits exactly as Full's.
template <class Model>
void check_unlimited_budgets(const std::string& name, bool streaming_in_cache) {
  Model model(kModels + "/" + name + ".safetensors");
  std::vector<int> tokens;
  for (char ch : std::string("The cache keeps what matters; the rest can go. ")) tokens.push_back((unsigned char)ch);
  auto run = [&](auto&& cache) {
    engine::Matrix logits = model.prefill(cache, tokens, 0);
    for (int t = 0; t < 8; ++t)
      logits.row(t) = model.decode(cache, 'a' + t, kvcache::Position(tokens.size() + t)).transpose();
    return logits;
  };
  using kvcache::Count;
  const auto cfg = model.cache_config(256, kvcache::DType::kF16);
  const auto opt = model.cache_options();
  const engine::Matrix full = run(kvcache::KVCache<kvcache::Full>(cfg, {}, opt));
  EXPECT_EQ(max_abs(run(kvcache::KVCache<kvcache::H2O>(cfg, kvcache::H2O(Count::of(200), Count::of(50)), opt)), full),
            0.0);
  EXPECT_EQ(
      max_abs(run(kvcache::KVCache<kvcache::VATP>(cfg, kvcache::VATP(Count::of(200), Count::of(50), 4), opt)), full),
      0.0);
  EXPECT_EQ(max_abs(run(kvcache::KVCache<kvcache::L2Norm>(cfg, kvcache::L2Norm(Count::of(250), {}), opt)), full), 0.0);
  EXPECT_EQ(max_abs(run(kvcache::KVCache<kvcache::SnapKV>(cfg, kvcache::SnapKV(Count::of(250), 8, 7), opt)), full),
            0.0);
  kvcache::StreamingLLM s(4, 240);
  if (!streaming_in_cache) s.positions = kvcache::StreamingLLM::Positions::kOriginal;
  EXPECT_EQ(max_abs(run(kvcache::KVCache<kvcache::StreamingLLM>(cfg, s, opt)), full), 0.0);
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
