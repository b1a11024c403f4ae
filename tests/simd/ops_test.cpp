// The op sets' multi-vector reductions and transposes against plain loops, on every op set this CPU runs (the
// decode kernel uses reduce_add_16 and transpose_16x8 only on 16 lanes; the narrower sets keep the contract;
// reduce_add_4 serves every set).

#include <gtest/gtest.h>

#include <array>

#include "kvcache/simd/avx2.hpp"
#include "kvcache/simd/avx512.hpp"
#include "kvcache/simd/isa.hpp"
#include "kvcache/simd/scalar.hpp"
#include "kvcache/simd/target.hpp"

namespace {

// in: 16 rows of 16 floats. sums[i] and sums4[i] = the sum of row i (from reduce_add_16, and from reduce_add_4 on
// rows 4j .. 4j + 3); cols[h * 16 + i] = in[i * 8 + h] for h < 8, i < 16.
struct Out {
  std::array<float, 16> sums{}, sums4{};
  std::array<float, 128> cols{};
};

// clang-format off
#define KVTEST_OPS_BODY                                                                  \
  inline Out run(const float* in) noexcept {                                            \
    Out out;                                                                             \
    Vec v[16];                                                                           \
    for (int i = 0; i < 16; ++i) {                                                       \
      Vec acc = zero();                                                                  \
      for (int c = 0; c < 16; c += kLanes) acc = add(acc, load(in + 16 * i + c));       \
      v[i] = acc; /* lane sums of row i add up to the row's sum */                       \
    }                                                                                    \
    reduce_add_16(v, out.sums.data());                                                   \
    for (int j = 0; j < 16; j += 4)                                                      \
      reduce_add_4(v[j], v[j + 1], v[j + 2], v[j + 3], out.sums4.data() + j);            \
    transpose_16x8(in, out.cols.data(), 16);                                             \
    return out;                                                                          \
  }
// clang-format on

namespace ops_scalar {
using namespace kvcache::simd::scalar;
KVTEST_OPS_BODY
}  // namespace ops_scalar
#if KVCACHE_HAVE_AVX2
KVCACHE_TARGET_AVX2_BEGIN
namespace ops_avx2 {
using namespace kvcache::simd::avx2;
KVTEST_OPS_BODY
}  // namespace ops_avx2
KVCACHE_TARGET_END
#endif
#if KVCACHE_HAVE_AVX512
KVCACHE_TARGET_AVX512_BEGIN
namespace ops_avx512 {
using namespace kvcache::simd::avx512;
KVTEST_OPS_BODY
}  // namespace ops_avx512
KVCACHE_TARGET_END
#endif

void check(const Out& out, const float* in, const char* isa) {
  for (int i = 0; i < 16; ++i) {
    float want = 0.0f;
    for (int c = 0; c < 16; ++c) want += in[16 * i + c];
    EXPECT_EQ(out.sums[std::size_t(i)], want) << isa << " sum of row " << i;  // small integers: exact in any order
    EXPECT_EQ(out.sums4[std::size_t(i)], want) << isa << " reduce_add_4, row " << i;
  }
  for (int h = 0; h < 8; ++h)
    for (int i = 0; i < 16; ++i)
      EXPECT_EQ(out.cols[std::size_t(h * 16 + i)], in[i * 8 + h]) << isa << " column " << h << " row " << i;
}

TEST(SimdOpsTest, ReductionsAndTranspose16x8MatchPlainLoops) {
  std::array<float, 256> in{};
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>((i * 37 + 11) % 101) - 50.0f;
  check(ops_scalar::run(in.data()), in.data(), "scalar");
#if KVCACHE_HAVE_AVX2
  if (kvcache::isa_available(kvcache::Isa::kAvx2)) check(ops_avx2::run(in.data()), in.data(), "avx2");
#endif
#if KVCACHE_HAVE_AVX512
  if (kvcache::isa_available(kvcache::Isa::kAvx512)) check(ops_avx512::run(in.data()), in.data(), "avx512");
#endif
}

}  // namespace
