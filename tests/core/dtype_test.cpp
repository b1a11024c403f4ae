// Element-type conversions: the scalar ones against Eigen's independent implementation (exhaustively for the
// 16-bit -> f32 direction), and every SIMD op set against the scalar bits.

#include "kvcache/core/dtype.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kvcache/simd/convert.hpp"
#include "test_util.hpp"

namespace {

using kvcache::bf16;
using kvcache::f16;

std::uint32_t bits(float f) { return kvcache::detail::f32_bits(f); }

// Floats that stress rounding: ties, halfway points, subnormal boundaries, overflow, specials.
std::vector<float> edge_floats() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          65536.0f,
                          1e10f,
                          -1e10f,
                          6.103515625e-05f,          // smallest normal f16
                          5.9604644775390625e-08f,   // smallest subnormal f16
                          2.98023223876953125e-08f,  // half of it: ties to 0
                          4.4703483581542969e-08f,   // 1.5 x smallest: rounds to 2
                          1e-30f,
                          -1e-30f,
                          1.17549435e-38f,
                          1e-45f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          3.4028235e38f,
                          -3.4028235e38f};
  // Exact ties of f16 (13 dropped bits = 0x1000) and bf16 (16 dropped bits = 0x8000), with odd and even kept lsb.
  for (std::uint32_t base : {0x3f800000u, 0x3f802000u, 0x40490000u, 0x38800000u, 0x477fe000u, 0x3f810000u}) {
    for (std::uint32_t low : {0x1000u, 0x0fffu, 0x1001u, 0x8000u, 0x7fffu, 0x8001u, 0x3000u}) {
      v.push_back(kvcache::detail::bits_f32(base | low));
      v.push_back(-kvcache::detail::bits_f32(base | low));
    }
  }
  // f16 subnormal range, every tie pattern.
  for (std::uint32_t e = 100; e <= 113; ++e)
    for (std::uint32_t m : {0u, 1u, 0x400000u, 0x400001u, 0x3fffffu, 0x7fffffu, 0x600000u, 0x200000u})
      v.push_back(kvcache::detail::bits_f32((e << 23) | m));
  auto r = kvtest::random_vector(20000, 7, 1000.0f);
  v.insert(v.end(), r.begin(), r.end());
  auto s = kvtest::random_vector(20000, 8, 1e-5f);
  v.insert(v.end(), s.begin(), s.end());
  return v;
}

TEST(DTypeTest, F16ToF32IsExactForAllBitPatterns) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float ours = kvcache::f16_bits_to_f32(static_cast<std::uint16_t>(b));
    const float eigen = static_cast<float>(Eigen::numext::bit_cast<f16>(static_cast<std::uint16_t>(b)));
    if (std::isnan(eigen)) {
      ASSERT_TRUE(std::isnan(ours)) << b;
    } else {
      ASSERT_EQ(bits(ours), bits(eigen)) << "f16 bits " << b;
    }
  }
}

TEST(DTypeTest, BF16ToF32IsExactForAllBitPatterns) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float ours = kvcache::bf16_bits_to_f32(static_cast<std::uint16_t>(b));
    ASSERT_EQ(bits(ours), b << 16);
  }
}

TEST(DTypeTest, F32ToF16RoundsToNearestEven) {
  for (float f : edge_floats()) {
    const std::uint16_t ours = kvcache::f32_to_f16_bits(f);
    const std::uint16_t eigen = Eigen::numext::bit_cast<std::uint16_t>(f16(f));
    ASSERT_EQ(ours, eigen) << "f = " << f << " bits " << std::hex << bits(f);
  }
  EXPECT_EQ(kvcache::f32_to_f16_bits(65520.0f), 0x7c00);                  // tie above the largest finite -> infinity
  EXPECT_EQ(kvcache::f32_to_f16_bits(2.98023223876953125e-08f), 0x0000);  // tie at half the smallest -> 0 (even)
  EXPECT_EQ(kvcache::f32_to_f16_bits(1.0f + 1.0f / 2048), 0x3c00);        // tie, lsb 0 stays
  EXPECT_EQ(kvcache::f32_to_f16_bits(1.0f + 3.0f / 2048), 0x3c02);        // tie, lsb 1 rounds up
  const std::uint16_t nan = kvcache::f32_to_f16_bits(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x3ff, 0);
}

TEST(DTypeTest, F32ToBF16RoundsToNearestEven) {
  for (float f : edge_floats()) {
    const std::uint16_t ours = kvcache::f32_to_bf16_bits(f);
    const std::uint16_t eigen = Eigen::numext::bit_cast<std::uint16_t>(bf16(f));
    ASSERT_EQ(ours, eigen) << "f = " << f;
  }
  EXPECT_EQ(kvcache::f32_to_bf16_bits(kvcache::detail::bits_f32(0x3f808000u)), 0x3f80);         // tie, even stays
  EXPECT_EQ(kvcache::f32_to_bf16_bits(kvcache::detail::bits_f32(0x3f818000u)), 0x3f82);         // tie, odd rounds up
  const std::uint16_t nan = kvcache::f32_to_bf16_bits(kvcache::detail::bits_f32(0x7f800001u));  // signalling NaN
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x7f, 0);  // still a NaN after narrowing
}

class SimdConvertTest : public testing::TestWithParam<kvcache::Isa> {};

template <class T>
void expect_simd_matches_scalar(kvcache::Isa isa) {
  const std::vector<float> src = edge_floats();
  // Every length up to 40 exercises the tails, then the whole array.
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{15}, std::size_t{16},
                        std::size_t{17}, std::size_t{33}, src.size()}) {
    std::vector<T> simd(n + 1, kvcache::from_f32<T>(42.0f));
    kvcache::convert(simd.data(), src.data(), n, isa);
    for (std::size_t i = 0; i < n; ++i) {
      const T expect = kvcache::from_f32<T>(src[i]);
      ASSERT_EQ(kvcache::bits_of(simd[i]), kvcache::bits_of(expect)) << "i " << i << " f " << src[i];
    }
    EXPECT_EQ(kvcache::to_f32(simd[n]), 42.0f) << "wrote past the end, n = " << n;
    std::vector<float> back(n + 1, 42.0f);
    kvcache::convert(back.data(), simd.data(), n, isa);
    for (std::size_t i = 0; i < n; ++i) {
      const float expect = kvcache::to_f32(simd[i]);
      if (std::isnan(expect))
        ASSERT_TRUE(std::isnan(back[i]));
      else
        ASSERT_EQ(bits(back[i]), bits(expect));
    }
    EXPECT_EQ(back[n], 42.0f);
  }
}

TEST_P(SimdConvertTest, F16MatchesScalarBits) { expect_simd_matches_scalar<f16>(GetParam()); }
TEST_P(SimdConvertTest, BF16MatchesScalarBits) { expect_simd_matches_scalar<bf16>(GetParam()); }

// The vector quantizer of each op set against kvcache::quantize_row_i8, bit for bit: every tail length, ties (rows
// whose maximum makes the step 1, so that halves occur), zero rows, and rows with a NaN or an infinity. Writes no
// byte past the row.
TEST_P(SimdConvertTest, QuantizeRowI8MatchesScalar) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (std::size_t n : {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 128, 576}) {
    for (int kind = 0; kind < 5; ++kind) {
      std::vector<float> x(n);
      for (auto& e : x) e = u(rng) * 10.0f;
      if (kind == 1) {  // the maximum 127, halves everywhere else: the ties
        for (std::size_t i = 0; i < n; ++i) x[i] = std::round(u(rng) * 126.0f) + (i % 2 ? 0.5f : -0.5f);
        x[n / 2] = 127.0f;
      }
      if (kind == 2) std::fill(x.begin(), x.end(), 0.0f);
      if (kind == 3) x[n - 1] = std::numeric_limits<float>::quiet_NaN();
      if (kind == 4) x[0] = -std::numeric_limits<float>::infinity();
      std::vector<kvcache::i8> want(n + 1, 42), got(n + 1, 42);
      const float ws = kvcache::quantize_row_i8(x.data(), n, want.data());
      const float gs = kvcache::quantize_row_i8(x.data(), n, got.data(), GetParam());
      if (std::isnan(ws))
        EXPECT_TRUE(std::isnan(gs)) << n << " " << kind;
      else
        EXPECT_EQ(bits(gs), bits(ws)) << n << " " << kind;
      EXPECT_EQ(got, want) << n << " " << kind;
      EXPECT_EQ(got[n], 42);
    }
  }
}

TEST_P(SimdConvertTest, F16ToF32AllBitPatterns) {
  std::vector<f16> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = Eigen::numext::bit_cast<f16>(static_cast<std::uint16_t>(b));
  std::vector<float> out(all.size());
  kvcache::convert(out.data(), all.data(), all.size(), GetParam());
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float expect = kvcache::f16_bits_to_f32(static_cast<std::uint16_t>(b));
    if (std::isnan(expect))
      ASSERT_TRUE(std::isnan(out[b]));
    else
      ASSERT_EQ(bits(out[b]), bits(expect)) << b;
  }
}

TEST_P(SimdConvertTest, ExpIsAccurate) {
  std::vector<float> x;
  for (float v = -100.0f; v <= 88.0f; v += 0.0137f) x.push_back(v);
  x.push_back(0.0f);
  x.push_back(-std::numeric_limits<float>::infinity());
  std::vector<float> y(x.size());
  kvcache::exp(y.data(), x.data(), x.size(), GetParam());
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (x[i] < -87.0f) {
      ASSERT_EQ(y[i], 0.0f) << x[i];  // flushed, so masked scores vanish
      continue;
    }
    const double ref = std::exp(static_cast<double>(x[i]));
    ASSERT_NEAR(y[i] / ref, 1.0, 5e-7) << "x = " << x[i];  // about 4 ulp at most
  }
  EXPECT_EQ(y[x.size() - 2], 1.0f);  // exp(0) is exact
  EXPECT_EQ(y.back(), 0.0f);         // exp(-inf)
}

INSTANTIATE_TEST_SUITE_P(Isa, SimdConvertTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

TEST(DTypeTest, ParseNames) {
  EXPECT_EQ(kvcache::parse_dtype("bf16"), kvcache::DType::kBF16);
  EXPECT_THROW(kvcache::parse_dtype("fp8"), kvcache::Error);
  EXPECT_EQ(kvcache::dtype_size(kvcache::DType::kF16), 2u);
  EXPECT_EQ(kvcache::parse_dtype("i8"), kvcache::DType::kI8);
  EXPECT_EQ(kvcache::dtype_size(kvcache::DType::kI8), 1u);
  EXPECT_EQ(kvcache::row_scale_bytes(kvcache::DType::kI8), 4u);
  EXPECT_EQ(kvcache::row_scale_bytes(kvcache::DType::kBF16), 0u);
}

// Symmetric per-row int8: the largest magnitude maps to +-127, every element is within half a step of its value,
// and ties round away from zero.
TEST(DTypeTest, QuantizeRowI8BoundsTheErrorPerRow) {
  for (int n : {1, 3, 16, 17, 128, 1000}) {
    for (float sigma : {1e-3f, 1.0f, 300.0f}) {
      const auto x = kvtest::random_vector(static_cast<std::size_t>(n), 7u + static_cast<std::uint32_t>(n), sigma);
      std::vector<kvcache::i8> q(static_cast<std::size_t>(n));
      const float scale = kvcache::quantize_row_i8(x.data(), x.size(), q.data());
      float amax = 0.0f;
      for (float v : x) amax = std::max(amax, std::fabs(v));
      EXPECT_FLOAT_EQ(scale, amax / 127.0f);
      int top = 0;
      for (int i = 0; i < n; ++i) {
        EXPECT_GE(q[i], -127);
        EXPECT_LE(std::fabs(static_cast<float>(q[i]) * scale - x[i]), scale * 0.5f * (1.0f + 1e-5f)) << n << " " << i;
        top = std::max(top, std::abs(int(q[i])));
      }
      EXPECT_EQ(top, 127);
    }
  }
  const float tie[3] = {127.0f, 0.5f, -1.5f};  // scale 1: 0.5 -> 1 and -1.5 -> -2 (away from zero)
  kvcache::i8 q[4];
  EXPECT_EQ(kvcache::quantize_row_i8(tie, 3, q), 1.0f);
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[1], 1);
  EXPECT_EQ(q[2], -2);
  const float zeros[4] = {0.0f, -0.0f, 0.0f, 0.0f};
  EXPECT_EQ(kvcache::quantize_row_i8(zeros, 4, q), 0.0f);
  EXPECT_EQ(q[0], 0);
  const float bad[3] = {1.0f, std::numeric_limits<float>::infinity(), 2.0f};
  EXPECT_TRUE(std::isnan(kvcache::quantize_row_i8(bad, 3, q)));
  EXPECT_EQ(q[0], 0);
  const float nan[2] = {std::numeric_limits<float>::quiet_NaN(), 2.0f};
  EXPECT_TRUE(std::isnan(kvcache::quantize_row_i8(nan, 2, q)));
}

}  // namespace
