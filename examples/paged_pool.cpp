// Many sequences on one BlockPool in memory the engine owns: heads take blocks as they grow and give them back as
// H2O evicts, a long prompt goes in chunk by chunk within its budget, fork() shares a prompt among samples
// copy-on-write, truncate() takes back rejected draft tokens.
// Random projections stand in for a model. docs/integration.md walks through it; CI builds and runs it.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <kvcache/kvcache.hpp>
#include <memory>
#include <new>
#include <random>
#include <vector>

namespace {

using namespace kvcache;

constexpr int kLayers = 2, kQ = 8, kKv = 2, kD = 64;

std::mt19937 g_rng(7);
std::vector<float> random(std::int64_t n) {
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = normal(g_rng);
  return v;
}

// A prompt chunk of `tokens` tokens at positions first, first + 1, ...; last_chunk: the prompt ends with it.
template <class Cache>
void prefill(Cache& cache, std::int64_t tokens, Position first = 0, bool last_chunk = true) {
  std::vector<Position> positions(static_cast<std::size_t>(tokens));
  for (std::int64_t i = 0; i < tokens; ++i) positions[std::size_t(i)] = first + Position(i);
  std::vector<float> out(std::size_t(tokens * kQ * kD));
  for (int l = 0; l < kLayers; ++l) {
    auto k = random(kKv * tokens * kD), v = random(kKv * tokens * kD), q = random(tokens * kQ * kD);
    cache.prefill(l, ConstTensorView<float, 3>(k.data(), kKv, tokens, kD),
                  ConstTensorView<float, 3>(v.data(), kKv, tokens, kD), positions,
                  ConstTensorView<float, 3>(q.data(), tokens, kQ, kD), TensorView<float, 3>(out.data(), tokens, kQ, kD),
                  last_chunk);
  }
}

template <class Cache>
void decode(Cache& cache, Position position) {
  std::vector<float> o(std::size_t(kQ * kD));
  for (int l = 0; l < kLayers; ++l) {
    auto k = random(kKv * kD), v = random(kKv * kD), q = random(kQ * kD);
    cache.decode(l, ConstTensorView<float, 2>(k.data(), kKv, kD), ConstTensorView<float, 2>(v.data(), kKv, kD),
                 position, ConstTensorView<float, 2>(q.data(), kQ, kD), TensorView<float, 2>(o.data(), kQ, kD));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Sequences, fork and rollback on one block pool, on random projections (no options)"};
  CLI11_PARSE(app, argc, argv);
  const std::int64_t prompt = 1000, capacity = prompt + 8;
  const CacheConfig config{kLayers, {kQ, kKv, kD, kD}, capacity, DType::kF16};

  // The engine's memory: 4 MiB, carved into blocks of 64 rows (64 x (64 + 64) x 2 bytes = 16 KiB each).
  const std::size_t bytes = std::size_t{4} << 20;
  std::unique_ptr<std::byte[]> memory(new std::byte[bytes]);
  BlockPool pool(config.shape, config.dtype, /*block_rows=*/64, memory.get(), bytes);
  std::printf("pool: %lld blocks of %d rows, %zu bytes each\n", static_cast<long long>(pool.blocks_total()),
              pool.block_rows(), pool.block_bytes());

  // One sequence: its prompt takes 16 blocks per head; H2O then keeps 128 rows, 2 blocks, and gives the rest back.
  const H2O h2o(Count::of(64), Count::of(64));
  KVCache<H2O> first(config, pool, h2o);
  prefill(first, prompt);
  std::printf("after a %lld-token prompt and its compression: %lld rows per head, %lld blocks held, %lld free\n",
              static_cast<long long>(prompt), static_cast<long long>(first.length(0, 0)),
              static_cast<long long>(first.blocks_held()), static_cast<long long>(pool.blocks_free()));

  // A 4096-token prompt in chunks of 128, compressed after each: a head never holds more than 128 + 128 rows, so a
  // capacity of 256 and 4 blocks per head carry it.
  KVCacheOptions chunked;
  chunked.compress_each_chunk = true;
  bool bounded = true;
  {
    KVCache<H2O> streamed(CacheConfig{kLayers, {kQ, kKv, kD, kD}, 256, DType::kF16}, pool, h2o, chunked);
    for (std::int64_t at = 0; at < 4096; at += 128) {
      prefill(streamed, 128, Position(at), /*last_chunk=*/at + 128 == 4096);
      bounded = bounded && streamed.length(0, 0) == 128 && streamed.blocks_held() <= kLayers * kKv * 2;
    }
    std::printf("a 4096-token prompt in chunks of 128, compressed after each: %lld rows per head, %lld blocks held\n",
                static_cast<long long>(streamed.length(0, 0)), static_cast<long long>(streamed.blocks_held()));
  }

  // Three samples of the first prompt: forks share its blocks until they write to them.
  std::vector<KVCache<H2O>> samples;
  for (int i = 0; i < 3; ++i) samples.push_back(first.fork());
  std::printf("three forks: %lld blocks free (the prompt's blocks are held once)\n",
              static_cast<long long>(pool.blocks_free()));
  for (Position t = Position(prompt); t < Position(prompt + 100); ++t)
    for (auto& s : samples) decode(s, t);
  std::printf("each sample decoded 100 tokens: %lld blocks free\n", static_cast<long long>(pool.blocks_free()));

  // Speculative decoding: four draft tokens, three rejected.
  const Position next = Position(prompt + 100);
  for (Position t = next; t < next + 4; ++t) decode(samples[0], t);
  samples[0].truncate(3);
  decode(samples[0], next + 1);  // the verified token's successor takes the first rejected position

  // Done with the samples: their blocks go back; the pool again holds only the first sequence's.
  samples.clear();
  std::printf("samples released: %lld blocks free, %lld held by the first sequence\n",
              static_cast<long long>(pool.blocks_free()), static_cast<long long>(first.blocks_held()));
  const bool ok =
      bounded && pool.blocks_free() == pool.blocks_total() - first.blocks_held() && first.length(0, 0) == 128;
  return ok ? 0 : 1;
}
