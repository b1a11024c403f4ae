// Configuration validation and the error type.

#include "kvcache/core/config.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

std::string error_of(const kvcache::AttentionShape& s) {
  try {
    s.validate();
  } catch (const kvcache::Error& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, ValidShapes) {
  EXPECT_EQ(error_of({32, 8, 128, 0}), "");
  EXPECT_EQ((kvcache::AttentionShape{32, 8, 128, 0}.group_size()), 4);
  EXPECT_EQ((kvcache::AttentionShape{32, 8, 128, 0}.dim_v()), 128);
  EXPECT_EQ((kvcache::AttentionShape{32, 1, 192, 128}.dim_v()), 128);
}

TEST(ConfigTest, ErrorsNameTheBadValue) {
  EXPECT_EQ(error_of({0, 1, 64, 64}), "kvcache: n_q_heads must be positive, got 0");
  EXPECT_EQ(error_of({32, 6, 64, 64}), "kvcache: n_kv_heads = 6 does not divide n_q_heads = 32");
  EXPECT_NE(error_of({8, 8, 0, 64}).find("head_dim_k must be in [1, 1024], got 0"), std::string::npos);
  EXPECT_NE(error_of({8, 8, 64, -1}).find("got -1"), std::string::npos);
  kvcache::CacheConfig c{2, {8, 2, 64, 64}, 0, kvcache::DType::kF16};
  EXPECT_THROW(c.validate(), kvcache::Error);
  c.capacity = 10;
  c.n_layers = -1;
  try {
    c.validate();
    FAIL();
  } catch (const kvcache::Error& e) {
    EXPECT_STREQ(e.what(), "kvcache: n_layers must be positive, got -1");
  }
}

}  // namespace
