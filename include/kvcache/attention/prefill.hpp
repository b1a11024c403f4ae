#pragma once

// Causal prefill attention for MHA, MQA and GQA: a block of new queries against the cache, whose last n_new rows of
// every head are the new tokens' keys and values (append them first). Earlier rows of the head (earlier chunks of a
// chunked prefill, or what a policy kept) are visible to every new query; among the new rows, token t sees rows up
// to and including its own. Tiles above that diagonal are never visited.
//
//   q:   [n_new, n_q_heads, head_dim_k] f32 (token-major, as a QKV projection writes it)
//   out: [n_new, n_q_heads, head_dim_v] f32
//
// With PrefillOptions::column_sums set, the final softmax probabilities of the query tokens in
// [column_sums_begin, column_sums_end) are summed over those tokens and the group's query heads (or kept per query
// head) and added into a per-slot accumulator the caller owns (H2O: all tokens; SnapKV: the last W). This costs one
// more Q.K^T sweep over those tokens only; no n x n matrix is formed. Work is split over (KV head, token block) pairs,
// or over KV heads alone when column sums are requested (each head's accumulator then has one writer).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kvcache/attention/dispatch.hpp"
#include "kvcache/core/aligned_buffer.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/executor.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

struct PrefillOptions {
  float scale = 0.0f;  ///< 0: 1 / sqrt(head_dim_k)
  /// Optional [n_kv_heads, column_sums_stride] accumulator: entry (h, j) += sum over the chosen tokens and h's query
  /// heads of the probability given to slot j. column_sums_stride >= length of the longest head.
  float* column_sums = nullptr;
  std::int64_t column_sums_stride = 0;
  std::int64_t column_sums_begin = 0;  ///< first new token whose probabilities are summed
  std::int64_t column_sums_end = -1;   ///< one past the last; -1: n_new
  /// The accumulator is [n_q_heads, column_sums_stride] instead, one row per query head (row i: query head i, whose
  /// slots are those of KV head i / group), for reductions that need the heads apart (GqaReduce::kMax).
  bool column_sums_per_query_head = false;
};

/// Scratch memory of prefill_attention: one slice per worker, sized once for a head shape.
class PrefillWorkspace {
 public:
  explicit PrefillWorkspace(const AttentionShape& shape, int max_workers = 1)
      : dk_(shape.head_dim_k), dv_(shape.dim_v()), max_workers_(max_workers) {
    shape.validate();
    KVCACHE_REQUIRE(max_workers >= 1 && max_workers <= 1024, "max_workers must be in [1, 1024], got ", max_workers);
    per_worker_ = detail::prefill_scratch_floats(dk_, dv_);
    scratch_ = AlignedBuffer(sizeof(float) * per_worker_ * std::size_t(max_workers));
  }
  [[nodiscard]] int max_workers() const noexcept { return max_workers_; }
  /// Bytes this workspace holds (all of it allocated by the constructor).
  [[nodiscard]] std::size_t bytes() const noexcept { return scratch_.size(); }
  float* worker(int w) noexcept { return scratch_.as<float>() + per_worker_ * std::size_t(w); }
  void check(int dk, int dv) const {
    KVCACHE_REQUIRE(dk == dk_ && dv == dv_, "prefill workspace was made for head dims ", dk_, "/", dv_,
                    ", the call has ", dk, "/", dv);
  }

 private:
  int dk_, dv_, max_workers_;
  std::size_t per_worker_ = 0;
  AlignedBuffer scratch_;
};

namespace detail {

template <class T>
void prefill_unit(Isa isa, const PrefillArgs& a, const TypedRows<T>& rows, float* scratch) noexcept {
  KVCACHE_DISPATCH_ATTENTION(isa, prefill_unit, (a, rows, scratch))
}

template <class T, class Exec>
void prefill_run(Isa isa, const LayerSlots& kv, const float* q, float* out, std::int64_t n_new, int n_q,
                 PrefillWorkspace& ws, const PrefillOptions& opt, float scale, const Exec& ex) {
  const int n_kv = kv.n_kv_heads(), g = n_q / n_kv;
  // A group wider than a block's rows (MLA: every head on one latent) goes in chunks of at most kPrefillMaxRows heads.
  const int chunks = (g + kPrefillMaxRows - 1) / kPrefillMaxRows, gc = (g + chunks - 1) / chunks;
  const std::int64_t tokens = prefill_tokens_per_block(gc);
  const std::int64_t n_blocks = (n_new + tokens - 1) / tokens, per_head = chunks * n_blocks;
  const bool sums = opt.column_sums != nullptr;
  const std::int64_t cs_end = opt.column_sums_end < 0 ? n_new : opt.column_sums_end;
  // With column sums a unit is a whole KV head (its blocks and chunks add into one row, so one worker owns it).
  const std::int64_t units = sums ? n_kv : n_kv * per_head;
  const int workers =
      static_cast<int>(std::clamp<std::int64_t>(ex.concurrency(), 1, std::min<std::int64_t>(ws.max_workers(), units)));
  ex.parallel_for(workers, [&](int w) noexcept {
    float* scratch = ws.worker(w);
    for (std::int64_t u = w; u < units; u += workers) {
      const int h = static_cast<int>(sums ? u : u / per_head);
      const std::int64_t first = sums ? 0 : u % per_head, last = sums ? per_head : first + 1;
      for (std::int64_t item = first; item < last; ++item) {
        const int c = static_cast<int>(item / n_blocks);
        const std::int64_t b = item % n_blocks;
        PrefillArgs a{};
        a.q = q;
        a.out = out;
        a.n_q = n_q;
        a.g = std::min(gc, g - c * gc);
        a.head0 = h * g + c * gc;
        a.dk = kv.head_dim_k();
        a.dv = kv.head_dim_v();
        a.v_stride = kv.v_stride();
        a.kv_head = h;
        a.n_old = kv.length(h) - n_new;
        a.t0 = b * tokens;
        a.t1 = std::min(n_new, a.t0 + tokens);
        a.scale = scale;
        const int row = opt.column_sums_per_query_head ? a.head0 : h;
        a.colsum = sums ? opt.column_sums + std::size_t(row) * std::size_t(opt.column_sums_stride) : nullptr;
        a.colsum_ld = opt.column_sums_per_query_head ? opt.column_sums_stride : 0;
        a.cs0 = opt.column_sums_begin;
        a.cs1 = cs_end;
        prefill_unit(isa, a, TypedRows<T>(kv.rows(h)), scratch);
      }
    }
  });
}

}  // namespace detail

/// Causal prefill attention of one layer; see the top of this header for shapes and semantics.
template <class Exec = SerialExecutor>
void prefill_attention(const LayerSlots& kv, ConstTensorView<float, 3> q, TensorView<float, 3> out,
                       PrefillWorkspace& ws, const PrefillOptions& opt = {}, const Exec& ex = Exec{}) {
  const int n_kv = kv.n_kv_heads();
  const std::int64_t n_new = q.dimension(0);
  const auto n_q = static_cast<int>(q.dimension(1));
  KVCACHE_REQUIRE(n_q > 0 && n_q % n_kv == 0, "prefill: ", n_q, " query heads are not a multiple of the ", n_kv,
                  " KV heads");
  KVCACHE_REQUIRE(n_q / n_kv <= detail::kMaxGroup, "prefill: group size ", n_q / n_kv, " exceeds ", detail::kMaxGroup);
  KVCACHE_REQUIRE(q.dimension(2) == kv.head_dim_k(), "prefill: queries have width ", q.dimension(2), ", head_dim_k is ",
                  kv.head_dim_k());
  KVCACHE_REQUIRE(out.dimension(0) == n_new && out.dimension(1) == n_q && out.dimension(2) == kv.head_dim_v(),
                  "prefill: output is [", out.dimension(0), ", ", out.dimension(1), ", ", out.dimension(2),
                  "], expected [", n_new, ", ", n_q, ", ", kv.head_dim_v(), "]");
  for (int h = 0; h < n_kv; ++h)
    KVCACHE_REQUIRE(kv.length(h) >= n_new, "prefill: ", n_new, " new tokens but KV head ", h, " holds only ",
                    kv.length(h), " rows (append the new keys and values first)");
  ws.check(kv.head_dim_k(), kv.head_dim_v());
  if (opt.column_sums != nullptr) {
    const std::int64_t end = opt.column_sums_end < 0 ? n_new : opt.column_sums_end;
    KVCACHE_REQUIRE(opt.column_sums_begin >= 0 && opt.column_sums_begin <= end && end <= n_new,
                    "prefill: column-sum tokens [", opt.column_sums_begin, ", ", end, ") are not inside [0, ", n_new,
                    ")");
    KVCACHE_REQUIRE(opt.column_sums_stride >= kv.max_length(), "prefill: column_sums_stride ", opt.column_sums_stride,
                    " is below the longest head (", kv.max_length(), " rows)");
  }
  if (n_new == 0) return;
  const float scale = opt.scale != 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(kv.head_dim_k()));
  const Isa isa = active_isa();
  switch (kv.dtype()) {
    case DType::kF32:
      return detail::prefill_run<float>(isa, kv, q.data(), out.data(), n_new, n_q, ws, opt, scale, ex);
    case DType::kF16:
      return detail::prefill_run<f16>(isa, kv, q.data(), out.data(), n_new, n_q, ws, opt, scale, ex);
    case DType::kBF16:
      return detail::prefill_run<bf16>(isa, kv, q.data(), out.data(), n_new, n_q, ws, opt, scale, ex);
    case DType::kI8:
      return detail::prefill_run<i8>(isa, kv, q.data(), out.data(), n_new, n_q, ws, opt, scale, ex);
  }
}

}  // namespace kvcache
