#pragma once

// What gqa.cpp, mla.cpp and yoco.cpp share: KV bytes per token of an attention layout, computed from a config, and
// a bundled model's quality under the policies at the same budgets (teacher-forced bits per byte on windows of the
// validation text, as kvcache-eval's lm task).

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/policy_by_name.hpp"
#include "engine/tasks.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

/// Cache elements per token of one model, by layout. Fixed parts (a sliding-window ring, a recurrent state) do not
/// grow with the context and are counted separately.
struct Layout {
  std::string model, layout;
  double per_token = 0;  ///< elements per token, all layers
  double fixed = 0;      ///< elements independent of the context
  std::string formula;
};

inline Layout mha_like(const std::string& model, const std::string& layout, int layers, int kv_heads, int head_dim) {
  return {model, layout, 2.0 * layers * kv_heads * head_dim, 0,
          std::to_string(layers) + " x 2 x " + std::to_string(kv_heads) + " x " + std::to_string(head_dim)};
}

/// Prints the layouts: elements and bytes per token (2 bytes per element: bf16/f16), and the bytes one sequence
/// holds at each context length (fixed parts included).
inline void print_layouts(const std::vector<Layout>& rows, const std::vector<long long>& contexts) {
  std::printf("| model | layout | elements per token | formula | bytes per token (16-bit) |");
  for (long long c : contexts) std::printf(" MiB at %lldk |", c / 1024);
  std::printf("\n|---|---|---|---|---|");
  for (std::size_t i = 0; i < contexts.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const Layout& r : rows) {
    std::printf("| %s | %s | %.0f | %s | %.0f |", r.model.c_str(), r.layout.c_str(), r.per_token, r.formula.c_str(),
                2 * r.per_token);
    for (long long c : contexts) std::printf(" %.1f |", 2 * (r.per_token * double(c) + r.fixed) / (1 << 20));
    std::printf("\n");
  }
}

/// The bytes the library's cache holds for a prompt of n tokens under Full, per token: the measured side of the
/// computed tables.
template <class Model>
double measured_bytes_per_token(Model& model, std::int64_t n) {
  kvcache::KVCache<kvcache::Full> cache(model.cache_config(n, kvcache::DType::kF16), {}, model.cache_options());
  std::vector<int> tokens(static_cast<std::size_t>(n), 'a');
  (void)model.prefill(cache, tokens, 0);
  return double(cache.kv_bytes()) / double(n);
}

/// Throws a kvcache::Error when the cache's byte accounting disagrees with the layout computed from the config.
inline void require_bytes_match(const char* model, double computed, double measured) {
  KVCACHE_REQUIRE(std::abs(computed - measured) <= 0.5, model, ": the layout says ", computed,
                  " bytes per token, the cache holds ", measured);
}

struct QualityOptions {
  bool short_mode = false;
  std::vector<std::string> policies = {"full", "streaming_llm", "h2o", "vatp", "l2_norm", "snapkv", "fastgen"};
  std::vector<double> budgets = {0.25, 0.5};
};

/// Bits per byte of the model on windows of the bundled validation text under each policy and budget (the same
/// budgets for every model).
template <class Model>
void print_quality(Model& model, const QualityOptions& o) {
  const std::string text = read_text(KVCACHE_EXAMPLES_DIR "/data/val-dev.txt");
  const std::int64_t length = o.short_mode ? 192 : 1024, prefix = length / 2;
  const int n = o.short_mode ? 1 : 2;
  std::vector<std::vector<int>> windows;
  for (std::size_t at : draw_offsets(text, length, n, 1)) windows.push_back(byte_window(text, at, length));
  const auto cfg = model.cache_config(length + 8, kvcache::DType::kF16);
  std::printf(
      "\n%s on %d window(s) of %lld bytes of the validation text: prompt %lld bytes, then teacher-forced decoding "
      "with the policy active; budget = rows per cache layer and KV head as a fraction of the window; f16 cache.\n\n",
      model.name(), n, static_cast<long long>(length), static_cast<long long>(prefix));
  std::printf("| policy | budget | bits/byte | vs full | mean KV bytes | of full |\n|---|---|---|---|---|---|\n");
  double full_bpb = 0, full_kv = 0;
  for (const auto& p : o.policies) {
    // Full once; FastGen has no budget but a recovery threshold T (0.95, its paper's middle setting).
    const std::vector<double> budgets = p == "full"      ? std::vector<double>{1.0}
                                        : p == "fastgen" ? std::vector<double>{0.95}
                                                         : o.budgets;
    for (double b : budgets) {
      TaskStats s;
      for (const auto& w : windows)
        with_policy(p, b, length, model, cfg, [&](auto& cache) { language_model(model, cache, w, prefix, s); });
      if (p == "full") full_bpb = s.bits_per_byte(), full_kv = s.mean_kv_bytes();
      const std::string label = p == "fastgen" ? "T=0.95" : std::to_string(int(b * 100 + 0.5)) + "%";
      std::printf("| %s | %s | %.4f | %+.4f | %.0f | %.2f |\n", p.c_str(), label.c_str(), s.bits_per_byte(),
                  s.bits_per_byte() - full_bpb, s.mean_kv_bytes(), s.mean_kv_bytes() / full_kv);
      std::fflush(stdout);
    }
  }
}

}  // namespace engine
