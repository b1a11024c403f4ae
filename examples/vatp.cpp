// VATP (Guo et al., EMNLP 2024, "Attention Score is not All You Need for Token Importance Indicator in KV Cache
// Reduction: Value Also Matters"): accumulated attention times the value's L1 norm, against attention alone (H2O), at
// the same budget.
//
// Language modelling on the bundled tinylm-gqa: windows of 2048 bytes, the first 512 prefilled, the rest decoded byte
// by byte with the policy active; budgets of 10% and 25% per layer and KV head, half of it recent rows for both.
// Run: ./build/release/examples/vatp [--short] [--model FILE] [--text FILE] (--help lists them)

#include <cstdio>

#include "engine/paper_example.hpp"

int main(int argc, char** argv) try {
  using namespace kvcache;
  auto ex = engine::PaperExample::from_args(
      "VATP (Guo et al., 2024): value-aware token pruning against H2O at 10% and 25%", argc, argv);
  engine::print_claim(
      "VATP: Attention Score is not All You Need for Token Importance Indicator in KV Cache Reduction: "
      "Value Also Matters (Guo et al., 2024)",
      "ranking tokens by accumulated attention x value norm keeps a better cache than ranking by "
      "attention alone (H2O) at the same budget.");
  const std::int64_t length = ex.short_mode ? 768 : 2048, prefix = ex.short_mode ? 256 : 512;
  const auto windows = ex.windows(ex.short_mode ? 1 : 4, length);
  const auto cfg = ex.model.cache_config(length + 8, DType::kF16);
  const auto full = ex.language_model(windows, prefix, "full", [&] { return KVCache<Full>(cfg); });

  std::printf("%zu window(s) of %lld bytes, %lld prefilled; full cache: %.4f bits/byte.\n\n", windows.size(),
              static_cast<long long>(length), static_cast<long long>(prefix), full.bits_per_byte());
  std::printf("| budget | rows | H2O bits/byte | VATP bits/byte | VATP - H2O |\n|---|---|---|---|---|\n");
  int wins = 0, total = 0;
  for (double fraction : {0.10, 0.25}) {
    const std::int64_t rows = std::int64_t(fraction * double(length)), heavy = rows / 2, recent = rows - heavy;
    const auto h2o = ex.language_model(windows, prefix, "h2o",
                                       [&] { return KVCache<H2O>(cfg, H2O(Count::of(heavy), Count::of(recent))); });
    const auto vatp = ex.language_model(windows, prefix, "vatp (first 4 protected)", [&] {
      return KVCache<VATP>(cfg, VATP(Count::of(heavy), Count::of(recent), /*sinks=*/4));
    });
    std::printf("| %.0f%% | %lld | %.4f | %.4f | %+.4f |\n", fraction * 100, static_cast<long long>(rows),
                h2o.bits_per_byte(), vatp.bits_per_byte(), vatp.bits_per_byte() - h2o.bits_per_byte());
    wins += vatp.bits_per_byte() < h2o.bits_per_byte() ? 1 : 0;
    ++total;
  }
  engine::print_verdict(wins == total, "VATP has the lower bits per byte at " + std::to_string(wins) + " of " +
                                           std::to_string(total) +
                                           " budgets (oracle, docs/evaluation.md: 1.1987 against "
                                           "H2O's 1.2039 at 25%).");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "vatp: %s\n", e.what());
  return 1;
}
