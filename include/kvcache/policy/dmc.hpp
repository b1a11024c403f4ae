#pragma once

// DMC, Dynamic Memory Compression (Nawrot, Lancucki, Chochowski, Tarjan, Ponti, ICML 2024; algorithms.md 8). Not an
// eviction policy: at every step each KV head decides whether the new token opens a new slot or is merged into the
// head's newest slot as an importance-weighted running average, so heads hold different numbers of rows. DMC needs a
// model retrofitted to make those decisions; on any other model the engine can supply its own rule (`decide`).
//
// The official inference semantics (megatron/contrib/dmc, algorithms.md 8.3), the defaults here:
//   decision   merge iff key[neuron] - key_offset > 0, from the pre-RoPE key (neuron: the last, offset 5; the fp32
//              rule; the bf16 guard of the Triton kernel does not apply to f32 inputs);
//   importance w = sigmoid(mean over the group's query heads of query[neuron] + query_offset) + epsilon (epsilon =
//              bf16's machine epsilon, 2^-7), pre-RoPE; GQA averages the group's neurons as the training path does
//              (algorithms.md 8.7);
//   first token of a head: always a new slot;
//   merge      the slot holds sum(w k) / sum(w) and sum(w v) / sum(w) over its group's newest `window` tokens
//              (window 12, the official --dmc-window-size; the oldest member leaves the sums once a group is longer),
//              computed on pre-RoPE keys; the merged key is rotated at the newest member's position;
//   neurons    zeroed in the stored key (before and after rotation, as the official rotary kernel) and in the query.
// The paper's notation (first neuron, no offsets, no epsilon) is DMC::paper(). Prefill runs the prompt token by
// token, as the official inference does (algorithms.md 8.8). KVCache needs KVCacheOptions::rope to take keys and
// queries back to pre-RoPE; without it keys are treated as unrotated (NoPE models, tests).

#include <cmath>
#include <functional>
#include <span>
#include <string_view>

#include "kvcache/core/error.hpp"
#include "kvcache/policy/policy.hpp"

namespace kvcache {

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
    n.merge_on_append = true;
    n.compress_after_prefill = false;
    n.evict_during_decode = false;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t) const { return {}; }
  void rank(const RankInput&, std::span<float>) const noexcept {}

  /// Checked by KVCache at construction against the head dim.
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
};

}  // namespace kvcache
