#pragma once

// A sliding-window ring: the K/V of the last `window` tokens of one layer (YOCO's self-decoder, Mistral-style SWA).
// Nothing is evicted by a policy; pushing token t overwrites token t - window in place, so the storage is a fixed
// window x row bytes whatever the sequence length. The rows live in a LayerSlots (slot order is ring order, which
// attention does not care about), so decode_attention(ring.slots(), ...) attends a query to exactly the tokens
// (t - window, t]: FlashAttention's window_size = (window - 1, 0), YOCO's sliding_window_attention.py.
//
//   push k: [n_kv_heads, head_dim_k], v: [n_kv_heads, head_dim_v] (f32, converted to the storage type)

#include <cstdint>

#include "kvcache/core/config.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

class SlidingWindowRing {
 public:
  SlidingWindowRing(const AttentionShape& shape, std::int64_t window, DType dtype)
      : slots_((check_window(window), shape), window, dtype), window_(window) {
    KVCACHE_REQUIRE(!shape.values_in_keys, "a sliding-window ring holds separate keys and values");
  }

  [[nodiscard]] std::int64_t window() const noexcept { return window_; }
  /// The rows to attend over: min(tokens pushed, window) per head, in ring order.
  [[nodiscard]] const LayerSlots& slots() const noexcept { return slots_; }
  /// Tokens pushed since construction or clear().
  [[nodiscard]] std::int64_t pushed() const noexcept { return pushed_; }
  [[nodiscard]] std::size_t kv_bytes() const noexcept { return slots_.kv_bytes(); }

  /// Adds the token at `position`, replacing the oldest once the window is full.
  void push(ConstTensorView<float, 2> k, ConstTensorView<float, 2> v, Position position) {
    const int n_kv = slots_.n_kv_heads(), dk = slots_.head_dim_k(), dv = slots_.head_dim_v();
    KVCACHE_REQUIRE(k.dimension(0) == n_kv && k.dimension(1) == dk && v.dimension(0) == n_kv && v.dimension(1) == dv,
                    "sliding window: push takes k [", n_kv, ", ", dk, "] and v [", n_kv, ", ", dv, "], got [",
                    k.dimension(0), ", ", k.dimension(1), "] and [", v.dimension(0), ", ", v.dimension(1), "]");
    if (pushed_ < window_) {
      const Position pos[1] = {position};
      slots_.append(ConstTensorView<float, 3>(k.data(), n_kv, 1, dk), ConstTensorView<float, 3>(v.data(), n_kv, 1, dv),
                    pos);
    } else {
      const std::int64_t slot = pushed_ % window_;  // the ring fills slots 0, 1, ...: this one holds the oldest
      for (int h = 0; h < n_kv; ++h)
        slots_.overwrite(h, slot, k.data() + std::int64_t(h) * dk, v.data() + std::int64_t(h) * dv, position);
    }
    ++pushed_;
  }

  void clear() noexcept {
    slots_.clear();
    pushed_ = 0;
  }

 private:
  static void check_window(std::int64_t window) {
    KVCACHE_REQUIRE(window >= 1 && window <= CacheConfig::kMaxCapacity, "sliding window must be in [1, ",
                    CacheConfig::kMaxCapacity, "], got ", window);
  }

  LayerSlots slots_;
  std::int64_t window_;
  std::int64_t pushed_ = 0;
};

}  // namespace kvcache
