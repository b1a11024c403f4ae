// ISA selection: probe, test hook, the KVCACHE_ISA variable (the env cases run as separate ctest entries, since
// the variable is read once per process).

#include "kvcache/simd/isa.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "kvcache/testing/testing.hpp"

namespace {

TEST(IsaTest, BestIsAvailableAndScalarAlwaysIs) {
  EXPECT_TRUE(kvcache::isa_available(kvcache::Isa::kScalar));
  EXPECT_TRUE(kvcache::isa_available(kvcache::best_isa()));
  EXPECT_FALSE(kvcache::available_isas().empty());
}

TEST(IsaTest, TestHookForcesEveryAvailableIsa) {
  for (kvcache::Isa isa : kvcache::available_isas()) {
    kvcache::set_isa_for_testing(isa);
    EXPECT_EQ(kvcache::active_isa(), isa);
  }
  kvcache::set_isa_for_testing(std::nullopt);
}

TEST(IsaTest, ParseRejectsUnknownNames) {
  EXPECT_EQ(kvcache::parse_isa("avx2"), kvcache::Isa::kAvx2);
  try {
    (void)kvcache::parse_isa("sse9");
    FAIL() << "no throw";
  } catch (const kvcache::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sse9"), std::string::npos) << e.what();
  }
}

TEST(IsaTest, ForcingAnUnavailableIsaIsAClearError) {
  for (kvcache::Isa isa : {kvcache::Isa::kAvx2, kvcache::Isa::kAvx512, kvcache::Isa::kAmx}) {
    if (kvcache::isa_available(isa)) continue;
    EXPECT_THROW(kvcache::set_isa_for_testing(isa), kvcache::Error);
  }
  SUCCEED();
}

// Run by ctest with KVCACHE_ISA set and KVCACHE_TEST_EXPECT naming the expected outcome: an ISA name, or "error".
TEST(IsaEnvTest, EnvironmentVariableChoosesIsa) {
  const char* expect = std::getenv("KVCACHE_TEST_EXPECT");
  if (expect == nullptr) GTEST_SKIP() << "run through ctest with KVCACHE_ISA set";
  const std::string e = expect;
  if (e == "error") {
    try {
      (void)kvcache::active_isa();
      FAIL() << "KVCACHE_ISA=" << std::getenv("KVCACHE_ISA") << " did not throw";
    } catch (const kvcache::Error& err) {
      EXPECT_NE(std::string(err.what()).find("KVCACHE_ISA"), std::string::npos) << err.what();
    }
    return;
  }
  const kvcache::Isa want = kvcache::parse_isa(e);
  if (!kvcache::isa_available(want)) GTEST_SKIP() << e << " not available here";
  EXPECT_EQ(kvcache::active_isa(), want);
#if KVCACHE_HAVE_AMX
  // Naming a vector ISA must not have asked Linux for the AMX tile state (ARCH_GET_XCOMP_PERM, bit 18 XTILEDATA).
  unsigned long long perm = 0;
  if (want != kvcache::Isa::kAmx && syscall(SYS_arch_prctl, 0x1022, &perm) == 0) {
    EXPECT_EQ(perm & (1ull << 18), 0u) << "KVCACHE_ISA=" << e << " requested the AMX tile state";
  }
#endif
}

}  // namespace
