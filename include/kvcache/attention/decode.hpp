#pragma once

// Decode attention for MHA, MQA and GQA: one new query per query head against every cached row of its KV head.
//
//   q:   [n_q_heads, head_dim_k] f32       out: [n_q_heads, head_dim_v] f32
//   kv:  LayerSlots; KV head h holds rows [0, length(h)) (heads may differ in length), dense or paged
//   query head i reads KV head i / (n_q_heads / n_kv_heads)
//
// The group's query heads are processed together, so each K and V row is read once per KV head; accumulation is
// fp32 for every storage type. With DecodeOptions::probabilities set, the softmax probabilities of the group,
// summed over its query heads (or, on request, per query head), are added into a per-slot accumulator the caller
// owns (the score export of H2O-like policies): the kernel keeps its exponentials in the workspace, so no second pass
// over K or V is made (with one split and a group of 4 or more, a head's K is read first and its V after, while the
// exponentials come back and are added in: detail/decode.ipp, decode_two_pass). With an executor of concurrency c, each
// KV head's rows are split into up to ceil(c / n_kv_heads) ranges (flash-decoding) whose partial softmax states are
// merged afterwards, so one sequence can use every thread.
//
// The call validates shapes and throws kvcache::Error before any work; the work itself allocates nothing.
// An empty head (length 0) gives a zero output.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>

#include "kvcache/attention/dispatch.hpp"
#include "kvcache/core/aligned_buffer.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/executor.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

struct DecodeOptions {
  float scale = 0.0f;  ///< 0: 1 / sqrt(head_dim_k)
  /// Optional [n_kv_heads, probabilities_stride] accumulator: entry (h, j) += sum over h's query heads of the
  /// probability given to slot j, for j in [0, length(h)). probabilities_stride >= capacity.
  float* probabilities = nullptr;
  std::int64_t probabilities_stride = 0;
  /// The accumulator is [n_q_heads, probabilities_stride] instead, one row per query head (row i: query head i, whose
  /// slots are those of KV head i / group), for reductions that need the heads apart (GqaReduce::kMax).
  bool probabilities_per_query_head = false;
  /// With probabilities_per_query_head, optional [n_kv_heads, probabilities_stride]: entry (h, j) is set to the
  /// maximum over h's query-head rows after the step's addition (what GqaReduce::kMax ranks by), in the same pass.
  float* probabilities_max = nullptr;
  /// Split each head's rows across at most this many tasks (0: as the executor's concurrency needs; 1: never).
  int max_splits = 0;
  /// Optional: head_done(head_done_context, h) is called once per KV head h, in the task that finishes it, after the
  /// step's last read of h's rows and length and after h's probabilities are in the accumulator. The callback may
  /// change head h's rows (KVCache evicts there, while the head's scores are still in cache; after the whole step
  /// they came back from L3: ~0.01 of the attention at 8k rows). Calls for different heads may run at once.
  void (*head_done)(void* context, int kv_head) noexcept = nullptr;
  void* head_done_context = nullptr;
};

/// Scratch memory of decode_attention, sized once for a layer shape and capacity. One workspace serves one call
/// at a time.
class DecodeWorkspace {
 public:
  /// max_splits: the most splits per head any call will use. probabilities: whether calls may export them.
  DecodeWorkspace(const AttentionShape& shape, std::int64_t capacity, int max_splits = 1, bool probabilities = false)
      : n_kv_(shape.n_kv_heads),
        g_(shape.group_size()),
        dv_(shape.dim_v()),
        capacity_(capacity),
        max_splits_(max_splits),
        probabilities_(probabilities) {
    shape.validate();
    KVCACHE_REQUIRE(max_splits >= 1 && max_splits <= 1024, "max_splits must be in [1, 1024], got ", max_splits);
    KVCACHE_REQUIRE(capacity > 0, "capacity must be positive, got ", capacity);
    partial_stride_ = detail::pad_to(static_cast<std::size_t>(g_) * static_cast<std::size_t>(dv_ + 2), 16);
    partials_ = AlignedBuffer(sizeof(float) * partial_stride_ * std::size_t(n_kv_) * std::size_t(max_splits));
    if (probabilities) {
      tiles_ = (std::size_t(capacity) + detail::kDecodeTile - 1) / detail::kDecodeTile;
      logits_ = AlignedBuffer(sizeof(float) * std::size_t(n_kv_) * std::size_t(g_) * std::size_t(capacity));
      tile_max_ = AlignedBuffer(sizeof(float) * std::size_t(n_kv_) * std::size_t(g_) * tiles_);
      logits_busy_ = std::make_unique<std::atomic<bool>[]>(std::size_t(n_kv_));
    }
    query_stride_ = detail::pad_to(static_cast<std::size_t>(shape.head_dim_k), 16);
    queries_ = AlignedBuffer(sizeof(float) * query_stride_ * std::size_t(shape.n_q_heads));
    tile_stride_ = detail::decode_scratch_floats(g_, shape.head_dim_k, shape.dim_v());
    tile_scores_ = AlignedBuffer(sizeof(float) * tile_stride_ * std::size_t(n_kv_) * std::size_t(max_splits));
  }

  [[nodiscard]] int max_splits() const noexcept { return max_splits_; }
  [[nodiscard]] bool has_probabilities() const noexcept { return probabilities_; }
  [[nodiscard]] std::int64_t capacity() const noexcept { return capacity_; }
  /// Bytes this workspace holds (all of it allocated by the constructor).
  [[nodiscard]] std::size_t bytes() const noexcept {
    return partials_.size() + logits_.size() + tile_max_.size() + queries_.size() + tile_scores_.size() +
           (logits_busy_ ? sizeof(std::atomic<bool>) * std::size_t(n_kv_) : 0);
  }

  // o: [g, dv], then m: [g], then l: [g]
  float* partial(int h, int split) noexcept {
    return partials_.as<float>() + partial_stride_ * (std::size_t(h) * std::size_t(max_splits_) + std::size_t(split));
  }
  // Query head i, pre-scaled, 64-byte aligned (a query loaded across two cache lines costs the score loop a third
  // of its speed). Row stride query_stride().
  float* query(int i) noexcept { return queries_.as<float>() + query_stride_ * std::size_t(i); }
  [[nodiscard]] std::size_t query_stride() const noexcept { return query_stride_; }
  // decode_scratch_floats(g, dk, dv): the scores of one tile [g, kDecodeTile] and tile operands, for the task of
  // (head h, split)
  float* tile_scores(int h, int split) noexcept {
    return tile_scores_.as<float>() + tile_stride_ * (std::size_t(h) * std::size_t(max_splits_) + std::size_t(split));
  }
  // [g, capacity]: unnormalised probabilities of head h's rows
  float* logits(int h) noexcept {
    return logits_.as<float>() + std::size_t(h) * std::size_t(g_) * std::size_t(capacity_);
  }
  // A logits buffer for one task of a one-split call, which consumes it before it returns: the lowest free one, so
  // that every head reuses the same few (one per running thread) and they stay in cache. Writing a buffer per head
  // sent g x length x 4 bytes per head back to memory each step (0.01 - 0.02 of the attention at 3k rows).
  // At most n_kv tasks run at once, so one is always free.
  int claim_logits() noexcept {
    for (int i = 0;; i = i + 1 < n_kv_ ? i + 1 : 0)
      if (!logits_busy_[std::size_t(i)].load(std::memory_order_relaxed) &&
          !logits_busy_[std::size_t(i)].exchange(true, std::memory_order_acquire))
        return i;
  }
  void release_logits(int i) noexcept { logits_busy_[std::size_t(i)].store(false, std::memory_order_release); }
  // [g, tiles()]: the running maximum after each tile, later the per-tile normalisation
  float* tile_max(int h) noexcept { return tile_max_.as<float>() + std::size_t(h) * std::size_t(g_) * tiles_; }
  [[nodiscard]] std::int64_t tiles() const noexcept { return static_cast<std::int64_t>(tiles_); }
  void check(int n_kv, int g, int dv, std::int64_t max_len, bool probs) const {
    KVCACHE_REQUIRE(n_kv == n_kv_ && g == g_ && dv == dv_, "decode workspace was made for ", n_kv_, " KV heads, group ",
                    g_, ", head_dim_v ", dv_, "; the call has ", n_kv, ", ", g, ", ", dv);
    KVCACHE_REQUIRE(!probs || probabilities_, "decode asks for probabilities, but its workspace was made without");
    KVCACHE_REQUIRE(!probs || max_len <= capacity_, "decode workspace holds logits for ", capacity_,
                    " rows, a head has ", max_len);
  }

 private:
  int n_kv_, g_, dv_;
  std::int64_t capacity_;
  int max_splits_;
  bool probabilities_;
  std::size_t partial_stride_ = 0, query_stride_ = 0, tiles_ = 0, tile_stride_ = 0;
  AlignedBuffer partials_, logits_, tile_max_, queries_, tile_scores_;
  std::unique_ptr<std::atomic<bool>[]> logits_busy_;  // claim_logits(): which logits buffers a running task holds
};

namespace detail {

template <class T>
void decode_head_range(Isa isa, const float* q, int ldq, int g, int dk, int dv, int ldv, const TypedRows<T>& rows,
                       std::int64_t r0, std::int64_t r1, float* o, float* m, float* l, float* probs, std::int64_t ld,
                       float* tile_max, std::int64_t ldt, float* s, float* acc, std::int64_t acc_ld,
                       float* acc_max) noexcept {
#if KVCACHE_HAVE_VNNI
  // int8 rows with a group to share each loaded row: integer dot products (kernels/vnni.hpp). Group 1 is bound by
  // the bytes it reads and stays on the FMA kernel.
  if constexpr (std::is_same_v<T, i8>)
    if (g >= 2 && vnni_active(isa))
      return kernels::vnni::decode_partial(q, ldq, g, dk, dv, ldv, rows, r0, r1, o, m, l, probs, ld, tile_max, ldt, s,
                                           acc, acc_ld, acc_max);
#endif
  KVCACHE_DISPATCH_ATTENTION(
      isa, decode_partial,
      (q, ldq, g, dk, dv, ldv, rows, r0, r1, o, m, l, probs, ld, tile_max, ldt, s, acc, acc_ld, acc_max))
}
inline void decode_probabilities(Isa isa, const float* probs, int g, std::int64_t ld, std::int64_t n, float* tile_max,
                                 std::int64_t ldt, const float* m, const float* l, float* acc, std::int64_t acc_ld,
                                 float* acc_max) noexcept {
  KVCACHE_DISPATCH_ATTENTION(isa, accumulate_probabilities,
                             (probs, g, ld, n, tile_max, ldt, m, l, acc, acc_ld, acc_max))
}

template <class T, class Exec>
void decode_run(Isa isa, const LayerSlots& kv, const float* q, float* out, int n_q, DecodeWorkspace& ws,
                const DecodeOptions& opt, float scale, int splits, const Exec& ex) {
  const int n_kv = kv.n_kv_heads(), g = n_q / n_kv, dk = kv.head_dim_k(), dv = kv.head_dim_v();
  const bool probs = opt.probabilities != nullptr;
  // KV head h's accumulator: one row, or g rows (one per query head) at acc_ld.
  const std::int64_t acc_ld = opt.probabilities_per_query_head ? opt.probabilities_stride : 0;
  auto acc_of = [&](int h) {
    return opt.probabilities +
           std::size_t(opt.probabilities_per_query_head ? h * g : h) * std::size_t(opt.probabilities_stride);
  };
  auto max_of = [&](int h) {
    return opt.probabilities_per_query_head && opt.probabilities_max != nullptr
               ? opt.probabilities_max + std::size_t(h) * std::size_t(opt.probabilities_stride)
               : nullptr;
  };
  const int ldq = static_cast<int>(ws.query_stride());
  for (int i = 0; i < n_q; ++i)
    for (int c = 0; c < dk; ++c) ws.query(i)[c] = q[std::size_t(i) * std::size_t(dk) + std::size_t(c)] * scale;
  // Split s of head h covers rows [len * s / splits, len * (s + 1) / splits), with inner boundaries rounded down to
  // whole tiles (the probability export indexes tiles from row 0). All g heads of a group go in one call, so each
  // tile of rows is read from memory once per step (MLA: 128 heads on one latent).
  auto split_at = [splits](std::int64_t len, int s) {
    return s >= splits ? len : len * s / splits / kDecodeTile * kDecodeTile;
  };
  ex.parallel_for(n_kv * splits, [&](int item) noexcept {
    const int h = item / splits, s = item % splits;
    const std::int64_t len = kv.length(h);
    const std::int64_t r0 = split_at(len, s), r1 = split_at(len, s + 1);
    const TypedRows<T> rows(kv.rows(h));
    float* part = ws.partial(h, s);
    // One split: the head's probabilities go into the scores in its own task, inside the kernel (after all heads
    // they came back from memory: 0.03 of the attention at 3k rows).
    const bool now = probs && splits == 1;
    const int buf = now ? ws.claim_logits() : h;
    decode_head_range(isa, ws.query(h * g), ldq, g, dk, dv, kv.v_stride(), rows, r0, r1, part,
                      part + std::size_t(g) * std::size_t(dv), part + std::size_t(g) * std::size_t(dv) + g,
                      probs ? ws.logits(buf) : nullptr, ws.capacity(), probs ? ws.tile_max(h) : nullptr, ws.tiles(),
                      ws.tile_scores(h, s), now ? acc_of(h) : nullptr, acc_ld, now ? max_of(h) : nullptr);
    if (now) ws.release_logits(buf);
    if (splits == 1 && opt.head_done != nullptr) opt.head_done(opt.head_done_context, h);
  });
  // Merge the splits of each head: M = max m_s, L = sum l_s e^(m_s - M), out = sum o_s e^(m_s - M) / L.
  ex.parallel_for(n_kv, [&](int h) noexcept {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    float m_all[kMaxGroup], l_all[kMaxGroup];
    for (int i = 0; i < g; ++i) {
      float mx = kNegInf;
      for (int s = 0; s < splits; ++s) mx = std::max(mx, ws.partial(h, s)[g * dv + i]);
      float lsum = 0.0f;
      float* dst = out + std::size_t(h * g + i) * std::size_t(dv);
      for (int c = 0; c < dv; ++c) dst[c] = 0.0f;
      for (int s = 0; s < splits; ++s) {
        float const* part = ws.partial(h, s);
        const float ms = part[g * dv + i];
        if (ms == kNegInf) continue;
        const float w = std::exp(ms - mx);
        lsum += part[g * dv + g + i] * w;
        for (int c = 0; c < dv; ++c) dst[c] += part[i * dv + c] * w;
      }
      const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
      for (int c = 0; c < dv; ++c) dst[c] *= inv;
      m_all[i] = mx;
      l_all[i] = lsum;
    }
    if (probs && splits > 1 && kv.length(h) > 0)
      decode_probabilities(isa, ws.logits(h), g, ws.capacity(), kv.length(h), ws.tile_max(h), ws.tiles(), m_all, l_all,
                           acc_of(h), acc_ld, max_of(h));
    if (splits > 1 && opt.head_done != nullptr) opt.head_done(opt.head_done_context, h);
  });
}

}  // namespace detail

/// Decode attention of one layer step; see the top of this header for shapes and semantics.
template <class Exec = SerialExecutor>
void decode_attention(const LayerSlots& kv, ConstTensorView<float, 2> q, TensorView<float, 2> out, DecodeWorkspace& ws,
                      const DecodeOptions& opt = {}, const Exec& ex = Exec{}) {
  const int n_kv = kv.n_kv_heads();
  const auto n_q = static_cast<int>(q.dimension(0));
  KVCACHE_REQUIRE(n_q > 0 && n_q % n_kv == 0, "decode: ", n_q, " query heads are not a multiple of the ", n_kv,
                  " KV heads");
  KVCACHE_REQUIRE(n_q / n_kv <= detail::kMaxGroup, "decode: group size ", n_q / n_kv, " exceeds ", detail::kMaxGroup);
  KVCACHE_REQUIRE(q.dimension(1) == kv.head_dim_k(), "decode: queries have width ", q.dimension(1), ", head_dim_k is ",
                  kv.head_dim_k());
  KVCACHE_REQUIRE(out.dimension(0) == n_q && out.dimension(1) == kv.head_dim_v(), "decode: output is [",
                  out.dimension(0), ", ", out.dimension(1), "], expected [", n_q, ", ", kv.head_dim_v(), "]");
  const bool probs = opt.probabilities != nullptr;
  KVCACHE_REQUIRE(!probs || opt.probabilities_stride >= kv.max_length(), "decode: probabilities_stride ",
                  opt.probabilities_stride, " is below the longest head (", kv.max_length(), " rows)");
  KVCACHE_REQUIRE(opt.probabilities_max == nullptr || (probs && opt.probabilities_per_query_head),
                  "decode: probabilities_max is the maximum over per-query-head rows; it needs probabilities and "
                  "probabilities_per_query_head");
  ws.check(n_kv, n_q / n_kv, kv.head_dim_v(), kv.max_length(), probs);
  const float scale = opt.scale != 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(kv.head_dim_k()));
  int splits = opt.max_splits > 0 ? opt.max_splits : (ex.concurrency() + n_kv - 1) / n_kv;
  splits = std::clamp(splits, 1, ws.max_splits());
  // A split below ~256 rows costs more in merging than it gains.
  splits = static_cast<int>(std::clamp<std::int64_t>(kv.max_length() / 256, 1, splits));
  const Isa isa = active_isa();
  switch (kv.dtype()) {
    case DType::kF32:
      return detail::decode_run<float>(isa, kv, q.data(), out.data(), n_q, ws, opt, scale, splits, ex);
    case DType::kF16:
      return detail::decode_run<f16>(isa, kv, q.data(), out.data(), n_q, ws, opt, scale, splits, ex);
    case DType::kBF16:
      return detail::decode_run<bf16>(isa, kv, q.data(), out.data(), n_q, ws, opt, scale, splits, ex);
    case DType::kI8:
      return detail::decode_run<i8>(isa, kv, q.data(), out.data(), n_q, ws, opt, scale, splits, ex);
  }
}

}  // namespace kvcache
