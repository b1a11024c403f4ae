// GQA: how sharing K/V heads shrinks the cache (docs/architectures.md), and what the policies do on top of it.
//
// 1. KV bytes per token for MHA, GQA and MQA on the published Llama-3-8B config (32 layers, 32 query heads, 8 KV
//    heads of 128) and on the bundled tinylm-gqa (6 layers, 6 query / 2 KV heads of 64), computed from the configs;
//    tinylm-gqa's number is checked against the bytes the library's cache actually holds.
// 2. tinylm-gqa's quality under each policy at the budgets the mla and yoco examples use too.
//
//   gqa [--short]

#include <cstdio>

#include "engine/architecture_example.hpp"
#include "engine/cli.hpp"
#include "engine/tinylm_gqa.hpp"

int main(int argc, char** argv) try {
  engine::QualityOptions q;
  q.short_mode = engine::short_flag_only(
      "GQA: KV bytes per token of MHA, GQA and MQA, and tinylm-gqa under the policies", argc, argv);
  engine::TinyLmGqa model(KVCACHE_EXAMPLES_DIR "/models/tinylm-gqa.safetensors");
  const int L = model.n_layers(), hq = model.n_heads(), hkv = model.n_kv_heads(), d = model.head_dim();
  std::printf(
      "## GQA: KV bytes per token\n\nOne cached token holds a key and a value per layer and KV head; GQA "
      "shares each KV head among a group of query heads, MQA among all of them.\n\n");
  engine::print_layouts({engine::mha_like("Llama-3-8B", "MHA (32 KV heads)", 32, 32, 128),
                         engine::mha_like("Llama-3-8B", "GQA (8 KV heads, as published)", 32, 8, 128),
                         engine::mha_like("Llama-3-8B", "MQA (1 KV head)", 32, 1, 128),
                         engine::mha_like("tinylm-gqa", "MHA (6 KV heads)", L, hq, d),
                         engine::mha_like("tinylm-gqa", "GQA (2 KV heads, as trained)", L, hkv, d),
                         engine::mha_like("tinylm-gqa", "MQA (1 KV head)", L, 1, d)},
                        {4096, 32768});
  const double computed = 2.0 * 2.0 * L * hkv * d, measured = engine::measured_bytes_per_token(model, 64);
  std::printf("\ntinylm-gqa, f16: computed %.0f bytes per token, the library's cache holds %.0f.\n", computed,
              measured);
  engine::require_bytes_match("tinylm-gqa", computed, measured);
  std::printf("\n## tinylm-gqa under the policies\n");
  engine::print_quality(model, q);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "gqa: %s\n", e.what());
  return 1;
}
