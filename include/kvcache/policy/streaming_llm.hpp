#pragma once

// StreamingLLM (Xiao et al., ICLR 2024, "Efficient Streaming Language Models with Attention Sinks"; algorithms.md 3).
// Keeps the first `sinks` tokens (attention sinks) and the `recent` newest; everything between is evicted after
// each step (the official StartRecentKVCache.__call__).
//
// Positions. kOriginal: keys stay rotated at their original positions (what kvpress's StreamingLLMPress does
// alone). kInCache (the paper's mode, Sec. 3.2): positions are counted inside the cache, so query-key distances never
// exceed the cache size. RoPE depends only on the query-key distance, so with sinks + a contiguous recent window the
// paper's positions are reproduced exactly by leaving the window keys at their original rotation and the query at
// its original position, and re-rotating only the sink keys to sit (n - 1 - rank) before the query. KVCache does
// that each step from an f32 copy of each sink key (so f16/bf16 storage does not drift), costing `sinks` rotations
// per head and step instead of the official re-rotation of the whole cache. Needs KVCacheOptions::rope.
//
// Defaults: sinks = 4 (paper Table 2; run_streaming_llama.py start_size=4), recent = 2000 (the chat demo); the
// perplexity script's 1 + 255 is experiment-specific. Budget = sinks + recent; no scores needed.

#include <span>
#include <string_view>

#include "kvcache/core/error.hpp"
#include "kvcache/policy/policy.hpp"

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
    n.in_cache_positions = positions == Positions::kInCache;
    return n;
  }
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t) const noexcept {
    return ResolvedBudget{sinks + recent, recent, sinks};
  }
  // Everything outside the protected sinks and window goes; no ranking among the rest is needed (KVCache skips rank()
  // and selects by age alone: policy.hpp, RanksByAge).
  using AgeIsPriority = StreamingLLM;
  void rank(const RankInput&, std::span<float> priority) const noexcept {
    for (float& p : priority) p = 0.0f;
  }
};

}  // namespace kvcache
