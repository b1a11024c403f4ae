// RoPE scaling: the inverse frequencies of the published configs against values computed from the published formulas
// (Hugging Face transformers' modeling_rope_utils, evaluated independently in double precision), and a shift that
// rotates by delta x the scaled frequencies.

#include "kvcache/core/rope.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "test_util.hpp"

namespace {

using kvcache::RopeConfig;
using kvcache::RopeScaling;

// Llama-3.1-8B: head_dim 128, rope_theta 500000, rope_scaling {rope_type llama3, factor 8, low_freq_factor 1,
// high_freq_factor 4, original_max_position_embeddings 8192}.
RopeConfig llama31() {
  RopeConfig c;
  c.base = 500000.0;
  c.scaling = RopeScaling::kLlama3;
  c.factor = 8.0;
  c.low_freq_factor = 1.0;
  c.high_freq_factor = 4.0;
  c.original_max_position_embeddings = 8192;
  return c;
}

// DeepSeek-V2-Lite: qk_rope_head_dim 64, rope_theta 10000, rope_scaling {type yarn, factor 40, beta_fast 32,
// beta_slow 1, mscale 0.707, mscale_all_dim 0.707, original_max_position_embeddings 4096}.
RopeConfig deepseek_v2_lite() {
  RopeConfig c;
  c.base = 10000.0;
  c.scaling = RopeScaling::kYarn;
  c.factor = 40.0;
  c.beta_fast = 32.0;
  c.beta_slow = 1.0;
  c.mscale = 0.707;
  c.mscale_all_dim = 0.707;
  c.original_max_position_embeddings = 4096;
  return c;
}

void expect_relative(double got, double want, const char* what, int i) {
  EXPECT_NEAR(got / want, 1.0, 1e-12) << what << " pair " << i << ": " << got << " vs " << want;
}

TEST(RopeTest, Llama31InverseFrequencies) {
  const auto f = kvcache::rope_inv_freq(llama31(), 128);
  ASSERT_EQ(f.size(), 64u);
  // Pairs 0 - 20 keep their frequency (wavelength under 2048), 30 is blended, 40 and up are divided by 8.
  const std::vector<std::pair<int, double>> table = {
      {0, 1.0},
      {10, 0.12868737343265052},
      {20, 0.016560440080994446},
      {30, 0.0013718935677611381},
      {40, 3.428102195952591e-05},
      {44, 1.509621717643313e-05},
      {46, 1.0017868402809974e-05},
      {50, 4.411534674558404e-06},
      {63, 3.068925988914511e-07},
  };
  for (auto [i, want] : table) expect_relative(f[std::size_t(i)], want, "llama3", i);
  EXPECT_EQ(kvcache::rope_attention_factor(llama31()), 1.0);
}

TEST(RopeTest, DeepSeekV2LiteYarnInverseFrequencies) {
  const auto f = kvcache::rope_inv_freq(deepseek_v2_lite(), 64);
  ASSERT_EQ(f.size(), 32u);
  // The ramp runs from pair 10 (original frequency) to 23 (divided by 40).
  const std::vector<std::pair<int, double>> table = {
      {0, 1.0},
      {5, 0.23713737056616552},
      {10, 0.05623413251903491},
      {11, 0.03900692656714386},
      {15, 0.008334508951020777},
      {20, 0.0007905694150420946},
      {25, 1.8747355233311396e-05},
      {31, 3.3338035804083097e-06},
  };
  for (auto [i, want] : table) expect_relative(f[std::size_t(i)], want, "yarn", i);
  // mscale == mscale_all_dim: no factor on cos / sin; the softmax scale takes (0.1 x 0.707 x ln 40 + 1)^2.
  EXPECT_NEAR(kvcache::rope_attention_factor(deepseek_v2_lite()), 1.0, 1e-15);
  EXPECT_NEAR(kvcache::rope_softmax_scale_factor(deepseek_v2_lite()), 1.5896261651208736, 1e-12);
  RopeConfig plain = deepseek_v2_lite();
  plain.mscale = plain.mscale_all_dim = 0.0;
  EXPECT_NEAR(kvcache::rope_attention_factor(plain), 1.3688879454113936, 1e-12);  // 0.1 ln 40 + 1
  EXPECT_EQ(kvcache::rope_softmax_scale_factor(plain), 1.0);
}

TEST(RopeTest, LinearAndDynamicScaling) {
  RopeConfig c;
  c.base = 10000.0;
  const auto plain = kvcache::rope_inv_freq(c, 64);
  c.scaling = RopeScaling::kLinear;
  c.factor = 4.0;
  const auto linear = kvcache::rope_inv_freq(c, 64);
  for (std::size_t i = 0; i < plain.size(); ++i) expect_relative(linear[i], plain[i] / 4.0, "linear", int(i));
  // Dynamic NTK: unscaled up to M tokens; at 2M, base x (2 factor - factor + 1)^(64 / 62).
  c.scaling = RopeScaling::kDynamic;
  c.original_max_position_embeddings = 2048;
  const auto short_seq = kvcache::rope_inv_freq(c, 64, 2048);
  for (std::size_t i = 0; i < plain.size(); ++i) expect_relative(short_seq[i], plain[i], "dynamic at M", int(i));
  const auto long_seq = kvcache::rope_inv_freq(c, 64, 4096);
  const double base = 10000.0 * std::pow(5.0, 64.0 / 62.0);
  for (int i = 0; i < 32; ++i) expect_relative(long_seq[std::size_t(i)], std::pow(base, -2.0 * i / 64), "dynamic", i);
}

TEST(RopeTest, ShiftRotatesByTheScaledFrequencies) {
  const kvcache::Rope rope(llama31(), 128);
  std::vector<float> x = kvtest::random_vector(128, 3);
  const std::vector<float> raw = x;
  const double delta = 12345.0;
  rope.shift(x.data(), delta);
  const auto& f = rope.inv_freq();
  for (int i = 0; i < 64; ++i) {  // rotate-half pairs (i, i + 64)
    const double c = std::cos(delta * f[std::size_t(i)]), s = std::sin(delta * f[std::size_t(i)]);
    EXPECT_NEAR(x[std::size_t(i)], raw[std::size_t(i)] * c - raw[std::size_t(i + 64)] * s, 1e-5);
    EXPECT_NEAR(x[std::size_t(i + 64)], raw[std::size_t(i)] * s + raw[std::size_t(i + 64)] * c, 1e-5);
  }
}

TEST(RopeTest, BadScalingIsAnError) {
  RopeConfig c = llama31();
  c.original_max_position_embeddings = 0;
  kvtest::expect_error_mentioning([&] { (void)kvcache::rope_inv_freq(c, 128); }, "original_max_position_embeddings");
  c = llama31();
  c.factor = 0.5;
  kvtest::expect_error_mentioning([&] { (void)kvcache::rope_inv_freq(c, 128); }, "factor must be >= 1, got 0.5");
  c = llama31();
  c.high_freq_factor = 0.5;
  kvtest::expect_error_mentioning([&] { (void)kvcache::rope_inv_freq(c, 128); }, "high_freq_factor");
}

}  // namespace
