#pragma once

// DMC, Dynamic Memory Compression (Nawrot, Lancucki, Chochowski, Tarjan, Ponti, ICML 2024; docs/policies/dmc.md). Not
// an eviction policy: at every step each KV head decides whether the new token opens a new slot or is merged into the
// head's newest slot as an importance-weighted running average, so heads hold different numbers of rows. DMC needs a
// model retrofitted to make those decisions; on any other model the engine can supply its own rule (`decide`).
//
// The official inference semantics (megatron/contrib/dmc, docs/policies/dmc.md), the defaults here:
//   decision   merge iff key[neuron] - key_offset > 0, from the pre-RoPE key (neuron: the last, offset 5; the fp32
//              rule; the bf16 guard of the Triton kernel does not apply to f32 inputs);
//   importance w = sigmoid(mean over the group's query heads of query[neuron] + query_offset) + epsilon (epsilon =
//              bf16's machine epsilon, 2^-7), pre-RoPE; GQA averages the group's neurons as the training path does
//              (docs/policies/dmc.md);
//   first token of a head: always a new slot;
//   merge      the slot holds sum(w k) / sum(w) and sum(w v) / sum(w) over its group's newest `window` tokens
//              (window 12, the official --dmc-window-size; the oldest member leaves the sums once a group is longer),
//              computed on pre-RoPE keys; the merged key is rotated at the newest member's position;
//   neurons    zeroed in the stored key (before and after rotation, as the official rotary kernel) and in the query.
// The paper's notation (first neuron, no offsets, no epsilon) is DMC::paper(). Prefill runs the prompt token by
// token, as the official inference does (docs/policies/dmc.md). KVCache needs KVCacheOptions::rope to take keys and
// queries back to pre-RoPE; without it keys are treated as unrotated (NoPE models, tests).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "kvcache/core/error.hpp"
#include "kvcache/core/macros.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/policy/rotate.hpp"
#include "kvcache/simd/dispatch.hpp"

#define KVCACHE_FOREACH_ISA_FILE "kvcache/policy/detail/dmc_rows.ipp"
#define KVCACHE_FOREACH_ISA_NAMESPACE kvcache::dmc_kernels
#include "kvcache/simd/foreach_isa.inc"

namespace kvcache {

/// What DMC decides from, for one (layer, KV head) at one step; keys and queries are pre-RoPE.
struct MergeStep {
  int layer = 0;
  int kv_head = 0;
  Position position = 0;
  std::span<const float> key;      ///< [head_dim]
  std::span<const float> queries;  ///< [group, head_dim], the group's query heads
  int head_dim = 0;
};

struct DMC {
  static constexpr std::string_view kName = "dmc";

  using Step = MergeStep;

  int neuron = -1;             ///< index into the head dim; negative counts from the end (-1: the last, official)
  float key_offset = 5.0f;     ///< merge iff key[neuron] - key_offset > 0
  float query_offset = 5.0f;   ///< importance = sigmoid(mean query[neuron] + query_offset) + epsilon
  float epsilon = 0.0078125f;  ///< bf16 machine epsilon (official); 0 in the paper
  int window = 12;             ///< a slot averages at most its newest `window` tokens; 0: no limit
  bool zero_neurons = true;    ///< zero the neuron in stored keys and in queries
  std::function<bool(const Step&)> decide;  ///< the engine's decision rule, replacing the neuron (optional)
  std::function<float(const Step&)> weigh;  ///< the engine's importance, replacing the neuron (optional)

  DMC() = default;
  /// The official code's convention (the defaults).
  static DMC official() { return DMC{}; }
  /// The paper's notation: alpha = round(sigmoid(k[0])), omega = sigmoid(q[0]).
  static DMC paper() {
    DMC d;
    d.neuron = 0;
    d.key_offset = 0.0f;
    d.query_offset = 0.0f;
    d.epsilon = 0.0f;
    return d;
  }

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.compress_after_prefill = false;
    n.evict_during_decode = false;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t) const { return {}; }
  [[nodiscard]] Priority rank(const RankInput&) const noexcept { return Priority::by_age(); }  // never asked

  /// Checked at construction against the head dim.
  void validate(int head_dim) const {
    KVCACHE_REQUIRE(neuron_index(head_dim) >= 0 && neuron_index(head_dim) < head_dim, "DMC: neuron ", neuron,
                    " is outside a head of ", head_dim, " dims");
    KVCACHE_REQUIRE(window >= 0, "DMC: window must be >= 0, got ", window);
    KVCACHE_REQUIRE(epsilon >= 0, "DMC: epsilon must be >= 0, got ", epsilon);
  }
  [[nodiscard]] int neuron_index(int head_dim) const noexcept { return neuron < 0 ? head_dim + neuron : neuron; }

  /// True when the step's token is merged into the head's newest slot.
  [[nodiscard]] bool merges(const Step& s) const {
    if (decide) return decide(s);
    return s.key[std::size_t(neuron_index(s.head_dim))] - key_offset > 0.0f;
  }
  /// The step's importance w (> 0).
  [[nodiscard]] float importance(const Step& s) const {
    if (weigh) return weigh(s);
    const int idx = neuron_index(s.head_dim);
    const std::size_t g = s.queries.size() / std::size_t(s.head_dim);
    double m = 0;
    for (std::size_t a = 0; a < g; ++a) m += s.queries[a * std::size_t(s.head_dim) + std::size_t(idx)];
    m /= double(g);
    return static_cast<float>(1.0 / (1.0 + std::exp(-(m + query_offset))) + epsilon);
  }

  // ---- the merge (official inference semantics) ----

  /// Per (layer, KV head): the open group's weighted sums in double ([key (pre-RoPE), value, weight]) and, with a
  /// window, its newest members in a ring (to take the oldest back out), the group's size and the ring's start;
  /// scratch for one step.
  struct State {
    int n_kv = 0, nq = 0, dk = 0, dv = 0, window = 0;
    std::int64_t capacity = 0;
    bool rotated = false;
    Rope rope;
    std::vector<int> count, start;            // [layers, n_kv]
    std::vector<double> sum;                  // [layers, n_kv, stride]
    std::vector<float> ring;                  // [layers, n_kv, window, stride]
    std::vector<float> k, q, qz, krow, vrow;  // scratch: [n_kv, dk], [nq, dk], [nq, dk], [dk], [dv]
    std::vector<double> cos, sin, sin_neg;    // the step's angles (+position; sin_neg rotates back)
    Position angles_at = 0;
    bool angles = false;

    [[nodiscard]] std::size_t stride() const noexcept { return std::size_t(dk + dv + 1); }
    [[nodiscard]] std::size_t bytes() const noexcept {
      const auto b = [](const auto& v) { return v.size() * sizeof(v[0]); };
      return b(count) + b(start) + b(sum) + b(ring) + b(k) + b(q) + b(qz) + b(krow) + b(vrow) + b(cos) + b(sin) +
             b(sin_neg);
    }
    void reset() noexcept {
      std::fill(count.begin(), count.end(), 0);
      std::fill(start.begin(), start.end(), 0);
    }
  };
  using Ctx = PolicyContext<State>;

  [[nodiscard]] State make_state(const CacheSettings& s) const {
    const AttentionShape& sh = s.config.shape;
    KVCACHE_REQUIRE(!sh.values_in_keys,
                    "policy 'dmc' merges pre-RoPE keys per KV head, which the latent layout (MLA) does not have");
    KVCACHE_REQUIRE(s.readers == 1,
                    "policy 'dmc' merges each new token into the step's attention, which needs one "
                    "reader per cache layer; got ",
                    s.readers);
    validate(sh.head_dim_k);
    State st;
    st.n_kv = sh.n_kv_heads;
    st.nq = sh.n_q_heads;
    st.dk = sh.head_dim_k;
    st.dv = sh.dim_v();
    st.window = window;
    st.capacity = s.config.capacity;
    st.rotated = s.rope.has_value();
    if (st.rotated) st.rope = Rope(*s.rope, sh.head_dim_k);
    const std::size_t heads = std::size_t(s.config.n_layers) * std::size_t(st.n_kv);
    st.count.assign(heads, 0);
    st.start.assign(heads, 0);
    st.sum.assign(heads * st.stride(), 0.0);
    st.ring.assign(heads * st.stride() * std::size_t(std::max(1, window)), 0.0f);
    st.k.assign(std::size_t(st.n_kv * st.dk), 0.0f);
    st.q.assign(std::size_t(st.nq * st.dk), 0.0f);
    st.qz.assign(st.q.size(), 0.0f);
    st.krow.assign(std::size_t(st.dk), 0.0f);
    st.vrow.assign(std::size_t(st.dv), 0.0f);
    return st;
  }

  /// One step of one layer. k: [n_kv, dk], v: [n_kv, dv], q: [n_q, dk], k and q rotated at `position` (when
  /// KVCacheOptions::rope is set). Per head: the pre-RoPE key and the group's pre-RoPE queries decide merge or not
  /// and the weight; the head's newest slot (merge) or a new slot (otherwise; always for a head's first token) then
  /// holds the weighted mean of the group's newest `window` members, its key rotated at `position`, the neuron
  /// zeroed. Returns the queries attention reads (their neuron zeroed when that matters).
  const float* append_token(Ctx& c, const float* k, const float* v, Position position, const float* q) const {
    State& st = c.state;
    LayerSlots& kv = c.kv;
    KVCACHE_REQUIRE(kv.max_length() < st.capacity, "decode: the cache is full (capacity ", st.capacity, ")");
    const int n_kv = st.n_kv, dk = st.dk, dv = st.dv, nq = st.nq, g = nq / n_kv;
    const int idx = neuron_index(dk);
    const std::size_t udk = std::size_t(dk), udv = std::size_t(dv), stride = st.stride();
    if (st.rotated) {  // back to pre-RoPE: rotate by -position (the angles are shared by every layer of a step)
      if (!st.angles || position != st.angles_at) {
        st.rope.angles(double(position), st.cos, st.sin);
        st.sin_neg.assign(st.sin.begin(), st.sin.end());
        for (double& x : st.sin_neg) x = -x;
        st.angles_at = position;
        st.angles = true;
      }
      rotate_rows(c.isa, st.rope, st.k.data(), k, n_kv, dk, st.cos, st.sin_neg);
      rotate_rows(c.isa, st.rope, st.q.data(), q, nq, dk, st.cos, st.sin_neg);
    } else {
      std::copy_n(k, n_kv * dk, st.k.data());
      std::copy_n(q, nq * dk, st.q.data());
    }
    float* krow = st.krow.data();
    float* vrow = st.vrow.data();
    for (int h = 0; h < n_kv; ++h) {
      const float* kp = st.k.data() + std::size_t(h) * udk;
      const float* vp = v + std::size_t(h) * udv;
      Step s;
      s.layer = c.layer;
      s.kv_head = h;
      s.position = position;
      s.key = {kp, udk};
      s.queries = {st.q.data() + std::size_t(h) * std::size_t(g) * udk, std::size_t(g) * udk};
      s.head_dim = dk;
      const bool merge = kv.length(h) > 0 && merges(s);
      const float w = importance(s);
      KVCACHE_REQUIRE(w > 0 && std::isfinite(w), "policy 'dmc' gave layer ", c.layer, " head ", h, " an importance of ",
                      w, " at position ", position, "; it must be positive and finite");
      const std::size_t head = std::size_t(c.layer) * std::size_t(n_kv) + std::size_t(h);
      int& count = st.count[head];
      int& start = st.start[head];
      double* sum = st.sum.data() + head * stride;
      if (!merge) count = 0, start = 0;
      // The group's sums in double: add the new member; with a window, the oldest leaves once the group is full.
      if (count == 0) std::fill_n(sum, stride, 0.0);
      if (window > 0) {
        float* ring = st.ring.data() + head * stride * std::size_t(window);
        if (count == window) {
          const float* old = ring + std::size_t(start) * stride;
          const float wo = old[stride - 1];
          add_sums(c.isa, sum, old, dk + dv, -wo);
          sum[stride - 1] -= double(wo);
          start = (start + 1) % window;
          --count;
        }
        float* e = ring + std::size_t((start + count) % window) * stride;
        std::copy_n(kp, dk, e);
        std::copy_n(vp, dv, e + dk);
        e[dk + dv] = w;
        add_sums(c.isa, sum, e, dk + dv, w);  // the member's key and value, contiguous in its ring entry
      } else {
        add_sums(c.isa, sum, kp, dk, w);
        add_sums(c.isa, sum + dk, vp, dv, w);
      }
      sum[stride - 1] += double(w);
      ++count;
      if (count == 1) {  // a new slot holds the token itself, exactly
        std::copy_n(kp, dk, krow);
        std::copy_n(vp, dv, vrow);
      } else {
        const double inv = 1.0 / sum[stride - 1];
        means(c.isa, krow, sum, dk, inv);
        means(c.isa, vrow, sum + dk, dv, inv);
      }
      if (zero_neurons) krow[idx] = 0.0f;
      if (st.rotated) {
        rotate_rows(c.isa, st.rope, krow, krow, 1, dk, st.cos, st.sin);
        if (zero_neurons) krow[idx] = 0.0f;
      }
      if (merge) {
        kv.overwrite(h, kv.length(h) - 1, krow, vrow, position);
      } else {
        const Position p[1] = {position};
        kv.append(h, ConstTensorView<float, 2>(krow, 1, dk), ConstTensorView<float, 2>(vrow, 1, dv), p);
      }
    }
    // The queries' neuron is zeroed, as the official code does. Every stored key holds 0 there, so a finite neuron
    // adds exactly 0 to each score: the zeroed copy is needed only when one is not finite (inf x 0 is NaN).
    if (!zero_neurons) return q;
    bool finite = true;
    for (int a = 0; a < nq; ++a) finite = finite && std::isfinite(q[std::size_t(a) * udk + std::size_t(idx)]);
    if (finite) return q;
    std::copy_n(q, nq * dk, st.qz.data());
    for (int a = 0; a < nq; ++a) st.qz[std::size_t(a) * udk + std::size_t(idx)] = 0.0f;
    return st.qz.data();
  }

 private:
  static void add_sums(Isa isa, double* sum, const float* x, std::int64_t n, float w) noexcept {
    KVCACHE_DISPATCH(isa, kvcache::dmc_kernels, merge_add, (sum, x, n, w))
  }
  static void means(Isa isa, float* out, const double* sum, std::int64_t n, double inv) noexcept {
    KVCACHE_DISPATCH(isa, kvcache::dmc_kernels, merge_mean, (out, sum, n, inv))
  }
};

}  // namespace kvcache
