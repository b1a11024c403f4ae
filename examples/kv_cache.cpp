// KVCache<Policy>: what an engine's attention layer calls per layer and step. Here H2O keeps 32 heavy hitters and
// the 32 newest tokens of every KV head; swap the policy type to change method. Random projections stand in for a
// model. The README shows this file; CI builds and runs it.

#include <CLI/CLI.hpp>
#include <cstdio>
#include <kvcache/kvcache.hpp>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"KVCache<H2O> as an engine's attention layer calls it, on random projections (no options)"};
  CLI11_PARSE(app, argc, argv);
  using namespace kvcache;
  const int layers = 2, nq = 8, nkv = 2, d = 64;
  const std::int64_t prompt = 200, steps = 50;
  const CacheConfig config{layers, {nq, nkv, d, d}, /*capacity=*/prompt + 8, DType::kF16};
  KVCache<H2O> cache(config, H2O(Count::of(32), Count::of(32)));  // heavy, recent

  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  auto random = [&](std::int64_t n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = normal(rng);
    return v;
  };

  // Prompt: k, v [n_kv, prompt, d]; q, out [prompt, n_q, d] (keys and queries already rotated at their positions).
  std::vector<Position> positions(prompt);
  for (std::int64_t i = 0; i < prompt; ++i) positions[std::size_t(i)] = Position(i);
  std::vector<float> out(std::size_t(prompt * nq * d));
  for (int l = 0; l < layers; ++l) {
    auto k = random(nkv * prompt * d), v = random(nkv * prompt * d), q = random(prompt * nq * d);
    cache.prefill(l, ConstTensorView<float, 3>(k.data(), nkv, prompt, d),
                  ConstTensorView<float, 3>(v.data(), nkv, prompt, d), positions,
                  ConstTensorView<float, 3>(q.data(), prompt, nq, d), TensorView<float, 3>(out.data(), prompt, nq, d));
  }
  std::printf("after the prompt: %lld rows per head, %zu KV bytes\n", static_cast<long long>(cache.length(0, 0)),
              cache.kv_bytes());

  // Decode: k, v [n_kv, d]; q, out [n_q, d]. Each step evicts one row per head once it is over budget.
  std::vector<float> o(std::size_t(nq * d));
  for (std::int64_t t = prompt; t < prompt + steps; ++t)
    for (int l = 0; l < layers; ++l) {
      auto k = random(nkv * d), v = random(nkv * d), q = random(nq * d);
      cache.decode(l, ConstTensorView<float, 2>(k.data(), nkv, d), ConstTensorView<float, 2>(v.data(), nkv, d),
                   Position(t), ConstTensorView<float, 2>(q.data(), nq, d), TensorView<float, 2>(o.data(), nq, d));
    }
  std::printf("after %lld steps: %lld rows per head, %zu KV bytes (full cache: %zu)\n", static_cast<long long>(steps),
              static_cast<long long>(cache.length(0, 0)), cache.kv_bytes(),
              std::size_t(layers * nkv * (prompt + steps) * 2 * d * 2));
  // Beside the rows: H2O's scores and the attention workspaces, fixed at construction.
  std::printf("policy state and workspaces: %zu bytes\n", cache.state_bytes());
  return cache.length(0, 0) == 64 && cache.length(1, 1) == 64 ? 0 : 1;
}
