#pragma once

// BlockPool: fixed-size blocks of cached rows, shared by the heads of many sequences.
//
// A block holds block_rows() consecutive rows of one (layer, KV head): their keys, values and, for i8, their row
// scales (core/head_rows.hpp gives the layout); MLA's latent rows are keys only. A KVCache built on a pool takes a
// block when a head's last one is full and gives back every block its eviction empties in the same call, so
// blocks_free() rises as soon as a policy drops rows; many caches (sequences) may share one pool, and fork() shares
// a sequence's blocks copy-on-write (a block has a reference count; the first write to a shared block copies it).
// Positions and per-slot policy state stay with each cache (4 bytes per slot and column, sized by its capacity).
//
// The pool owns its memory or carves it from memory the engine gives it (pointer + bytes); nothing is allocated
// after construction. Thread safety: acquire() and release() may be called from any thread; each takes one mutex
// once per call (not per row or per block of a call). Reference counts are atomic.

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "kvcache/core/aligned_buffer.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"

namespace kvcache {

class LayerSlots;

class BlockPool {
 public:
  static constexpr int kMinBlockRows = 16, kMaxBlockRows = 256;

  /// A pool that owns n_blocks blocks of block_rows rows (a power of two in [16, 256]) for heads of `shape` (its
  /// head dims and layout; the head counts do not matter) stored as dtype.
  BlockPool(const AttentionShape& shape, DType dtype, int block_rows, std::int64_t n_blocks)
      : BlockPool(shape, dtype, check_rows(block_rows), nullptr, 0, n_blocks) {}

  /// A pool in memory the engine owns: [memory, memory + bytes), which must outlive the pool. Takes as many whole
  /// blocks as fit after aligning the start to 64 bytes (block_bytes() each; at least one).
  BlockPool(const AttentionShape& shape, DType dtype, int block_rows, void* memory, std::size_t bytes)
      : BlockPool(shape, dtype, check_rows(block_rows), memory, bytes, -1) {}

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  /// Bytes of one block for these heads: what an engine sizes its memory by.
  [[nodiscard]] static std::size_t block_bytes(const AttentionShape& shape, DType dtype, std::int64_t block_rows) {
    return Layout(shape, dtype, block_rows).block;
  }

  [[nodiscard]] int block_rows() const noexcept { return static_cast<int>(rows_); }
  [[nodiscard]] std::size_t block_bytes() const noexcept { return layout_.block; }
  [[nodiscard]] DType dtype() const noexcept { return dtype_; }
  [[nodiscard]] int head_dim_k() const noexcept { return dk_; }
  [[nodiscard]] int head_dim_v() const noexcept { return dv_; }
  [[nodiscard]] bool values_in_keys() const noexcept { return values_in_keys_; }
  [[nodiscard]] std::int64_t blocks_total() const noexcept { return n_; }
  [[nodiscard]] std::int64_t blocks_free() const noexcept { return free_count_.load(std::memory_order_relaxed); }
  /// The most blocks in use at once since construction or the last reset_peak(): what an engine sizes a pool by.
  [[nodiscard]] std::int64_t blocks_used_peak() const noexcept {
    return n_ - lowest_free_.load(std::memory_order_relaxed);
  }
  /// Starts a new peak at the blocks in use now.
  void reset_peak() noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    lowest_free_.store(free_count_.load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  /// Bytes the pool holds: its blocks (owned or given) and its bookkeeping (free list and reference counts).
  [[nodiscard]] std::size_t bytes_reserved() const noexcept {
    return std::size_t(n_) * layout_.block + free_.size() * sizeof(std::int32_t) +
           std::size_t(n_) * sizeof(std::atomic<std::int32_t>);
  }

  /// Takes out.size() free blocks, each with one reference, and writes their ids to out; all or nothing: if fewer are
  /// free, throws kvcache::Error naming the pool's size and the request, and takes none.
  void acquire(std::span<std::int32_t> out) {
    if (try_acquire(out)) return;
    const std::int64_t have = blocks_free();
    detail::throw_error("block pool exhausted: ", out.size(), " more blocks of ", rows_, " rows asked, ", have, " of ",
                        n_, " free (", std::size_t(n_) * layout_.block, " bytes)");
  }
  /// acquire() that returns false instead of throwing (and takes none).
  [[nodiscard]] bool try_acquire(std::span<std::int32_t> out) noexcept {
    if (out.empty()) return true;
    std::lock_guard<std::mutex> lock(mutex_);
    const std::int64_t have = free_count_.load(std::memory_order_relaxed);
    if (std::int64_t(out.size()) > have) return false;
    for (std::size_t i = 0; i < out.size(); ++i) {
      const std::int32_t b = free_[std::size_t(have) - 1 - i];
      refs_[std::size_t(b)].store(1, std::memory_order_relaxed);
      out[i] = b;
    }
    free_count_.store(have - std::int64_t(out.size()), std::memory_order_relaxed);
    if (have - std::int64_t(out.size()) < lowest_free_.load(std::memory_order_relaxed))
      lowest_free_.store(have - std::int64_t(out.size()), std::memory_order_relaxed);
    return true;
  }
  /// Drops one reference to each block; a block whose last reference goes returns to the free list.
  void release(std::span<const std::int32_t> ids) noexcept {
    if (ids.empty()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    std::int64_t have = free_count_.load(std::memory_order_relaxed);
    for (std::int32_t b : ids)
      if (refs_[std::size_t(b)].fetch_sub(1, std::memory_order_acq_rel) == 1) free_[std::size_t(have++)] = b;
    free_count_.store(have, std::memory_order_relaxed);
  }
  /// Adds one reference to each block (a fork shares them).
  void add_refs(std::span<const std::int32_t> ids) noexcept {
    for (std::int32_t b : ids) refs_[std::size_t(b)].fetch_add(1, std::memory_order_relaxed);
  }
  /// References to block b (0: free).
  [[nodiscard]] std::int32_t refs(std::int32_t b) const noexcept {
    return refs_[std::size_t(b)].load(std::memory_order_acquire);
  }
  [[nodiscard]] std::byte* block(std::int32_t b) const noexcept { return base_ + std::size_t(b) * layout_.block; }

  /// Byte offsets inside a block (core/head_rows.hpp).
  struct Layout {
    std::size_t k_stride = 0, v_stride = 0, v_offset = 0, ks_offset = 0, vs_offset = 0, block = 0;
    Layout() = default;
    Layout(const AttentionShape& shape, DType dtype, std::int64_t rows) {
      const std::size_t es = dtype_size(dtype), r = std::size_t(rows);
      const bool latent = shape.values_in_keys;
      k_stride = std::size_t(shape.head_dim_k) * es;
      v_stride = latent ? k_stride : std::size_t(shape.dim_v()) * es;
      const std::size_t k_bytes = round_up(r * k_stride, kCacheLine);
      v_offset = latent ? 0 : k_bytes;
      ks_offset = k_bytes + (latent ? 0 : round_up(r * v_stride, kCacheLine));
      const std::size_t s_bytes = dtype == DType::kI8 ? round_up(r * sizeof(float), kCacheLine) : 0;
      vs_offset = latent ? ks_offset : ks_offset + s_bytes;
      block = ks_offset + (latent ? 1 : 2) * s_bytes;
    }
  };
  [[nodiscard]] const Layout& layout() const noexcept { return layout_; }

 private:
  friend class LayerSlots;

  // Dense storage's own pool: n_blocks blocks of any number of rows, owned.
  struct Dense {};
  BlockPool(Dense, const AttentionShape& shape, DType dtype, std::int64_t rows, std::int64_t n_blocks)
      : BlockPool(shape, dtype, rows, nullptr, 0, n_blocks) {}

  BlockPool(const AttentionShape& shape, DType dtype, std::int64_t rows, void* memory, std::size_t bytes,
            std::int64_t n_blocks)
      : dtype_(dtype),
        dk_(shape.head_dim_k),
        dv_(shape.dim_v()),
        values_in_keys_(shape.values_in_keys),
        rows_(rows),
        layout_((shape.validate(), shape), dtype, rows) {
    if (memory == nullptr) {
      KVCACHE_REQUIRE(n_blocks >= 1 && n_blocks <= kMaxBlocks, "a block pool needs [1, ", kMaxBlocks, "] blocks, got ",
                      n_blocks);
      own_ = AlignedBuffer(std::size_t(n_blocks) * layout_.block);
      base_ = own_.data();
    } else {
      const auto at = reinterpret_cast<std::uintptr_t>(memory);
      const std::size_t skip = (kCacheLine - at % kCacheLine) % kCacheLine;
      const std::size_t usable = bytes > skip ? bytes - skip : 0;
      n_blocks = std::int64_t(std::min<std::size_t>(usable / layout_.block, std::size_t(kMaxBlocks)));
      KVCACHE_REQUIRE(n_blocks >= 1, "a block pool of ", bytes, " bytes holds no block of ", layout_.block, " bytes (",
                      rows, " rows)");
      base_ = static_cast<std::byte*>(memory) + skip;
    }
    n_ = n_blocks;
    free_.resize(std::size_t(n_));
    for (std::int64_t i = 0; i < n_; ++i) free_[std::size_t(i)] = static_cast<std::int32_t>(n_ - 1 - i);
    refs_ = std::make_unique<std::atomic<std::int32_t>[]>(std::size_t(n_));
    free_count_.store(n_, std::memory_order_relaxed);
    lowest_free_.store(n_, std::memory_order_relaxed);
  }

  static std::int64_t check_rows(int rows) {
    KVCACHE_REQUIRE(rows >= kMinBlockRows && rows <= kMaxBlockRows && std::has_single_bit(unsigned(rows)),
                    "block_rows must be a power of two in [", kMinBlockRows, ", ", kMaxBlockRows, "], got ", rows);
    return rows;
  }

  static constexpr std::int64_t kMaxBlocks = std::int64_t{1} << 30;

  DType dtype_;
  int dk_, dv_;
  bool values_in_keys_;
  std::int64_t rows_;
  Layout layout_;
  std::int64_t n_ = 0;
  AlignedBuffer own_;
  std::byte* base_ = nullptr;
  std::vector<std::int32_t> free_;  // a stack: free_[0, free_count_) are free
  std::unique_ptr<std::atomic<std::int32_t>[]> refs_;
  std::atomic<std::int64_t> free_count_{0};
  std::atomic<std::int64_t> lowest_free_{0};  // the fewest free blocks since reset_peak (written under mutex_)
  mutable std::mutex mutex_;
};

}  // namespace kvcache
