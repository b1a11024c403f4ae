// MLA absorbed decode (attention/mla.hpp) on the DeepSeek-V2 shape, against this machine's measured limits.
//
// A case is one layer step of decode_attention on the latent layout: 128 heads, rows of kv_lora_rank 512 + RoPE 64
// (bf16, or f16/f32), context 4k or 32k, a forced ISA and 1 or 2 threads; the absorbed queries are [128, 576] and the
// outputs the latent sums [128, 512] (absorbing W_UK and applying W_UV are GEMVs outside the cache and not timed).
// Every head reads the same latent row, so a step does 2 * 128 * (576 + 512) FLOPs per 1152 bytes it reads (bf16):
// ~240 FLOP/byte, far above this machine's balance point, so the kernel is compute-bound. Counters:
//   GFLOPs          2 n_heads n (576 + 512) FLOPs per step / step time
//   peak_fraction   GFLOPs / the fp32 FMA peak of the same ISA and thread count, measured in this run
//   GBps            latent bytes per step (read once for all heads) / step time
//   bw_fraction     GBps / the read bandwidth measured in this run with the same threads
//   limit_fraction  max(peak_fraction, bw_fraction): the fraction of whichever limit the step hits first
//   fma_peak_GFLOPs the FMA peak held against, measured at the first case of each ISA and thread count
// Each iteration reads the next of enough layers to span the working set (>= 1 GiB), as decode_bench does.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
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

const kvcache::MlaShape kDeepSeekV2{128, 512, 64, 128, 128};

std::map<int, double> g_read_bw;  // threads -> GB/s

struct LayerSet {
  std::int64_t ctx = -1;
  DType dtype = DType::kF32;
  std::vector<std::unique_ptr<kvcache::LayerSlots>> layers;
};
LayerSet g_layers;

const std::vector<std::unique_ptr<kvcache::LayerSlots>>& layers_for(std::int64_t ctx, DType dt) {
  if (g_layers.ctx == ctx && g_layers.dtype == dt) return g_layers.layers;
  g_layers.layers.clear();
  const int w = kDeepSeekV2.row_width();
  const std::size_t per_layer = std::size_t(ctx) * std::size_t(w) * kvcache::dtype_size(dt);
  const std::size_t n_layers = std::max<std::size_t>(2, (kvbench::working_set_bytes() + per_layer - 1) / per_layer);
  const std::int64_t chunk = std::min<std::int64_t>(ctx, 1024);
  std::vector<float> rows(std::size_t(chunk * w));
  std::uint32_t x = 12345;
  for (auto& e : rows) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  std::vector<kvcache::Position> pos(static_cast<std::size_t>(chunk));
  for (std::size_t l = 0; l < n_layers; ++l) {
    auto kv = std::make_unique<kvcache::LayerSlots>(kDeepSeekV2.attention_shape(), ctx, dt);
    for (std::int64_t done = 0; done < ctx; done += chunk) {
      const std::int64_t m = std::min(chunk, ctx - done);
      kv->append(kvcache::ConstTensorView<float, 3>(rows.data(), 1, m, w),
                 kvcache::ConstTensorView<float, 3>(nullptr, 0, m, 0),
                 std::span<kvcache::Position const>(pos.data(), static_cast<std::size_t>(m)));
    }
    g_layers.layers.push_back(std::move(kv));
  }
  g_layers.ctx = ctx;
  g_layers.dtype = dt;
  return g_layers.layers;
}

template <class Exec>
void run_mla(benchmark::State& st, std::int64_t ctx, DType dt, Isa isa, const Exec& ex) {
  const auto& layers = layers_for(ctx, dt);
  const double peak = kvbench::fma_peak_once(isa, ex), bw = g_read_bw.at(ex.concurrency());
  kvcache::set_isa_for_testing(isa);
  const kvcache::MlaShape& s = kDeepSeekV2;
  const int H = s.n_heads, w = s.row_width(), rank = s.kv_lora_rank;
  std::vector<float> q(std::size_t(H * w), 0.01f), out(std::size_t(H * rank));
  kvcache::DecodeWorkspace ws(s.attention_shape(), ctx, std::max(1, ex.concurrency()));
  kvcache::DecodeOptions opt;
  opt.scale = s.softmax_scale();
  std::size_t i = 0;
  double seconds = 0;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    kvcache::decode_attention(*layers[i], kvcache::ConstTensorView<float, 2>(q.data(), H, w),
                              kvcache::TensorView<float, 2>(out.data(), H, rank), ws, opt, ex);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    seconds += kvbench::seconds_since(t0);
    i = (i + 1) % layers.size();
  }
  kvcache::set_isa_for_testing(std::nullopt);
  const double steps = static_cast<double>(st.iterations());
  const double flops = 2.0 * H * static_cast<double>(ctx) * (w + rank);
  const double gflops = flops * steps / seconds / 1e9;
  const double gbps = static_cast<double>(layers[0]->kv_bytes()) * steps / seconds / 1e9;
  st.counters["GFLOPs"] = gflops;
  st.counters["peak_fraction"] = gflops / peak;
  st.counters["GBps"] = gbps;
  st.counters["bw_fraction"] = gbps / bw;
  st.counters["limit_fraction"] = std::max(gflops / peak, gbps / bw);
  st.counters["fma_peak_GFLOPs"] = peak;
}

}  // namespace

int main(int argc, char** argv) {
  const kvbench::Options opt = kvbench::parse_options(argc, argv);
  g_read_bw = kvbench::measure_read_bandwidths(opt.threads);

  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32})
    for (std::int64_t ctx : {4096, 32768})
      for (Isa isa : kvcache::available_isas()) {
        // The scalar op set runs one short case: it is there to be correct (a 32k step takes ~seconds).
        if (isa == Isa::kScalar && (ctx != 4096 || dt != DType::kBF16)) continue;
        for (int t : opt.threads) {
          const std::string name = "MlaDecode/" + std::string(kvcache::dtype_name(dt)) + "/ctx" + std::to_string(ctx) +
                                   "/" + std::string(kvcache::isa_name(isa)) + "/threads" + std::to_string(t);
          auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
            if (t == 1)
              run_mla(st, ctx, dt, isa, kvcache::SerialExecutor{});
            else
              run_mla(st, ctx, dt, isa, kvcache::OpenMPExecutor{t});
          });
          kvbench::configure(b, opt);
        }
      }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
