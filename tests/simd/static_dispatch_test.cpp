// Built with KVCACHE_DISPATCH_STATIC and no -m flags: only the scalar kernels exist, so forcing a wider ISA is a
// clear error (whatever the CPU has), and the attention kernels still run.

#include <gtest/gtest.h>

#include <string>

#include "kvcache/kvcache.hpp"
#include "kvcache/testing/testing.hpp"
#include "test_util.hpp"

#if !defined(KVCACHE_DISPATCH_STATIC)
#error "this test must be compiled with KVCACHE_DISPATCH_STATIC"
#endif

namespace {

TEST(StaticDispatchTest, OnlyTheFlagsIsaIsCompiled) {
#if !defined(__AVX2__)
  EXPECT_FALSE(kvcache::isa_compiled(kvcache::Isa::kAvx2));
  EXPECT_FALSE(kvcache::isa_compiled(kvcache::Isa::kAvx512));
  EXPECT_FALSE(kvcache::isa_compiled(kvcache::Isa::kAmx));
  EXPECT_EQ(kvcache::best_isa(), kvcache::Isa::kScalar);
  try {
    kvcache::set_isa_for_testing(kvcache::Isa::kAvx512);
    FAIL() << "forcing AVX-512 in a scalar-only build did not throw";
  } catch (const kvcache::Error& e) {
    EXPECT_NE(std::string(e.what()).find("avx512"), std::string::npos) << e.what();
  }
#endif
}

TEST(StaticDispatchTest, DecodeRuns) {
  kvcache::AttentionShape shape{4, 2, 64, 64};
  kvcache::LayerSlots kv(shape, 64, kvcache::DType::kF16);
  kvtest::fill_random(kv, 33, 5);
  auto q = kvtest::random_vector(4 * 64, 6);
  std::vector<float> out(4 * 64), ref(4 * 64);
  kvcache::DecodeWorkspace ws(shape, 64);
  kvcache::decode_attention(kv, kvcache::ConstTensorView<float, 2>(q.data(), 4, 64),
                            kvcache::TensorView<float, 2>(out.data(), 4, 64), ws);
  kvcache::reference::decode_attention(kv, kvcache::ConstTensorView<float, 2>(q.data(), 4, 64),
                                       kvcache::TensorView<float, 2>(ref.data(), 4, 64));
  EXPECT_LT(kvtest::max_abs_diff(out, ref), 1e-5);
}

}  // namespace
