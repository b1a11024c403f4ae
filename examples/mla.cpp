// MLA (DeepSeek-V2, docs/architectures.md): one latent row per token and layer, shared by every head, instead of a key
// and a value per head; attention runs absorbed (attention/mla.hpp).
//
// 1. KV bytes per token on the published DeepSeek-V2 config (60 layers, 128 heads, kv_lora_rank 512, RoPE key 64,
//    head dims 128) and on the bundled tinylm-mla (4 layers, 4 heads, latent 96 + RoPE 16), against what MHA with the
//    same heads would cache, both as the paper counts it (2 n_h d_h per layer) and as DeepSeek's naive path
//    materialises it (per-head keys [nope | rope] and values); tinylm-mla's number is checked against the cache.
// 2. tinylm-mla's quality under each policy at the budgets the gqa and yoco examples use. A policy sees one latent
//    row per layer, scored by all heads together; StreamingLLM's in-cache positions re-rotate only the RoPE tail of
//    a row; DMC does not run (it merges per-head pre-RoPE keys, which MLA lacks).
//
//   mla [--short]

#include <cstdio>

#include "engine/architecture_example.hpp"
#include "engine/cli.hpp"
#include "engine/tinylm_mla.hpp"

namespace {

std::vector<engine::Layout> mla_rows(const std::string& name, int layers, const kvcache::MlaShape& s) {
  const int h = s.n_heads, dn = s.qk_nope_head_dim, dr = s.qk_rope_head_dim, dv = s.v_head_dim;
  const auto l = std::to_string(layers);
  return {
      {name, "MLA latent (as published)", double(layers) * s.row_width(), 0,
       l + " x (" + std::to_string(s.kv_lora_rank) + " + " + std::to_string(dr) + ")"},
      {name, "MHA, paper's count", 2.0 * layers * h * dv, 0,
       l + " x 2 x " + std::to_string(h) + " x " + std::to_string(dv)},
      {name, "MHA, naive decompressed", double(layers) * h * (dn + dr + dv), 0,
       l + " x " + std::to_string(h) + " x (" + std::to_string(dn + dr) + " + " + std::to_string(dv) + ")"},
  };
}

}  // namespace

int main(int argc, char** argv) try {
  engine::QualityOptions q;
  q.short_mode = engine::short_flag_only(
      "MLA: KV bytes per token of the latent layout, and tinylm-mla under the policies", argc, argv);
  engine::TinyLmMla model(KVCACHE_EXAMPLES_DIR "/models/tinylm-mla.safetensors");
  std::printf("## MLA: KV bytes per token\n\n");
  auto rows = mla_rows("DeepSeek-V2", 60, kvcache::MlaShape{128, 512, 64, 128, 128});
  const auto tiny = mla_rows("tinylm-mla", model.n_layers(), model.mla_shape());
  rows.insert(rows.end(), tiny.begin(), tiny.end());
  engine::print_layouts(rows, {4096, 32768});
  std::printf(
      "\nDeepSeek-V2: 576 / (2 x 128) = 2.25, the paper's \"equal to GQA with only 2.25 groups\"; the latent is "
      "%.1f%% of the paper's MHA count and %.1f%% of what the naive path caches.\n",
      100.0 * 576 / (2 * 128 * 128), 100.0 * 576 / (128 * (192 + 128)));
  const double computed = 2.0 * model.n_layers() * model.mla_shape().row_width();
  const double measured = engine::measured_bytes_per_token(model, 64);
  std::printf("tinylm-mla, f16: computed %.0f bytes per token, the library's cache holds %.0f.\n", computed, measured);
  engine::require_bytes_match("tinylm-mla", computed, measured);
  std::printf("\n## tinylm-mla under the policies\n");
  engine::print_quality(model, q);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "mla: %s\n", e.what());
  return 1;
}
