// The reference engine on the bundled tinylm-gqa: prefill logits match the model's reference logits, decoding token
// by token reproduces the prefill logits, every policy with an unlimited budget gives Full's logits, and malformed
// model files are clear errors.

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "engine/tinylm_gqa.hpp"
#include "engine_checks.hpp"
#include "test_util.hpp"

namespace {

using enginetest::kModels;

TEST(EngineTest, PrefillMatchesReferenceLogits) { enginetest::check_reference_logits<engine::TinyLmGqa>("tinylm-gqa"); }
TEST(EngineTest, DecodeReproducesPrefillAtEveryPosition) {
  enginetest::check_decode_reproduces_prefill<engine::TinyLmGqa>("tinylm-gqa");
}
TEST(EngineTest, UnlimitedBudgetsGiveFullsLogits) {
  enginetest::check_unlimited_budgets<engine::TinyLmGqa>("tinylm-gqa", /*streaming_in_cache=*/true);
}

std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string path = testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(EngineTest, MalformedFilesAreClearErrors) {
  using kvtest::expect_error_mentioning;
  const std::string good = read_all(kModels + "/tinylm-gqa.safetensors");
  auto header = [](const std::string& json) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[std::size_t(i)] = char((json.size() >> (8 * i)) & 0xff);
    return s + json;
  };
  expect_error_mentioning([&] { engine::SafeTensors(write_temp("short", "abc")); }, "too short");
  expect_error_mentioning([&] { engine::SafeTensors(write_temp("trunc", good.substr(0, good.size() / 2))); },
                          "truncated?");
  expect_error_mentioning([&] { engine::SafeTensors(write_temp("hdr", good.substr(0, 100))); }, "header");
  expect_error_mentioning([&] { engine::SafeTensors(write_temp("json", header("{not json"))); }, "malformed JSON");
  expect_error_mentioning(
      [&] {
        engine::SafeTensors(write_temp("range", header(R"({"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}})")));
      },
      "data section has 0 bytes");
  expect_error_mentioning(
      [&] {
        engine::SafeTensors(write_temp(
            "size", header(R"({"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})") + std::string(8, '\0')));
      },
      "has 8 bytes for shape [3]");
  expect_error_mentioning(
      [&] {
        engine::SafeTensors(write_temp(
            "dtype", header(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})") + std::string(8, '\0')));
      },
      "unsupported dtype F64");
  expect_error_mentioning([&] { engine::TinyLmGqa(kModels + "/tinylm-mla.safetensors"); }, "not gqa");
  expect_error_mentioning([&] { engine::TinyLmGqa(kModels + "/missing.safetensors"); }, "cannot open");
}

}  // namespace
