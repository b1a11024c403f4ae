// Causal prefill attention speed against this machine's measured fp32 FMA peak.
//
// A case is prefill_attention of n new tokens into an empty layer: 8 KV heads, group g, head dim d, storage
// f32/f16/bf16, a forced ISA, 1 or 2 threads. Counters:
//   GFLOPs         2 (dk + dv) n_q n (n + 1) / 2 useful FLOPs (only the causal triangle) per second
//   peak_fraction  GFLOPs / the fp32 FMA peak of the same ISA and thread count, measured in this run (at the
//                  first case of each ISA and thread count)
//   fma_peak_GFLOPs  that peak
// Grid: n = 1024 for every combination; n = 4096 (the target shape: 32 query / 8 KV heads, d = 128) for
// f32 with g = 4. The scalar ISA runs only n = 1024, f32, d = 64, g = 4, one thread: it is there to be correct,
// and a larger grid would take tens of minutes.

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "bench_main.hpp"
#include "kvcache/kvcache.hpp"
#include "kvcache/testing/testing.hpp"
#include "machine.hpp"

namespace {

using kvcache::DType;
using kvcache::Isa;

constexpr int kKvHeads = 8;

template <class Exec>
void run_prefill(benchmark::State& st, std::int64_t n, int d, int g, DType dt, Isa isa, const Exec& ex) {
  const kvcache::AttentionShape shape{kKvHeads * g, kKvHeads, d, d};
  kvcache::LayerSlots kv(shape, n, dt);
  std::vector<float> k(std::size_t(kKvHeads * n * d)), q(std::size_t(n * shape.n_q_heads * d)), out(q.size());
  std::uint32_t x = 777;
  for (auto& e : k) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  for (auto& e : q) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  std::vector<kvcache::Position> pos(static_cast<std::size_t>(n));
  kv.append(kvcache::ConstTensorView<float, 3>(k.data(), kKvHeads, n, d),
            kvcache::ConstTensorView<float, 3>(k.data(), kKvHeads, n, d), pos);
  kvcache::PrefillWorkspace ws(shape, std::max(1, ex.concurrency()));
  const double peak = kvbench::fma_peak_once(isa, ex);
  kvcache::set_isa_for_testing(isa);
  double seconds = 0;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    kvcache::prefill_attention(kv, kvcache::ConstTensorView<float, 3>(q.data(), n, shape.n_q_heads, d),
                               kvcache::TensorView<float, 3>(out.data(), n, shape.n_q_heads, d), ws, {}, ex);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    seconds += kvbench::seconds_since(t0);
  }
  kvcache::set_isa_for_testing(std::nullopt);
  const double gflop = 2.0 * (2 * d) * shape.n_q_heads * (static_cast<double>(n) * (n + 1) / 2) / 1e9;
  const double gflops = gflop * static_cast<double>(st.iterations()) / seconds;
  st.counters["GFLOPs"] = gflops;
  st.counters["peak_fraction"] = gflops / peak;
  st.counters["fma_peak_GFLOPs"] = peak;
}

}  // namespace

int main(int argc, char** argv) {
  const kvbench::Options opt = kvbench::parse_options(argc, argv);

  auto add = [&](std::int64_t n, int d, int g, DType dt, Isa isa, int t) {
    const std::string name = "Prefill/" + std::string(kvcache::dtype_name(dt)) + "/d" + std::to_string(d) + "/n" +
                             std::to_string(n) + "/g" + std::to_string(g) + "/" + std::string(kvcache::isa_name(isa)) +
                             "/threads" + std::to_string(t);
    auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
      if (t == 1)
        run_prefill(st, n, d, g, dt, isa, kvcache::SerialExecutor{});
      else
        run_prefill(st, n, d, g, dt, isa, kvcache::OpenMPExecutor{t});
    });
    kvbench::configure(b, opt);
  };
  for (Isa isa : kvcache::available_isas()) {
    for (int t : opt.threads) {
      if (isa == Isa::kScalar) {
        if (t == 1) add(1024, 64, 4, DType::kF32, isa, t);
        continue;
      }
      add(4096, 128, 4, DType::kF32, isa, t);
      for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
        for (int d : {128, 64})
          for (int g : {1, 4, 8}) add(1024, d, g, dt, isa, t);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
