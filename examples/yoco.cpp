// YOCO (Sun et al. 2024, docs/architectures.md): the self-decoder keeps only fixed-size state (sliding-window rings
// here), and one global K/V, written once per token, is read by every cross-decoder layer.
//
// 1. KV bytes per token on the published YOCO-3B config (26 layers, 24 query / 8 KV heads of 128; its self-decoder
//    is gated retention by default, a d x d state per head) and on the bundled tinylm-yoco (2 sliding-window layers
//    with 256-token rings, 2 cross-decoder layers, 2 KV heads of 64), against a Transformer of the same shape that
//    caches K/V in every layer; tinylm-yoco's growing part is checked against the cache.
// 2. tinylm-yoco's quality under each policy at the budgets the gqa and mla examples use. The policy compresses the
//    one global cache, with scores summed over both cross-decoder layers that read it (KVCacheOptions::readers).
//
//   yoco [--short]

#include <cstdio>

#include "engine/architecture_example.hpp"
#include "engine/cli.hpp"
#include "engine/tinylm_yoco.hpp"

int main(int argc, char** argv) try {
  engine::QualityOptions q;
  q.short_mode = engine::short_flag_only(
      "YOCO: KV bytes per token of one shared global cache, and tinylm-yoco under the policies", argc, argv);
  engine::TinyLmYoco model(KVCACHE_EXAMPLES_DIR "/models/tinylm-yoco.safetensors");
  const auto shape = model.cache_config(1, kvcache::DType::kF16).shape;
  const int hkv = shape.n_kv_heads, d = shape.head_dim_k, self = model.n_self_layers();
  const int layers = self + model.n_cross_layers();
  const double ring = 2.0 * self * double(model.window()) * hkv * d;  // elements, fixed
  std::printf(
      "## YOCO: KV bytes per token\n\nThe global cache grows with the context; the self-decoder's state does "
      "not (\"fixed\" below: gated-retention states of YOCO-3B, 13 layers x 24 heads x 128 x 128, counted "
      "here at 16 bits like the rest; sliding-window rings of tinylm-yoco).\n\n");
  engine::Layout yoco3b{"YOCO-3B", "YOCO (global K/V + retention)", 2.0 * 8 * 128, 13.0 * 24 * 128 * 128,
                        "2 x 8 x 128, once for all 26 layers"};
  engine::Layout tiny{"tinylm-yoco", "YOCO (global K/V + SWA rings)", 2.0 * hkv * d, ring,
                      "2 x " + std::to_string(hkv) + " x " + std::to_string(d) + ", once for all " +
                          std::to_string(layers) + " layers"};
  engine::print_layouts({yoco3b, engine::mha_like("YOCO-3B", "GQA Transformer, same shape", 26, 8, 128),
                         engine::mha_like("YOCO-3B", "MHA Transformer, same shape", 26, 24, 128), tiny,
                         engine::mha_like("tinylm-yoco", "GQA Transformer, same shape", layers, hkv, d)},
                        {4096, 32768, 1 << 20});
  std::printf(
      "\nYOCO-3B's global cache is 26x smaller per token than the same-shape GQA Transformer's; its fixed "
      "retention state equals the growing cache of %.0f tokens.\n",
      yoco3b.fixed / yoco3b.per_token);
  const double computed = 2.0 * 2.0 * hkv * d, measured = engine::measured_bytes_per_token(model, 64);
  std::printf(
      "tinylm-yoco, f16: computed %.0f bytes per token in the global cache, the library's cache holds %.0f; "
      "the rings hold %.0f bytes at most.\n",
      computed, measured, 2 * ring);
  engine::require_bytes_match("tinylm-yoco", computed, measured);
  std::printf("\n## tinylm-yoco under the policies\n");
  engine::print_quality(model, q);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "yoco: %s\n", e.what());
  return 1;
}
