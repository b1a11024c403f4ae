// L2-norm key pruning (Devoto et al., EMNLP 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
// Compression"): keeping the lowest-norm keys against keeping the highest-norm keys and a random half.
//
// The official language-modelling protocol (docs/policies/l2_norm.md): once a head holds prune_after rows, keep the
// ceil(keep_ratio x n) lowest-norm ones, layers 0 and 1 whole. Here keep_ratio = 0.5 and prune_after = 1024, which is
// KVCache's budget of 512 rows with an eviction slack of 511: each head grows back to 1024 rows and is cut to 512.
// The two baselines are policies of this file (a policy is a small type; see kvcache::Policy): the same schedule,
// ranked by the highest norm (the paper's ablation) and at random.
// Run: ./build/release/examples/l2_norm [--short] [--model FILE] [--text FILE] (--help lists them)

#include <cstdio>

#include "engine/paper_example.hpp"

namespace {

// The paper's ablation: keep the highest-norm keys.
struct HighestNorm : kvcache::L2Norm {
  static constexpr std::string_view kName = "l2_highest_norm";
  using L2Norm::L2Norm;
  void rank(const kvcache::RankInput& in, std::span<float> priority) const noexcept {
    const auto norms = in.column<KeyNorm>();
    for (std::size_t j = 0; j < priority.size(); ++j) priority[j] = norms[j];
  }
};

// A random half: a fixed hash of (layer, head, position), so that a row keeps its luck from one cut to the next.
struct RandomKeep : kvcache::L2Norm {
  static constexpr std::string_view kName = "random";
  using L2Norm::L2Norm;
  void rank(const kvcache::RankInput& in, std::span<float> priority) const noexcept {
    for (std::size_t j = 0; j < priority.size(); ++j) {
      std::uint64_t x = (std::uint64_t(in.layer) << 48) ^ (std::uint64_t(in.kv_head) << 32) ^
                        std::uint64_t(std::uint32_t(in.positions[j]));
      x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;  // splitmix64 finaliser
      x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
      priority[j] = float(x >> 40);
    }
  }
};

}  // namespace

int main(int argc, char** argv) try {
  using namespace kvcache;
  auto ex = engine::PaperExample::from_args(
      "L2-norm key pruning (Devoto et al., 2024): lowest key norms against highest and random", argc, argv);
  engine::print_claim("A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression (Devoto et al., 2024)",
                      "keys with a low L2 norm draw the most attention, so keeping the lowest-norm half of the cache "
                      "costs little quality, and less than keeping the highest-norm or a random half.");
  const std::int64_t length = ex.short_mode ? 1024 : 2048, prefix = ex.short_mode ? 256 : 512;
  const std::int64_t prune_after = ex.short_mode ? 512 : 1024, keep = prune_after / 2;
  const auto windows = ex.windows(ex.short_mode ? 1 : 3, length);
  const auto cfg = ex.model.cache_config(length + 8, DType::kF16);
  KVCacheOptions schedule;
  schedule.eviction_slack = prune_after - keep - 1;  // cut to `keep` as soon as a head holds prune_after rows
  const std::vector<int> skip = {0, 1};
  const auto every_step = L2Norm::Mode::kEveryStep;

  const auto full = ex.language_model(windows, prefix, "full", [&] { return KVCache<Full>(cfg); });
  const auto lowest = ex.language_model(windows, prefix, "lowest norms (the paper)", [&] {
    return KVCache<L2Norm>(cfg, L2Norm(Count::of(keep), skip, every_step), schedule);
  });
  const auto highest = ex.language_model(windows, prefix, "highest norms", [&] {
    return KVCache<HighestNorm>(cfg, HighestNorm(Count::of(keep), skip, every_step), schedule);
  });
  const auto random = ex.language_model(windows, prefix, "random", [&] {
    return KVCache<RandomKeep>(cfg, RandomKeep(Count::of(keep), skip, every_step), schedule);
  });

  std::printf(
      "%zu window(s) of %lld bytes, %lld prefilled; keep %lld rows whenever a head reaches %lld (layers 0 "
      "and 1 whole).\n\n",
      windows.size(), static_cast<long long>(length), static_cast<long long>(prefix), static_cast<long long>(keep),
      static_cast<long long>(prune_after));
  std::printf("| keep | bits/byte | vs full | mean KV bytes |\n|---|---|---|---|\n");
  for (const auto& [name, s] : {std::pair{"everything (full)", full},
                                {"lowest norms (the paper)", lowest},
                                {"highest norms", highest},
                                {"random", random}})
    std::printf("| %s | %.4f | %+.2f%% | %.0f |\n", name, s.bits_per_byte(),
                100 * (s.bits_per_byte() / full.bits_per_byte() - 1), s.mean_kv_bytes());
  const bool order =
      lowest.bits_per_byte() < random.bits_per_byte() && random.bits_per_byte() < highest.bits_per_byte();
  const bool cheap = lowest.bits_per_byte() <= 1.05 * full.bits_per_byte();
  engine::print_verdict(
      order && cheap, std::string("Lowest norms ") +
                          (order ? "beat random, which beats highest norms" : "do not order as claimed") +
                          ", and cost " + (cheap ? "at most" : "more than") + " 5% bits per byte over the full cache.");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "l2_norm: %s\n", e.what());
  return 1;
}
