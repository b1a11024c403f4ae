// Decode attention speed against this machine's measured read bandwidth and FMA peak.
//
// A case is one layer step of decode_attention: 8 KV heads, group g (8 g query heads), context N, head dim d,
// storage f32/f16/bf16/i8, a forced ISA and 1 or 2 threads. Counters:
//   GBps         K+V bytes read per step / step time (1e9 bytes; i8 rows count their bytes and their scales)
//   bw_fraction  GBps / the read bandwidth measured in this run with the same number of threads
//   GFLOPs       the step's 4 x d x context x query-head FLOPs (Q.K and P.V) / step time
//   roofline_fraction  the time the step cannot beat on this machine, max(bytes / read bandwidth, FLOPs / fp32 FMA
//                peak of the case's ISA and thread count), over the step time: how close a case is to whichever
//                limit it hits first (group 8 at d 128 does 8 FLOPs per f16 byte, so on a core whose FMA peak is
//                under 8 x its read bandwidth, it is the FMA peak)
//   fma_peak_GFLOPs  that peak, measured at the first case of each ISA and thread count
//   speed_vs_f16 (i8 cases) the median step time of the same case over f16, measured earlier in this run, over this
//                step time: the speed-up of the int8 cache
//   speed_vs_dense (DecodePaged cases: f16, d 128, 32k, groups 1, 4, 8, blocks of 16, 64 and 256 rows from a
//                BlockPool) the dense step time over the paged one, both measured in the same repetition: each
//                iteration runs the dense step of one layer, then the paged step of another, so drift in the
//                machine's speed moves both alike (the other counters are the paged step's). The paged layers are
//                filled either block by block across layers and heads, as a decode grows them (decode_grown: a
//                head's blocks lie apart in memory, 8 x layers blocks between neighbours), or 256 rows at a time, as a
//                prompt prefilled in chunks of 256 grows them (prefill_grown: runs of 256 / block rows neighbours).
//   read_ceiling_vs_dense (DecodePaged cases) what plain reading reaches on the same bytes: the time to sum every K
//                and V row of the dense layers over the time to sum those of the paged layers, run by run (K then V
//                of each run) (median of 5 passes, same executor). Memory delivers scattered blocks of a few KiB
//                more slowly than one stream (DRAM pages, the hardware prefetcher), so this is the most
//                speed_vs_dense can be for a kernel that reads each byte once.
// The cache of one step is far smaller than the LLC at short contexts, so each iteration reads the next of enough
// distinct layers to span the working set (>= 1 GiB; see machine.hpp): every step streams from DRAM, as in a
// real decode over many layers.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bench_main.hpp"
#include "kvcache/kvcache.hpp"
#include "kvcache/testing/testing.hpp"
#include "machine.hpp"

namespace {

using kvcache::DType;
using kvcache::Isa;

constexpr int kKvHeads = 8;

std::map<int, double> g_read_bw;  // threads -> GB/s
// f16 step times by case (all but the dtype), for the i8 cases' speed_vs_f16: f16 cases run first.
std::map<std::string, std::vector<double>> g_f16_steps;

// Layers filled with random rows, kept while consecutive cases share (context, dim, dtype).
struct LayerSet {
  std::int64_t ctx = -1;
  int dim = 0;
  DType dtype = DType::kF32;
  std::vector<std::unique_ptr<kvcache::LayerSlots>> layers;
};
LayerSet g_layers;

// Paged layers on one pool, kept while consecutive cases share their block size.
struct PagedSet {
  int block_rows = 0, fill_rows = 0;
  std::unique_ptr<kvcache::BlockPool> pool;
  std::vector<std::unique_ptr<kvcache::LayerSlots>> layers;  // destroyed before the pool
};
PagedSet g_paged;

// fill: rows appended to each layer in turn (a block: as decode grows a cache; 256: as a prompt prefilled in chunks
// of 256 grows it, which gives each head runs of 256 / rows neighbouring blocks).
const std::vector<std::unique_ptr<kvcache::LayerSlots>>& paged_layers(std::int64_t ctx, int d, int rows, int fill) {
  if (g_paged.block_rows == rows && g_paged.fill_rows == fill) return g_paged.layers;
  g_paged.layers.clear();
  g_paged.pool.reset();
  const kvcache::AttentionShape shape{kKvHeads, kKvHeads, d, d};
  const std::size_t per_layer = std::size_t(kKvHeads) * std::size_t(ctx) * std::size_t(2 * d) * 2;
  const std::size_t n_layers = std::max<std::size_t>(2, (kvbench::working_set_bytes() + per_layer - 1) / per_layer);
  const std::int64_t blocks = std::int64_t(n_layers) * kKvHeads * ((ctx + rows - 1) / rows);
  g_paged.pool = std::make_unique<kvcache::BlockPool>(shape, DType::kF16, rows, blocks);
  std::vector<float> k(std::size_t(kKvHeads * fill * d)), v(k.size());
  std::uint32_t x = 12345;
  for (auto& e : k) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  for (auto& e : v) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  std::vector<kvcache::Position> pos(static_cast<std::size_t>(fill));
  for (std::size_t l = 0; l < n_layers; ++l)
    g_paged.layers.push_back(std::make_unique<kvcache::LayerSlots>(shape, ctx, DType::kF16, *g_paged.pool));
  for (std::int64_t done = 0; done < ctx; done += fill)
    for (auto& kv : g_paged.layers)
      kv->append(kvcache::ConstTensorView<float, 3>(k.data(), kKvHeads, fill, d),
                 kvcache::ConstTensorView<float, 3>(v.data(), kKvHeads, fill, d),
                 std::span<kvcache::Position const>(pos.data(), pos.size()));
  g_paged.block_rows = rows;
  g_paged.fill_rows = fill;
  return g_paged.layers;
}

// Seconds to sum every K and V row of the layers, head by head, run by run (one block of paged heads at a time),
// heads spread over the executor: the reading a decode step does, without the arithmetic. Median of 5 passes.
template <class Exec>
double read_rows_seconds(const std::vector<std::unique_ptr<kvcache::LayerSlots>>& layers, const Exec& ex) {
  const Isa isa = kvcache::best_isa();
  std::vector<double> passes;
  std::vector<float> sink(kKvHeads);
  for (int pass = 0; pass < 5; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& kv : layers)
      ex.parallel_for(kKvHeads, [&](int h) noexcept {
        const kvcache::HeadRows rows = kv->rows(h);
        const std::size_t k_floats = rows.k_stride / sizeof(float), v_floats = rows.v_stride / sizeof(float);
        for (std::int64_t r = 0, n; r < kv->length(h); r += n) {
          n = rows.run(r, kv->length(h));
          sink[std::size_t(h)] += kvbench::sum_floats(isa, rows.k<float>(r), std::size_t(n) * k_floats) +
                                  kvbench::sum_floats(isa, rows.v<float>(r), std::size_t(n) * v_floats);
        }
      });
    passes.push_back(kvbench::seconds_since(t0));
  }
  benchmark::DoNotOptimize(sink.data());
  return kvbench::median(passes);
}

const std::vector<std::unique_ptr<kvcache::LayerSlots>>& layers_for(std::int64_t ctx, int d, DType dt) {
  if (g_layers.ctx == ctx && g_layers.dim == d && g_layers.dtype == dt) return g_layers.layers;
  g_layers.layers.clear();
  const std::size_t per_layer = std::size_t(kKvHeads) * std::size_t(ctx) *
                                (std::size_t(2 * d) * kvcache::dtype_size(dt) + 2 * kvcache::row_scale_bytes(dt));
  const std::size_t n_layers = std::max<std::size_t>(2, (kvbench::working_set_bytes() + per_layer - 1) / per_layer);
  const std::int64_t chunk = std::min<std::int64_t>(ctx, 1024);
  std::vector<float> k(std::size_t(kKvHeads * chunk * d)), v(k.size());
  std::uint32_t x = 12345;
  for (auto& e : k) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  for (auto& e : v) e = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  std::vector<kvcache::Position> pos(static_cast<std::size_t>(chunk));
  for (std::size_t l = 0; l < n_layers; ++l) {
    auto kv = std::make_unique<kvcache::LayerSlots>(kvcache::AttentionShape{kKvHeads, kKvHeads, d, d}, ctx, dt);
    for (std::int64_t done = 0; done < ctx; done += chunk) {
      const std::int64_t m = std::min(chunk, ctx - done);
      kv->append(kvcache::ConstTensorView<float, 3>(k.data(), kKvHeads, m, d),
                 kvcache::ConstTensorView<float, 3>(v.data(), kKvHeads, m, d),
                 std::span<kvcache::Position const>(pos.data(), static_cast<std::size_t>(m)));
    }
    g_layers.layers.push_back(std::move(kv));
  }
  g_layers.ctx = ctx;
  g_layers.dim = d;
  g_layers.dtype = dt;
  return g_layers.layers;
}

template <class Exec>
void run_decode(benchmark::State& st, const std::string& key, std::int64_t ctx, int d, int g, DType dt, Isa isa,
                const Exec& ex, int block_rows = 0, int fill_rows = 0) {
  const auto& layers = block_rows > 0 ? paged_layers(ctx, d, block_rows, fill_rows) : layers_for(ctx, d, dt);
  // Paged cases: the dense layers of the same case, stepped in turn with the paged ones.
  const auto* dense = block_rows > 0 ? &layers_for(ctx, d, dt) : nullptr;
  const double peak = kvbench::fma_peak_once(isa, ex);
  kvcache::set_isa_for_testing(isa);
  const kvcache::AttentionShape shape{kKvHeads * g, kKvHeads, d, d};
  std::vector<float> q(std::size_t(shape.n_q_heads * d), 0.01f), out(q.size());
  kvcache::DecodeWorkspace ws(shape, ctx, std::max(1, ex.concurrency()));
  std::size_t i = 0, j = 0;
  double seconds = 0, dense_seconds = 0;
  const auto step_on = [&](const kvcache::LayerSlots& kv) {
    const auto t0 = std::chrono::steady_clock::now();
    kvcache::decode_attention(kv, kvcache::ConstTensorView<float, 2>(q.data(), shape.n_q_heads, d),
                              kvcache::TensorView<float, 2>(out.data(), shape.n_q_heads, d), ws, {}, ex);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    return kvbench::seconds_since(t0);
  };
  for (auto _ : st) {
    if (dense != nullptr) {
      dense_seconds += step_on(*(*dense)[j]);
      j = (j + 1) % dense->size();
    }
    seconds += step_on(*layers[i]);
    i = (i + 1) % layers.size();
  }
  kvcache::set_isa_for_testing(std::nullopt);
  const double gb = static_cast<double>(layers[0]->kv_bytes()) / 1e9;
  const double bw = g_read_bw.at(ex.concurrency());
  const double gbps = gb * static_cast<double>(st.iterations()) / seconds;
  const double gflop = 4.0 * d * static_cast<double>(ctx) * shape.n_q_heads / 1e9;
  const double step = seconds / static_cast<double>(st.iterations());
  st.counters["GBps"] = gbps;
  st.counters["bw_fraction"] = gbps / bw;
  st.counters["read_bw_GBps"] = bw;
  st.counters["GFLOPs"] = gflop / step;
  st.counters["roofline_fraction"] = std::max(gb / bw, gflop / peak) / step;
  st.counters["fma_peak_GFLOPs"] = peak;
  if (block_rows > 0) {
    st.counters["speed_vs_dense"] = dense_seconds / seconds;
    st.counters["read_ceiling_vs_dense"] = read_rows_seconds(*dense, ex) / read_rows_seconds(layers, ex);
    return;
  }
  if (dt == DType::kF16) g_f16_steps[key].push_back(step);
  if (dt == DType::kI8 && g_f16_steps.count(key) != 0) {
    std::vector<double> f = g_f16_steps[key];
    std::nth_element(f.begin(), f.begin() + std::ptrdiff_t(f.size() / 2), f.end());
    st.counters["speed_vs_f16"] = f[f.size() / 2] / step;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const kvbench::Options opt = kvbench::parse_options(argc, argv);
  g_read_bw = kvbench::measure_read_bandwidths(opt.threads);

  for (DType dt : {DType::kF16, DType::kI8, DType::kBF16, DType::kF32})
    for (int d : {128, 64})
      for (std::int64_t ctx : {32768, 4096, 1024})
        for (Isa isa : kvcache::available_isas())
          for (int g : {1, 3, 4, 5, 6, 7, 8, 16})
            for (int t : opt.threads) {
              // Group 16 is there for the amx ISA's tile scores (bf16 keys, 16 or more heads per KV head), measured
              // next to the FMA paths; elsewhere amx runs the avx512 code, so it has no other cases. Scalar would take
              // seconds a step at group 16. Groups 3, 5, 6 and 7 (Llama-3.2-3B, Qwen2.5-14B, Qwen2-1.5B, Qwen2.5-7B)
              // run as one head block of their own: AVX-512, d 128, 32k, 16-bit rows.
              const bool tiles = dt == DType::kBF16 && g >= kvcache::detail::kTileMinGroup;
              if ((g == 16 && (!tiles || isa == Isa::kScalar)) || (isa == Isa::kAmx && !tiles)) continue;
              if (g % 4 != 0 && g != 1 && (isa != Isa::kAvx512 || d != 128 || ctx != 32768 || dt == DType::kF32))
                continue;
              const std::string key = "/d" + std::to_string(d) + "/ctx" + std::to_string(ctx) + "/g" +
                                      std::to_string(g) + "/" + std::string(kvcache::isa_name(isa)) + "/threads" +
                                      std::to_string(t);
              const std::string name = "Decode/" + std::string(kvcache::dtype_name(dt)) + key;
              auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
                if (t == 1)
                  run_decode(st, key, ctx, d, g, dt, isa, kvcache::SerialExecutor{});
                else
                  run_decode(st, key, ctx, d, g, dt, isa, kvcache::OpenMPExecutor{t});
              });
              kvbench::configure(b, opt);
            }
  // Paged heads against the dense f16 cases above (the widest vector ISA; amx runs it for bf16 only).
  const auto isas = kvcache::available_isas();
  const Isa widest = std::find(isas.begin(), isas.end(), Isa::kAvx512) != isas.end() ? Isa::kAvx512 : isas.back();
  for (int rows : {16, 64, 256})
    for (int fill : rows < 256 ? std::vector<int>{rows, 256} : std::vector<int>{rows}) {
      for (int g : {1, 4, 8})
        for (int t : opt.threads) {
          const std::string key = "/d128/ctx32768/g" + std::to_string(g) + "/" +
                                  std::string(kvcache::isa_name(widest)) + "/threads" + std::to_string(t);
          const std::string name = "DecodePaged/f16" + key + "/blocks" + std::to_string(rows) +
                                   (fill == rows ? "/decode_grown" : "/prefill_grown");
          auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
            if (t == 1)
              run_decode(st, key, 32768, 128, g, DType::kF16, widest, kvcache::SerialExecutor{}, rows, fill);
            else
              run_decode(st, key, 32768, 128, g, DType::kF16, widest, kvcache::OpenMPExecutor{t}, rows, fill);
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
