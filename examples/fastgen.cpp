// FastGen (Ge et al., ICLR 2024, "Model Tells You What to Discard: Adaptive KV Cache Compression for LLMs"): each
// head gets, from how it attends to the prompt, the cheapest of special / +punctuation / +frequent / +local / full
// that recovers a fraction T of its attention; memory and quality against the full cache.
//
// Language modelling on the bundled tinylm-gqa: windows of 2048 bytes, the first 512 prefilled (and profiled), the
// rest decoded byte by byte with each head's policy active. Token classes for a byte-level model: the first 4 bytes
// are the special tokens, whitespace and ASCII punctuation bytes are punctuation (engine/tasks.hpp). r_l = r_f = 0.3.
// Run: ./build/release/examples/fastgen [--short] [--model FILE] [--text FILE] (--help lists them)

#include <array>
#include <cstdio>

#include "engine/paper_example.hpp"

int main(int argc, char** argv) try {
  using namespace kvcache;
  auto ex = engine::PaperExample::from_args(
      "FastGen (Ge et al., 2024): a policy per head chosen from the prompt, at T = 0.90, 0.95, 0.98", argc, argv);
  engine::print_claim("Model Tells You What to Discard: Adaptive KV Cache Compression for LLMs (Ge et al., 2024)",
                      "profiling each head's attention to the prompt and giving it the cheapest policy that recovers "
                      "T of it cuts the KV cache with little loss in quality (about 20% on 7B models, 40% on 65B, at "
                      "T = 0.95 - 0.98).");
  const std::int64_t length = ex.short_mode ? 768 : 2048, prefix = ex.short_mode ? 256 : 512;
  const auto windows = ex.windows(ex.short_mode ? 1 : 3, length);
  const auto cfg = ex.model.cache_config(length + 8, DType::kF16);
  const auto full = ex.language_model(windows, prefix, "full", [&] { return KVCache<Full>(cfg); });

  std::printf("%zu window(s) of %lld bytes, %lld prefilled; full cache: %.4f bits/byte.\n\n", windows.size(),
              static_cast<long long>(length), static_cast<long long>(prefix), full.bits_per_byte());
  std::printf("| T | bits/byte | vs full | mean KV / full | heads: special, +punct, +frequent, +local, full |\n");
  std::printf("|---|---|---|---|---|\n");
  double kv_at_95 = 1, loss_at_95 = 1;
  for (double t : {0.90, 0.95, 0.98}) {
    std::array<int, FastGen::kChoices> heads{};
    const auto s = ex.language_model(windows, prefix, "fastgen", [&] {
      return KVCache<FastGen>(cfg, FastGen(t, engine::byte_token_classes(ex.model)));
    });
    // The choices of the last window's cache (each window is profiled afresh).
    KVCache<FastGen> probe(cfg, FastGen(t, engine::byte_token_classes(ex.model)));
    ex.model.prefill(probe, std::span<const int>(windows.back().data(), std::size_t(prefix)), 0);
    for (int l = 0; l < cfg.n_layers; ++l)
      for (int h = 0; h < cfg.shape.n_kv_heads; ++h)
        heads[std::size_t(std::max(0, probe.policy_state().choice(l, h)))] += 1;
    const double kv = s.mean_kv_bytes() / full.mean_kv_bytes(), loss = s.bits_per_byte() / full.bits_per_byte() - 1;
    std::printf("| %.2f | %.4f | %+.2f%% | %.2f | %d, %d, %d, %d, %d |\n", t, s.bits_per_byte(), 100 * loss, kv,
                heads[0], heads[1], heads[2], heads[3], heads[4]);
    if (t == 0.95) kv_at_95 = kv, loss_at_95 = loss;
  }
  char why[300];
  std::snprintf(why, sizeof why,
                "At T = 0.95 FastGen holds %.0f%% of the full cache's KV bytes (mean over decoding) for %+.2f%% bits "
                "per byte; the claim is read as at least 20%% less memory for at most 2%% more bits per byte.",
                100 * kv_at_95, 100 * loss_at_95);
  engine::print_verdict(kv_at_95 <= 0.8 && loss_at_95 <= 0.02, why);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "fastgen: %s\n", e.what());
  return 1;
}
