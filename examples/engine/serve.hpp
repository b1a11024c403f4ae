#pragma once

// Serving: many sequences on one BlockPool, as an engine runs them. Each sequence is a KVCache on the pool; an
// admission rule reserves the blocks a sequence can need at its worst (from the policy's budgets, the prompt chunk and
// the decode length) and admits sequences until the pool holds no further reservation; the admitted sequences are
// prefilled chunk by chunk and then decoded together, one token of every sequence per step, the sequences split over
// the executor's threads. Not part of the installed library.

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <thread>
#include <type_traits>
#include <vector>

#include "engine/tasks.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

/// Runs f(w) for w in [0, threads) on that many threads (the caller's among them): one task per worker, each worker
/// owning a model and the sequences w, w + threads, ...
struct ThreadExecutor {
  int threads = 2;
  [[nodiscard]] int concurrency() const noexcept { return threads; }
  template <class F>
  void parallel_for(int n, F&& f) const {
    std::vector<std::thread> pool;
    for (int w = 1; w < n; ++w) pool.emplace_back([&f, w] { f(w); });
    if (n > 0) f(0);
    for (auto& t : pool) t.join();
  }
};

/// The most rows head (l, h) of a cache with policy p can hold over a sequence of `prompt` tokens prefilled in chunks
/// of `chunk` (0: one call) and `decode` decoded tokens: what an engine reserves for it. A prompt chunk is appended
/// before the policy compresses, a decode row before it evicts; a policy that does not evict during decode (SnapKV)
/// grows by one row per step; one without a static budget (Full, FastGen) may keep everything.
template <class P>
std::int64_t head_rows_bound(const P& p, const kvcache::KVCacheOptions& opt, int l, int h, std::int64_t prompt,
                             std::int64_t decode, std::int64_t chunk) {
  const kvcache::PolicyNeeds n = p.needs();
  const std::int64_t all = prompt + decode;
  kvcache::ResolvedBudget b = p.budget(l, h, prompt);
  if (opt.budget_override) b = opt.budget_override(l, h, b);
  if (b.unlimited() || !n.compress_after_prefill) return all;
  const bool chunked = opt.compress_each_chunk && n.compress_each_chunk && chunk > 0;
  // A chunk, or the last one with a remainder shorter than the observation window (prefill_chunked).
  const std::int64_t longest_chunk = chunk + std::max<std::int64_t>(n.prefill_window - 1, 0);
  const std::int64_t prefill = chunked ? std::min(prompt, b.total + longest_chunk) : prompt;
  const std::int64_t after = std::min(prompt, b.total);
  const std::int64_t steps = n.evict_during_decode ? std::max(after, b.total + opt.eviction_slack + 1) : after + decode;
  return std::min(all, std::max(prefill, steps));
}

struct ServeSettings {
  std::int64_t prompt = 8192;  ///< prompt bytes per sequence
  std::int64_t decode = 512;   ///< bytes decoded per sequence (teacher-forced, scored)
  std::int64_t chunk = 256;    ///< prompt bytes per prefill call
  int threads = 2;
};

struct ServeResult {
  int sequences = 0;                  ///< admitted: as many as the pool holds the reservations of
  std::int64_t blocks_total = 0;      ///< the pool's
  std::int64_t reserved_blocks = 0;   ///< per sequence
  std::int64_t peak_blocks_used = 0;  ///< the most blocks all sequences held at once (BlockPool::blocks_used_peak)
  std::int64_t head_rows_bound = 0;   ///< the most rows a head may hold (the caches' capacity)
  double prefill_peak_rows = 0;       ///< the most rows a head held while its prompt went in, measured
  std::size_t state_bytes = 0;        ///< per sequence outside the pool (block tables, positions, columns, workspaces)
  double bits = 0, scored = 0;        ///< over the decoded bytes of every sequence
  double prefill_seconds = 0, decode_seconds = 0, decode_tokens = 0;

  [[nodiscard]] double bits_per_byte() const { return bits / scored; }
  [[nodiscard]] double decode_tokens_per_s() const { return decode_tokens / decode_seconds; }
};

/// Serves windows (each at least prompt + decode bytes) on `pool` with the policy `make(i)` gives sequence i and
/// options opt (compress_each_chunk set here). models: one engine per thread (an engine records the tokens it runs,
/// so a thread's sequences share only that thread's engine). Sequences are admitted in order while the pool has
/// blocks for one more reservation, at most windows.size().
template <class Model, class MakePolicy>
ServeResult serve(std::vector<Model>& models, kvcache::BlockPool& pool, const kvcache::CacheConfig& shape_config,
                  MakePolicy&& make, kvcache::KVCacheOptions opt, const std::vector<std::vector<int>>& windows,
                  const ServeSettings& s) {
  using P = std::decay_t<decltype(make(std::size_t{0}))>;
  using Clock = std::chrono::steady_clock;
  KVCACHE_REQUIRE(int(models.size()) >= s.threads && s.threads >= 1, "serve: ", models.size(), " engines for ",
                  s.threads, " threads");
  opt.compress_each_chunk = s.chunk > 0;
  ServeResult r;
  r.blocks_total = pool.blocks_total();
  const P probe = make(std::size_t{0});
  kvcache::CacheConfig cfg = shape_config;
  const std::int64_t B = pool.block_rows();
  for (int l = 0; l < cfg.n_layers; ++l)
    for (int h = 0; h < cfg.shape.n_kv_heads; ++h) {
      const std::int64_t rows = head_rows_bound(probe, opt, l, h, s.prompt, s.decode, s.chunk);
      r.head_rows_bound = std::max(r.head_rows_bound, rows);
      r.reserved_blocks += (rows + B - 1) / B;
    }
  cfg.capacity = r.head_rows_bound;
  const auto admitted = std::min<std::int64_t>(std::int64_t(windows.size()), r.blocks_total / r.reserved_blocks);
  r.sequences = int(admitted);
  if (admitted == 0) return r;

  std::vector<kvcache::KVCache<P>> caches;
  caches.reserve(std::size_t(admitted));
  for (std::int64_t i = 0; i < admitted; ++i) caches.emplace_back(cfg, pool, make(std::size_t(i)), opt);
  r.state_bytes = caches.front().state_bytes();
  std::vector<Eigen::VectorXf> last(static_cast<std::size_t>(admitted));
  std::vector<double> peak(std::size_t(s.threads), 0.0), bits(std::size_t(s.threads), 0.0);
  const ThreadExecutor exec{s.threads};

  pool.reset_peak();
  const auto t0 = Clock::now();
  exec.parallel_for(s.threads, [&](int w) {
    for (std::int64_t i = w; i < admitted; i += s.threads) {
      const std::span<const int> prompt(windows[std::size_t(i)].data(), std::size_t(s.prompt));
      const Matrix logits =
          prefill_chunked(models[std::size_t(w)], caches[std::size_t(i)], prompt, 0, s.chunk, peak[std::size_t(w)]);
      last[std::size_t(i)] = logits.row(logits.rows() - 1).transpose();
    }
  });
  r.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (double p : peak) r.prefill_peak_rows = std::max(r.prefill_peak_rows, p);

  const auto t1 = Clock::now();
  for (std::int64_t t = s.prompt; t < s.prompt + s.decode; ++t) {
    exec.parallel_for(s.threads, [&](int w) {
      for (std::int64_t i = w; i < admitted; i += s.threads) {
        const int byte = windows[std::size_t(i)][std::size_t(t)];
        bits[std::size_t(w)] += detail::surprisal_bits(last[std::size_t(i)], byte);
        last[std::size_t(i)] = models[std::size_t(w)].decode(caches[std::size_t(i)], byte, kvcache::Position(t));
      }
    });
  }
  r.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  r.peak_blocks_used = pool.blocks_used_peak();
  r.decode_tokens = double(admitted * s.decode);
  r.scored = r.decode_tokens;
  for (double b : bits) r.bits += b;
  return r;
}

}  // namespace engine
