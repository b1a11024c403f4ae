#pragma once

// StreamingLLM (Xiao, Tian, Chen, Han, Lewis; ICLR 2024, "Efficient Streaming Language Models with Attention
// Sinks"; docs/policies/streaming_llm.md).
//
// Algorithm (official StartRecentKVCache.__call__, run after every step):
//   keep   the first `sinks` tokens (the attention sinks) and the `recent` newest tokens;
//   evict  everything between them.
// No scores: all other rows rank alike, so the selection reads positions alone (Priority::by_age()).
//
// Positions (paper Sec. 3.2). kOriginal: keys stay rotated at their original positions (kvpress's StreamingLLMPress
// does this alone). kInCache, the paper's mode: positions are counted inside the cache, so query-key distances never
// exceed the cache size. RoPE depends only on the query-key distance, so with sinks + a contiguous recent window the
// paper's positions are reproduced exactly by leaving the window keys at their original rotation and the query at
// its original position, and re-rotating only the sink keys to sit (n - 1 - rank) before the query. Each decode step
// does that from an f32 copy of each sink key taken when it was appended (f16/bf16 storage does not drift), costing
// `sinks` rotations per head and step instead of the official re-rotation of the whole cache. Needs
// KVCacheOptions::rope. In the latent layout (MLA) only the RoPE key at the end of each row is rotated.
//
// Defaults: sinks = 4 (paper Table 2; run_streaming_llama.py start_size=4), recent = 2000 (the chat demo); the
// perplexity script's 1 + 255 is experiment-specific. Budget = sinks + recent.

#include <algorithm>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "kvcache/core/error.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/policy/rotate.hpp"

namespace kvcache {

struct StreamingLLM {
  enum class Positions : std::uint8_t { kOriginal, kInCache };
  static constexpr std::string_view kName = "streaming_llm";

  std::int64_t sinks = 4;
  std::int64_t recent = 2000;
  Positions positions = Positions::kInCache;

  StreamingLLM() = default;
  StreamingLLM(std::int64_t sinks_, std::int64_t recent_, Positions positions_ = Positions::kInCache)
      : sinks(sinks_), recent(recent_), positions(positions_) {
    KVCACHE_REQUIRE(sinks >= 0, "StreamingLLM: sinks must be >= 0, got ", sinks);
    KVCACHE_REQUIRE(recent >= 1, "StreamingLLM: recent must be >= 1, got ", recent);
  }

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.compress_each_chunk = true;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t) const noexcept {
    return ResolvedBudget{sinks + recent, recent, sinks};
  }
  [[nodiscard]] Priority rank(const RankInput&) const noexcept { return Priority::by_age(); }

  // ---- in-cache positions ----

  /// The position each stored key is rotated at (in-cache mode).
  struct RotatedAt {
    using type = double;
  };
  /// The sink keys at their original rotation, where each sink sits, and the rotation of the last shift.
  struct State {
    bool in_cache = false;
    Rope rope;
    int offset = 0;  // where a key row's rotated part starts: 0, or head_dim_v in the latent layout
    int dk = 0, n_kv = 0;
    std::int64_t sinks = 0;
    std::vector<float> sink_keys;          // [layers, n_kv, sinks, dk], f32 at the original rotation
    std::vector<std::int64_t> sink_slots;  // [layers, n_kv, sinks]: the slot of each sink, -1 before it arrives
    std::vector<float> row;                // [dk]
    std::vector<double> cos, sin;          // the angles of the last shift, reused while it is unchanged
    double delta = 0.0;
    bool cached = false;

    [[nodiscard]] std::size_t bytes() const noexcept {
      return sink_keys.size() * sizeof(float) + sink_slots.size() * sizeof(std::int64_t) + row.size() * sizeof(float) +
             (cos.size() + sin.size()) * sizeof(double);
    }
    void reset() noexcept {
      std::fill(sink_slots.begin(), sink_slots.end(), -1);
      cached = false;
    }
    std::int64_t* slots(int layer, int h) noexcept {
      return sink_slots.data() + (std::size_t(layer) * n_kv + h) * sinks;
    }
    float* key(int layer, int h, std::int64_t p) noexcept {
      return sink_keys.data() + ((std::size_t(layer) * n_kv + h) * sinks + p) * std::size_t(dk);
    }
  };
  using Ctx = PolicyContext<State>;

  [[nodiscard]] State make_state(const CacheSettings& s) const {
    State st;
    st.in_cache = positions == Positions::kInCache;
    if (!st.in_cache) return st;
    KVCACHE_REQUIRE(s.rope.has_value(),
                    "policy 'streaming_llm' keeps positions inside the cache and needs "
                    "KVCacheOptions::rope (the model's RoPE)");
    const AttentionShape& sh = s.config.shape;
    st.offset = sh.values_in_keys ? sh.dim_v() : 0;
    st.rope = Rope(*s.rope, sh.head_dim_k - st.offset);
    st.dk = sh.head_dim_k;
    st.n_kv = sh.n_kv_heads;
    st.sinks = sinks;
    const std::size_t per_layer = std::size_t(sh.n_kv_heads) * std::size_t(sinks);
    st.sink_keys.assign(std::size_t(s.config.n_layers) * per_layer * std::size_t(st.dk), 0.0f);
    st.sink_slots.assign(std::size_t(s.config.n_layers) * per_layer, -1);
    st.row.assign(std::size_t(st.dk), 0.0f);
    return st;
  }
  void add_columns(SlotColumns& c) const {
    if (positions == Positions::kInCache) c.add<RotatedAt>();
  }

  void on_append(Ctx& c, const AppendedRows& r) const {
    State& st = c.state;
    if (!st.in_cache) return;
    double* at = c.columns.data<RotatedAt>(r.kv_head);
    std::int64_t* slots = st.slots(c.layer, r.kv_head);
    for (std::int64_t i = 0; i < r.count; ++i) {
      const Position p = r.positions[std::size_t(i)];
      at[r.first + i] = p;
      if (p < 0 || p >= sinks) continue;
      slots[p] = r.first + i;
      const float* k = r.keys + i * r.head_dim_k;
      std::copy(k, k + r.head_dim_k, st.key(c.layer, r.kv_head, p));
    }
  }

  void on_move(Ctx& c, int h, std::int64_t, std::int64_t to) const noexcept {
    if (!c.state.in_cache) return;
    const Position moved = c.kv.positions(h)[std::size_t(to)];
    if (moved >= 0 && moved < sinks) c.state.slots(c.layer, h)[moved] = to;
  }

  /// Rotates each sink key so that its distance to the query (rotated at query_position) is the paper's
  /// n - 1 - rank. Sinks are positions 0 .. sinks - 1, all kept, so a sink's rank is its position.
  void before_decode_attention(Ctx& c, Position query_position) const {
    State& st = c.state;
    if (!st.in_cache) return;
    for (int h = 0; h < c.kv.n_kv_heads(); ++h) {
      const std::int64_t n = c.kv.length(h);
      std::int64_t* slots = st.slots(c.layer, h);
      double* at = c.columns.data<RotatedAt>(h);
      const auto pos = c.kv.positions(h);
      for (std::int64_t p = 0; p < sinks; ++p) {
        const std::int64_t s = slots[p];
        if (s < 0) continue;
        if (s >= n || pos[std::size_t(s)] != p) {  // KVCache::truncate took the sink back: nothing to rotate
          slots[p] = -1;
          continue;
        }
        const double target = double(query_position) - double(n - 1 - p);
        if (target == at[s]) continue;
        const float* orig = st.key(c.layer, h, p);
        std::copy(orig, orig + st.dk, st.row.begin());
        // Every sink of a head shifts by the same query_position - (n - 1): the angles are computed once per
        // distinct shift (usually once per step for the whole model), not per row.
        const double delta = target - double(p);
        if (!st.cached || delta != st.delta) {
          st.rope.angles(delta, st.cos, st.sin);
          st.delta = delta;
          st.cached = true;
        }
        float* x = st.row.data() + st.offset;
        rotate_rows(c.isa, st.rope, x, x, 1, st.dk - st.offset, st.cos, st.sin);
        c.kv.overwrite_key(h, s, st.row.data());
        at[s] = target;
      }
    }
  }
};

}  // namespace kvcache
