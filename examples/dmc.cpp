// DMC (Nawrot et al., ICML 2024, "Dynamic Memory Compression: Retrofitting LLMs for Accelerated Inference"): each KV
// head merges a new token into its newest slot (an importance-weighted mean, pre-RoPE, over at most 12 tokens) or
// opens a new slot, so heads hold different numbers of rows.
//
// DMC needs a model retrofitted to make those decisions with one key neuron; none is bundled yet, so this example shows
// the mechanics on tinylm-gqa with a decision rule the engine supplies, which is NOT the paper's trained decision:
// in layers 2 and above, a byte that continues a word (a letter or digit after a letter or digit) is merged into the
// word's slot, and odd KV heads also merge the space after a word; layers 0 and 1 keep every byte. It prints the
// compression achieved per head and what the rule costs in bits per byte on a model that was never trained for it, next
// to how often the official neuron rule (key[-1] - 5 > 0) would fire on this model's keys. Run:
// ./build/release/examples/dmc [--short] [--model FILE] [--text FILE] (--help lists them)

#include <cctype>
#include <cstdio>

#include "engine/paper_example.hpp"

int main(int argc, char** argv) try {
  using namespace kvcache;
  auto ex = engine::PaperExample::from_args(
      "DMC (Nawrot et al., 2024): merging tokens into the newest slot per head, with an engine-supplied rule", argc,
      argv);
  engine::print_claim("Dynamic Memory Compression: Retrofitting LLMs for Accelerated Inference (Nawrot et al., 2024)",
                      "a model retrofitted to merge tokens into the newest slot of each head keeps its quality at up "
                      "to 4x compression of the KV cache, and heads learn different ratios.");
  const std::int64_t length = ex.short_mode ? 768 : 2048, prefix = ex.short_mode ? 256 : 512;
  const auto windows = ex.windows(ex.short_mode ? 1 : 2, length);
  const auto cfg = ex.model.cache_config(length + 8, DType::kF16);
  const auto word = [](int t) { return t >= 0 && t < 128 && std::isalnum(t) != 0; };

  // The engine's rule (see above), and a count of how often the official neuron rule would merge.
  std::int64_t neuron_merges = 0, neuron_steps = 0;
  DMC rule = DMC::official();
  rule.decide = [&](const DMC::Step& s) {
    neuron_merges += s.key[std::size_t(s.head_dim - 1)] - 5.0f > 0.0f ? 1 : 0;
    ++neuron_steps;
    const int t = ex.model.token_at(s.position), before = ex.model.token_at(s.position - 1);
    if (s.layer < 2) return false;
    // Even heads merge the rest of a word into its first byte; odd heads also the space that ends it.
    return word(before) && (word(t) || (s.kv_head % 2 == 1 && t == ' '));
  };
  rule.zero_neurons = false;  // the model uses every dimension of its keys and queries

  const auto full = ex.language_model(windows, prefix, "full", [&] { return KVCache<Full>(cfg); });
  KVCache<DMC> last(cfg, rule, ex.model.cache_options());
  engine::TaskStats dmc;
  for (const auto& w : windows) {
    last.reset();
    engine::language_model(ex.model, last, w, prefix, dmc);
  }
  std::fprintf(stderr, "  %-40s %.4f bits/byte\n", "dmc (engine's rule)", dmc.bits_per_byte());

  std::printf("%zu window(s) of %lld bytes, %lld prefilled (token by token, as the official inference).\n\n",
              windows.size(), static_cast<long long>(length), static_cast<long long>(prefix));
  std::printf("Compression per (layer, KV head) at the end of the last window (tokens / slots):\n\n| layer |");
  for (int h = 0; h < cfg.shape.n_kv_heads; ++h) std::printf(" head %d |", h);
  std::printf("\n|---|");
  for (int h = 0; h < cfg.shape.n_kv_heads; ++h) std::printf("---|");
  std::printf("\n");
  for (int l = 0; l < cfg.n_layers; ++l) {
    std::printf("| %d |", l);
    for (int h = 0; h < cfg.shape.n_kv_heads; ++h) std::printf(" %.2fx |", double(length) / double(last.length(l, h)));
    std::printf("\n");
  }
  std::printf("\n| cache | bits/byte | vs full | mean KV / full |\n|---|---|---|---|\n");
  std::printf("| full | %.4f | | 1.00 |\n", full.bits_per_byte());
  std::printf("| DMC mechanics, engine's rule | %.4f | %+.2f%% | %.2f |\n", dmc.bits_per_byte(),
              100 * (dmc.bits_per_byte() / full.bits_per_byte() - 1), dmc.mean_kv_bytes() / full.mean_kv_bytes());
  char why[400];
  std::snprintf(why, sizeof why,
                "Not testable here: tinylm-gqa was not retrofitted for DMC (the official neuron rule would merge "
                "%.1f%% of tokens on its keys, by chance of their values, not by training). The mechanics run: heads "
                "hold different numbers of slots, and the rule's cost above is what an untrained model pays.",
                100.0 * double(neuron_merges) / double(std::max<std::int64_t>(1, neuron_steps)));
  std::printf("\nOn tinylm-gqa: %s\n", why);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "dmc: %s\n", e.what());
  return 1;
}
