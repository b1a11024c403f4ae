// H2O (Zhang et al., NeurIPS 2023): heavy hitters + recent tokens against recent tokens only, at a 20% budget.
//
// Language modelling on the bundled tinylm-gqa: windows of 2048 bytes, the first 512 prefilled, the rest decoded
// byte by byte with the policy active. H2O keeps 10% heavy hitters (the largest accumulated attention) and 10%
// recent rows per layer and KV head; the baseline of the paper's Table "Local" keeps the 20% most recent rows only.
// Run: ./build/release/examples/h2o [--short] [--model FILE] [--text FILE] (--help lists them)

#include <cstdio>

#include "engine/paper_example.hpp"

int main(int argc, char** argv) try {
  using namespace kvcache;
  auto ex = engine::PaperExample::from_args(
      "H2O (Zhang et al., 2023): heavy hitters + recent tokens against recent tokens only, at a 20% budget", argc,
      argv);
  engine::print_claim("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs (Zhang et al., 2023)",
                      "a KV cache of 20% heavy hitters + recent tokens keeps the full cache's quality and beats "
                      "keeping the same number of recent tokens only.");
  const std::int64_t length = ex.short_mode ? 768 : 2048, prefix = ex.short_mode ? 256 : 512;
  const auto windows = ex.windows(ex.short_mode ? 1 : 4, length);
  const std::int64_t budget = length / 5;  // 20% of the window, rows per layer and KV head
  const auto cfg = ex.model.cache_config(length + 8, DType::kF16);

  const auto full = ex.language_model(windows, prefix, "full", [&] { return KVCache<Full>(cfg); });
  const auto h2o = ex.language_model(windows, prefix, "h2o 10% heavy + 10% recent", [&] {
    return KVCache<H2O>(cfg, H2O(Count::of(budget / 2), Count::of(budget - budget / 2)));
  });
  const auto local = ex.language_model(windows, prefix, "recent only (20%)", [&] {
    return KVCache<StreamingLLM>(cfg, StreamingLLM(0, budget, StreamingLLM::Positions::kOriginal));
  });

  std::printf("%zu window(s) of %lld bytes, %lld prefilled; budget %lld rows per layer and KV head (20%%).\n\n",
              windows.size(), static_cast<long long>(length), static_cast<long long>(prefix),
              static_cast<long long>(budget));
  std::printf("| cache | bits/byte | vs full | mean KV bytes |\n|---|---|---|---|\n");
  for (const auto& [name, s] : {std::pair{"full", full}, {"H2O (heavy hitters + recent)", h2o}, {"recent only", local}})
    std::printf("| %s | %.4f | %+.2f%% | %.0f |\n", name, s.bits_per_byte(),
                100 * (s.bits_per_byte() / full.bits_per_byte() - 1), s.mean_kv_bytes());
  const bool beats_local = h2o.bits_per_byte() < local.bits_per_byte();
  const bool near_full = h2o.bits_per_byte() <= 1.05 * full.bits_per_byte();
  std::string why = std::string("H2O ") + (beats_local ? "beats" : "does not beat") + " recent-only and is " +
                    (near_full ? "within" : "more than") + " 5% of the full cache's bits per byte.";
  if (!beats_local)
    why +=
        " On this byte-level model most of the signal is local (docs/evaluation.md), so every row H2O spends on a "
        "heavy "
        "hitter is a recent row it loses.";
  engine::print_verdict(beats_local && near_full, why);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "h2o: %s\n", e.what());
  return 1;
}
