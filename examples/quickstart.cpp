// kvcache quick start: one GQA layer of an engine's decode loop, on the library's storage and kernels.
//
//   1. prefill: append the prompt's K/V rows, run causal prefill attention, and collect column sums of the
//      attention probabilities (what a score-based policy reads);
//   2. decode: per step append one row, run decode attention, and add that step's probabilities to the scores;
//   3. shrink: drop the lowest-scoring rows of each KV head (outside a recent window) with one remove() call.
//
// The README shows this file; CI builds and runs it. Random numbers stand in for a model's projections.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <kvcache/kvcache.hpp>
#include <numeric>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"kvcache quick start: one GQA layer of a decode loop on the library's storage and kernels (no options)"};
  CLI11_PARSE(app, argc, argv);
  using namespace kvcache;
  const AttentionShape shape{/*n_q_heads=*/8, /*n_kv_heads=*/2, /*head_dim_k=*/64, /*head_dim_v=*/64};
  const std::int64_t capacity = 256, prompt = 100, steps = 20;
  LayerSlots kv(shape, capacity, DType::kF16);  // one layer; SlotStorage holds one of these per layer

  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  auto random = [&](std::size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng);
    return v;
  };
  const int nq = shape.n_q_heads, nkv = shape.n_kv_heads, d = shape.head_dim_k;

  // Scores per (KV head, slot), summed over the group's query heads: what H2O-like policies accumulate.
  std::vector<float> scores(std::size_t(nkv * capacity), 0.0f);

  // 1. Prefill. k, v: [n_kv_heads, prompt, d]; q, out: [prompt, n_q_heads, d]; positions: [prompt].
  {
    auto k = random(std::size_t(nkv * prompt * d)), v = random(std::size_t(nkv * prompt * d));
    auto q = random(std::size_t(prompt * nq * d));
    std::vector<float> out(q.size());
    std::vector<Position> pos(prompt);
    std::iota(pos.begin(), pos.end(), 0);
    kv.append(ConstTensorView<float, 3>(k.data(), nkv, prompt, d), ConstTensorView<float, 3>(v.data(), nkv, prompt, d),
              pos);
    PrefillWorkspace ws(shape);
    PrefillOptions opt;
    opt.column_sums = scores.data();
    opt.column_sums_stride = capacity;
    prefill_attention(kv, ConstTensorView<float, 3>(q.data(), prompt, nq, d),
                      TensorView<float, 3>(out.data(), prompt, nq, d), ws, opt);
  }

  // 2. Decode. The workspace is sized once; the steps allocate nothing inside the library.
  DecodeWorkspace ws(shape, capacity, /*max_splits=*/1, /*probabilities=*/true);
  DecodeOptions opt;
  opt.probabilities = scores.data();
  opt.probabilities_stride = capacity;
  std::vector<float> out(std::size_t(nq * d));
  for (std::int64_t t = 0; t < steps; ++t) {
    auto k = random(std::size_t(nkv * d)), v = random(std::size_t(nkv * d)), q = random(std::size_t(nq * d));
    const Position pos[1] = {static_cast<Position>(prompt + t)};
    kv.append(ConstTensorView<float, 3>(k.data(), nkv, 1, d), ConstTensorView<float, 3>(v.data(), nkv, 1, d), pos);
    decode_attention(kv, ConstTensorView<float, 2>(q.data(), nq, d), TensorView<float, 2>(out.data(), nq, d), ws, opt);
  }
  std::printf("after %lld prompt + %lld decode tokens: %lld rows per head, %zu KV bytes (isa %s)\n",
              static_cast<long long>(prompt), static_cast<long long>(steps), static_cast<long long>(kv.length(0)),
              kv.kv_bytes(), std::string(isa_name(active_isa())).c_str());

  // 3. Shrink each head to 64 rows: keep the 16 most recent positions, drop the lowest scores among the rest.
  //    Scores travel with rows, so apply the same moves to them: here we simply recompute after the removal.
  for (int h = 0; h < nkv; ++h) {
    const auto positions = kv.positions(h);
    const Position newest = *std::max_element(positions.begin(), positions.end());
    std::vector<std::int32_t> candidates;
    for (std::int32_t s = 0; s < kv.length(h); ++s)
      if (positions[s] <= newest - 16) candidates.push_back(s);
    const float* sc = scores.data() + std::size_t(h) * std::size_t(capacity);
    std::sort(candidates.begin(), candidates.end(), [&](auto a, auto b) { return sc[a] < sc[b]; });
    candidates.resize(std::size_t(kv.length(h) - 64));
    kv.remove(h, candidates);
  }
  std::printf("after eviction: %lld rows per head, %zu KV bytes\n", static_cast<long long>(kv.length(0)),
              kv.kv_bytes());
  return kv.length(0) == 64 && kv.length(1) == 64 ? 0 : 1;
}
