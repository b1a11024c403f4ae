// Serving on one block pool: how many sequences a fixed amount of KV memory holds under each policy, on the bundled
// tinylm-gqa. Each sequence is a KVCache on the shared BlockPool; the prompt goes in chunk by chunk and the policy
// compresses after every chunk (KVCacheOptions::compress_each_chunk), so a head never holds more than its budget plus
// one chunk; sequences arrive while the pool holds the blocks they can need at their worst (engine/serve.hpp), then
// decode together on two threads. The claim: a budget of 25% of the prompt fits at least 3.5x the sequences of Full,
// 10% at least 8x. kvcache-eval --task serve runs the same at the full sizes (docs/integration.md).

#include "engine/serve.hpp"

#include <cstdio>
#include <string>
#include <vector>

#include "engine/cli.hpp"
#include "engine/policy_by_name.hpp"
#include "engine/tinylm_gqa.hpp"

int main(int argc, char** argv) try {
  CLI::App app{"serve: sequences that fit one block pool under Full, H2O and StreamingLLM (tinylm-gqa)"};
  bool short_mode = false;
  engine::add_short_flag(app, short_mode);
  engine::parse_command_line(app, argc, argv);

  engine::TinyLmGqa model(KVCACHE_EXAMPLES_DIR "/models/tinylm-gqa.safetensors");
  const std::string text = engine::read_text(KVCACHE_EXAMPLES_DIR "/data/val-dev.txt");
  engine::ServeSettings s;
  s.prompt = short_mode ? 2048 : 4096;
  s.decode = short_mode ? 16 : 128;
  s.chunk = short_mode ? 64 : 128;
  s.threads = 2;
  const double mib = short_mode ? 8 : 32;
  const auto shape = model.cache_config(1, kvcache::DType::kF16);
  const auto n_blocks =
      std::int64_t(mib * 1024 * 1024 / double(kvcache::BlockPool::block_bytes(shape.shape, shape.dtype, 16)));
  std::vector<std::vector<int>> windows;
  for (std::size_t at : engine::draw_offsets(text, s.prompt + s.decode, 48, 7))
    windows.push_back(engine::byte_window(text, at, s.prompt + s.decode));
  std::vector<engine::TinyLmGqa> models(2, model);

  std::printf("A pool of %.0f MiB (%lld blocks of 16 rows); prompts of %lld bytes, %lld decoded.\n\n", mib,
              static_cast<long long>(n_blocks), static_cast<long long>(s.prompt), static_cast<long long>(s.decode));
  std::printf("| policy | budget | sequences | vs full | peak blocks used | decode tok/s | bits/byte |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  double full = 0;
  bool ok = true;
  const struct {
    const char* name;
    double budget, goal;
  } runs[] = {{"full", 1.0, 1.0},
              {"h2o", 0.25, 3.5},
              {"h2o", 0.1, 8.0},
              {"streaming_llm", 0.25, 3.5},
              {"streaming_llm", 0.1, 8.0}};
  for (const auto& run : runs) {
    kvcache::BlockPool pool(shape.shape, shape.dtype, 16, n_blocks);
    engine::ServeResult r;
    engine::visit_policy(run.name, run.budget, s.prompt, model, [&](auto policy, kvcache::KVCacheOptions opt) {
      r = engine::serve(
          models, pool, shape, [&](std::size_t) { return policy; }, opt, windows, s);
    });
    if (full == 0) full = r.sequences;
    const double ratio = r.sequences / full;
    ok = ok && ratio >= run.goal;
    std::printf("| %s | %.0f%% | %d | %.1fx (goal %.1fx) | %lld / %lld | %.0f | %.4f |\n", run.name, run.budget * 100,
                r.sequences, ratio, run.goal, static_cast<long long>(r.peak_blocks_used),
                static_cast<long long>(r.blocks_total), r.decode_tokens_per_s(), r.bits_per_byte());
    std::fflush(stdout);
  }
  std::printf("\n%s\n", ok ? "Every budget fits its goal's multiple of Full's sequences."
                           : "A budget missed its goal (see the table).");
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "serve: %s\n", e.what());
  return 1;
}
