#pragma once

// VATP, value-aware token pruning (Guo, Kamigaito, Watanabe, EMNLP 2024; docs/policies/vatp.md), the H2O variant of the
// official code (utils_hh/modify_llama.py with --h2o --apval):
//   score[j] = (accumulated attention of token j, as H2O) x ||v_j||_1, the L1 norm of its value row (per KV head,
//              taken once in fp32 when the row is appended, from the values as given, before any f16/bf16 rounding);
//   the first `sinks` tokens (F) are never scored or evicted: sinks have tiny value norms and would be lost.
// Unlike the official code, which gives sinks the dtype maximum inside the heavy budget, here the sinks are protected
// rows counted inside the total budget (heavy + recent); the kept set is the same (docs/policies/vatp.md).
// GQA (the code is MHA-only): the attention term is reduced over the group's query heads as in H2O (sum by default,
// or gqa_reduce = kMax), then multiplied by the KV head's value norm (docs/policies/vatp.md).
// Defaults: heavy = recent = 0.1 of the prompt (pred.py sets recent_ratio = heavy_ratio); sinks = 20 is the README's
// example; use 1 or a few for short prompts.

#include <cstdint>
#include <span>
#include <string_view>

#include "kvcache/core/error.hpp"
#include "kvcache/policy/policy.hpp"

namespace kvcache {

struct VATP {
  static constexpr std::string_view kName = "vatp";
  Count heavy = Count::fraction(0.1);
  Count recent = Count::fraction(0.1);
  std::int64_t sinks = 20;
  GqaReduce gqa_reduce = GqaReduce::kSum;

  VATP() = default;
  VATP(Count heavy_, Count recent_, std::int64_t sinks_, GqaReduce gqa_reduce_ = GqaReduce::kSum)
      : heavy(heavy_), recent(recent_), sinks(sinks_), gqa_reduce(gqa_reduce_) {
    KVCACHE_REQUIRE(sinks >= 0, "VATP: sinks must be >= 0, got ", sinks);
  }

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.prefill_scores = true;
    n.decode_scores = true;
    n.gqa_reduce = gqa_reduce;
    n.compress_each_chunk = true;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t prompt_length) const {
    const std::int64_t h = heavy.resolve(prompt_length), r = recent.resolve(prompt_length);
    return ResolvedBudget{h + r, r, sinks};
  }

  /// ||v||_1 of each row, taken in f32 from the values as the engine gave them.
  struct ValueNorm {
    using type = float;
  };
  void add_columns(SlotColumns& c) const { c.add<ValueNorm>(); }
  void on_append(PolicyContext<NoPolicyState>& c, const AppendedRows& r) const noexcept {
    row_norms(RowNorm::kL1, r.values, r.value_stride, r.count, r.head_dim_v,
              c.columns.data<ValueNorm>(r.kv_head) + r.first);
  }
  /// score x ||v||_1, multiplied by the selection as it reads them (no ranking copy).
  [[nodiscard]] Priority rank(const RankInput& in) const noexcept {
    return Priority::product(in.scores, in.column<ValueNorm>());
  }
};

}  // namespace kvcache
