#pragma once

// Slot storage: the cached rows of every KV head of one layer.
//
// KV head h owns rows [0, length(h)): keys [length(h), head_dim_k], values [length(h), head_dim_v] in the element type
// chosen at construction (f32, f16, bf16 or i8), and their positions [length(h)]. Heads may hold different numbers of
// rows. Two allocators, one layout (core/head_rows.hpp):
//   dense: each head has one block of `capacity` rows, allocated by the constructor (the simple path);
//   paged: each head has a block table into a BlockPool (storage/block_pool.hpp) shared with other layers and
//          sequences; appending takes a block when the last one is full, and every block a removal empties goes back
//          to the pool in the same call. capacity then bounds a head's rows (its block table and positions).
// Rows are appended at the end; remove() deletes any set of slots by moving the last surviving rows into the holes,
// so the live rows stay dense (kernels need no mask), each surviving row moves at most once, and removing r rows
// moves at most r rows. Slot order therefore carries no meaning after a removal: the original position travels with
// each row. Kernels read a head through rows(h); dense heads also have contiguous views (k(), v(), k_rows()).
//
// With AttentionShape::values_in_keys (MLA's latent layout) no value rows exist: the value of a row is the first
// head_dim_v elements of its key row (v_stride() = head_dim_k), appends take keys only, and a row costs head_dim_k
// elements.
//
// i8 rows (DType::kI8) are quantized as they are written (quantize_row_i8: symmetric, one f32 scale per row), and the
// scales travel with their rows (in the latent layout one scale per row serves key and value). The value of element
// c of key row j is k_row<i8>(h, j)[c] * k_scale(h, j).
//
// A paged layer can share its blocks with a fork (LayerSlots(Share, other)): a block's reference count says how many
// heads hold it, and a write to a shared block (append into it, a removal's move, an overwrite) copies it first.
//
// Nothing allocates after construction (paged heads take blocks from their pool). Mutating calls validate their
// arguments and throw kvcache::Error naming the bad value, before touching any row (a failed call changes nothing;
// an exhausted pool is such an error).

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcache/core/aligned_buffer.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/head_rows.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/simd/convert.hpp"
#include "kvcache/storage/block_pool.hpp"

namespace kvcache {

class LayerSlots {
 public:
  /// The default on_move of remove(): nothing else to move.
  struct NoMove {
    void operator()(std::int64_t, std::int64_t) const noexcept {}
  };
  /// Tag of the constructor that shares another layer's blocks (a fork).
  struct Share {};

  /// Dense storage: capacity rows per head, allocated now.
  LayerSlots(const AttentionShape& shape, std::int64_t capacity, DType dtype)
      : LayerSlots(shape, capacity, dtype, nullptr) {}

  /// Paged storage on `pool` (which must outlive the layer and have this shape's head dims, layout and dtype); a head
  /// holds at most capacity rows.
  LayerSlots(const AttentionShape& shape, std::int64_t capacity, DType dtype, BlockPool& pool)
      : LayerSlots(shape, capacity, dtype, &pool) {}

  /// A paged layer holding the same rows as `other`, sharing its blocks copy-on-write.
  LayerSlots(Share, const LayerSlots& other)
      : n_kv_heads_(other.n_kv_heads_),
        dk_(other.dk_),
        dv_(other.dv_),
        values_in_keys_(other.values_in_keys_),
        capacity_(other.capacity_),
        dtype_(other.dtype_),
        pool_(other.pool_),
        paged_(other.paged_),
        shift_(other.shift_),
        max_blocks_(other.max_blocks_),
        pos_(other.pos_.size()) {
    KVCACHE_REQUIRE(other.paged_, "fork: the cache is on no block pool (dense storage cannot share rows)");
    ids_ = other.ids_;
    bases_ = other.bases_;
    n_blocks_ = other.n_blocks_;
    length_ = other.length_;
    mark_.assign(other.mark_.size(), 0);
    scratch_.assign(other.scratch_.size(), 0);
    std::memcpy(pos_.data(), other.pos_.data(), pos_.size());
    for (int h = 0; h < n_kv_heads_; ++h) pool_->add_refs(block_ids(h));
  }

  LayerSlots(LayerSlots&& o) noexcept
      : n_kv_heads_(o.n_kv_heads_),
        dk_(o.dk_),
        dv_(o.dv_),
        values_in_keys_(o.values_in_keys_),
        capacity_(o.capacity_),
        dtype_(o.dtype_),
        own_(std::move(o.own_)),
        pool_(std::exchange(o.pool_, nullptr)),
        paged_(o.paged_),
        shift_(o.shift_),
        max_blocks_(o.max_blocks_),
        ids_(std::move(o.ids_)),
        bases_(std::move(o.bases_)),
        n_blocks_(std::move(o.n_blocks_)),
        pos_(std::move(o.pos_)),
        length_(std::move(o.length_)),
        mark_(std::move(o.mark_)),
        scratch_(std::move(o.scratch_)) {}
  LayerSlots(const LayerSlots&) = delete;
  LayerSlots& operator=(const LayerSlots&) = delete;
  LayerSlots& operator=(LayerSlots&&) = delete;
  ~LayerSlots() {
    if (paged_ && pool_ != nullptr) clear();
  }

  [[nodiscard]] DType dtype() const noexcept { return dtype_; }
  [[nodiscard]] std::size_t elem_size() const noexcept { return dtype_size(dtype_); }
  [[nodiscard]] int n_kv_heads() const noexcept { return n_kv_heads_; }
  [[nodiscard]] int head_dim_k() const noexcept { return dk_; }
  [[nodiscard]] int head_dim_v() const noexcept { return dv_; }
  /// The latent layout: values are the first head_dim_v() elements of the key rows (see the top of this header).
  [[nodiscard]] bool values_in_keys() const noexcept { return values_in_keys_; }
  /// Elements between consecutive value rows: head_dim_v, or head_dim_k in the latent layout.
  [[nodiscard]] int v_stride() const noexcept { return values_in_keys_ ? dk_ : dv_; }
  [[nodiscard]] std::int64_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] std::int64_t length(int h) const noexcept { return length_[static_cast<std::size_t>(h)]; }
  [[nodiscard]] std::int64_t max_length() const noexcept {
    std::int64_t m = 0;
    for (std::int64_t l : length_) m = l > m ? l : m;
    return m;
  }

  /// Whether the rows live in a shared BlockPool (else: dense).
  [[nodiscard]] bool paged() const noexcept { return paged_; }
  /// The pool of a paged layer (null for dense storage).
  [[nodiscard]] BlockPool* pool() const noexcept { return paged_ ? pool_ : nullptr; }
  /// Rows per block: the pool's, or capacity() for dense storage.
  [[nodiscard]] std::int64_t block_rows() const noexcept { return paged_ ? std::int64_t{1} << shift_ : capacity_; }
  /// The blocks head h holds, in row order (ids into pool(); dense storage: its one block).
  [[nodiscard]] std::span<const std::int32_t> block_ids(int h) const noexcept {
    return {ids_.data() + std::size_t(h) * std::size_t(max_blocks_), std::size_t(n_blocks_[std::size_t(h)])};
  }
  /// Blocks the layer's heads hold (a block shared with a fork counts in each).
  [[nodiscard]] std::int64_t blocks_held() const noexcept {
    std::int64_t n = 0;
    for (std::int32_t b : n_blocks_) n += b;
    return n;
  }

  /// Where head h's rows live, for the kernels (core/head_rows.hpp). Valid until the next call that changes the
  /// head.
  [[nodiscard]] HeadRows rows(int h) const noexcept {
    const BlockPool::Layout& lay = pool_->layout();
    HeadRows r;
    r.blocks = bases_.data() + std::size_t(h) * std::size_t(max_blocks_);
    r.block_shift = shift_;
    r.k_stride = lay.k_stride;
    r.v_stride = lay.v_stride;
    r.v_offset = lay.v_offset;
    r.ks_offset = lay.ks_offset;
    r.vs_offset = lay.vs_offset;
    r.scaled = dtype_ == DType::kI8;
    return r;
  }

  /// Bytes of one cached token in one head: its key and value rows (the key row alone in the latent layout), with
  /// their scales for i8.
  [[nodiscard]] std::size_t row_bytes() const noexcept {
    return static_cast<std::size_t>(values_in_keys_ ? dk_ : dk_ + dv_) * elem_size() +
           (values_in_keys_ ? 1 : 2) * row_scale_bytes(dtype_);
  }
  /// K and V bytes that head h holds now (length(h) rows).
  [[nodiscard]] std::size_t kv_bytes(int h) const noexcept { return static_cast<std::size_t>(length(h)) * row_bytes(); }
  /// K and V bytes that the layer holds now, summed over its heads.
  [[nodiscard]] std::size_t kv_bytes() const noexcept {
    std::size_t b = 0;
    for (int h = 0; h < n_kv_heads_; ++h) b += kv_bytes(h);
    return b;
  }
  /// Bytes of the positions of the live rows (4 per row).
  [[nodiscard]] std::size_t position_bytes() const noexcept {
    std::size_t b = 0;
    for (std::int64_t l : length_) b += static_cast<std::size_t>(l) * sizeof(Position);
    return b;
  }
  /// Bytes this layer allocated: for dense storage its blocks (K, V and i8 scales at full capacity, each head padded
  /// to 64 bytes); always the positions at full capacity, the removal marks (one byte per slot), the block tables and
  /// the per-head lengths. A paged layer's rows are in its pool (BlockPool::bytes_reserved, blocks_held()).
  [[nodiscard]] std::size_t bytes_reserved() const noexcept {
    return (own_ ? own_->bytes_reserved() : 0) + pos_.size() + mark_.size() + scratch_.size() * sizeof(std::int32_t) +
           ids_.size() * sizeof(std::int32_t) + bases_.size() * sizeof(std::byte*) +
           n_blocks_.size() * sizeof(std::int32_t) + length_.size() * sizeof(length_[0]);
  }

  /// Key row r of head h, r in [0, length(h)) (head_dim_k elements of dtype(); i8: times k_scale(h, r)).
  template <class T>
  [[nodiscard]] T const* k_row(int h, std::int64_t r) const {
    require_type<T>();
    return rows(h).k<T>(r);
  }
  /// Value row r of head h (head_dim_v elements; in the latent layout the head of key row r).
  template <class T>
  [[nodiscard]] T const* v_row(int h, std::int64_t r) const {
    require_type<T>();
    return rows(h).v<T>(r);
  }
  /// The scale of i8 key / value row r of head h (1 for the other types).
  [[nodiscard]] float k_scale(int h, std::int64_t r) const noexcept {
    const float* s = rows(h).ks(r);
    return s != nullptr ? *s : 1.0f;
  }
  [[nodiscard]] float v_scale(int h, std::int64_t r) const noexcept {
    const float* s = rows(h).vs(r);
    return s != nullptr ? *s : 1.0f;
  }

  /// Contiguous raw rows of head h, dense storage only (row stride head_dim_k / head_dim_v elements of dtype()).
  [[nodiscard]] const void* k_data(int h) const {
    require_dense("k_data");
    return bases_[std::size_t(h)];
  }
  [[nodiscard]] const void* v_data(int h) const {
    require_dense("v_data");
    return bases_[std::size_t(h)] + pool_->layout().v_offset;
  }
  [[nodiscard]] void* k_data(int h) { return const_cast<void*>(std::as_const(*this).k_data(h)); }
  [[nodiscard]] void* v_data(int h) { return const_cast<void*>(std::as_const(*this).v_data(h)); }

  /// The scales of head h's i8 rows, [length(h)], dense storage only (value = element x scale); null for the other
  /// types. In the latent layout v_scales(h) is k_scales(h).
  [[nodiscard]] const float* k_scales(int h) const {
    require_dense("k_scales");
    return rows(h).ks(0);
  }
  [[nodiscard]] const float* v_scales(int h) const {
    require_dense("v_scales");
    return rows(h).vs(0);
  }

  template <class T>
  [[nodiscard]] T const* k_rows(int h) const {
    require_type<T>();
    return static_cast<const T*>(k_data(h));
  }
  template <class T>
  [[nodiscard]] T const* v_rows(int h) const {
    require_type<T>();
    return static_cast<const T*>(v_data(h));
  }
  /// Mutable rows of dense storage, for code that rewrites keys in place. Length does not change.
  template <class T>
  [[nodiscard]] T* k_rows_mut(int h) {
    require_type<T>();
    return static_cast<T*>(k_data(h));
  }
  template <class T>
  [[nodiscard]] T* v_rows_mut(int h) {
    require_type<T>();
    return static_cast<T*>(v_data(h));
  }

  /// Views of the live rows of head h, no copy, dense storage only. k: [length(h), head_dim_k], v: [length(h),
  /// head_dim_v]. T must be the storage element type (float, kvcache::f16 = Eigen::half, kvcache::bf16 =
  /// Eigen::bfloat16, or kvcache::i8, whose rows need their scales).
  template <class T>
  [[nodiscard]] ConstTensorView<T, 2> k(int h) const {
    return ConstTensorView<T, 2>(k_rows<T>(h), length(h), dk_);
  }
  /// (Not in the latent layout, whose value rows are strided: use v_rows() with v_stride().)
  template <class T>
  [[nodiscard]] ConstTensorView<T, 2> v(int h) const {
    KVCACHE_REQUIRE(!values_in_keys_, "v(): the latent layout has no separate value rows; read v_rows() with stride ",
                    dk_);
    return ConstTensorView<T, 2>(v_rows<T>(h), length(h), dv_);
  }
  /// Original positions of the live rows of head h: [length(h)].
  [[nodiscard]] std::span<const Position> positions(int h) const noexcept {
    return {pos_rows(h), static_cast<std::size_t>(length(h))};
  }

  /// Appends m rows to head h. k: [m, head_dim_k], v: [m, head_dim_v], positions: [m]. S may be any element type;
  /// rows are converted to dtype() (round to nearest even when narrowing, quantized row by row for i8). The latent
  /// layout takes no values: v must then be empty ([m, 0] or [0, 0]).
  template <class S>
  void append(int h, ConstTensorView<S, 2> k, ConstTensorView<S, 2> v, std::span<const Position> positions) {
    check_head(h, "append");
    const Eigen::Index m = k.dimension(0);
    KVCACHE_REQUIRE(k.dimension(1) == dk_, "append: keys have width ", k.dimension(1), ", head_dim_k is ", dk_);
    check_values(v.size(), v.dimension(1), v.dimension(0), m);
    KVCACHE_REQUIRE(static_cast<Eigen::Index>(positions.size()) == m, "append: ", m, " rows but ", positions.size(),
                    " positions");
    KVCACHE_REQUIRE(length(h) + m <= capacity_, "append: head ", h, " holds ", length(h), " rows; ", m,
                    " more exceed the capacity of ", capacity_);
    take_blocks(h, h + 1, m);
    append_rows(h, k.data(), v.data(), positions.data(), m);
  }

  /// Appends m rows to every head, all at the same positions. k: [n_kv_heads, m, head_dim_k],
  /// v: [n_kv_heads, m, head_dim_v], positions: [m].
  template <class S>
  void append(ConstTensorView<S, 3> k, ConstTensorView<S, 3> v, std::span<const Position> positions) {
    check_append(k, v, positions);
    const Eigen::Index m = k.dimension(1);
    take_blocks(0, n_kv_heads_, m);
    for (int h = 0; h < n_kv_heads_; ++h)
      append_rows(h, k.data() + h * m * dk_, values_in_keys_ ? nullptr : v.data() + h * m * dv_, positions.data(), m);
  }

  /// Throws what append(k, v, positions) would throw (shapes, capacity, for paged storage a pool without the blocks
  /// it needs now), without appending.
  template <class S>
  void check_append(ConstTensorView<S, 3> k, ConstTensorView<S, 3> v, std::span<const Position> positions) const {
    check_shapes(k, v, positions);
    const Eigen::Index m = k.dimension(1);
    for (int h = 0; h < n_kv_heads_; ++h)
      KVCACHE_REQUIRE(length(h) + m <= capacity_, "append: head ", h, " holds ", length(h), " rows; ", m,
                      " more exceed the capacity of ", capacity_);
    if (paged_) {
      const std::int64_t need = blocks_needed(0, n_kv_heads_, m), have = pool_->blocks_free();
      KVCACHE_REQUIRE(need <= have, "block pool exhausted: ", need, " more blocks of ", block_rows(), " rows asked, ",
                      have, " of ", pool_->blocks_total(), " free (",
                      pool_->blocks_total() * std::int64_t(pool_->block_bytes()), " bytes)");
    }
  }

  /// Throws unless k, v and positions are rows this layer can take: k [n_kv_heads, m, head_dim_k], v
  /// [n_kv_heads, m, head_dim_v] (empty in the latent layout), m positions. Capacity is not checked.
  template <class S>
  void check_shapes(ConstTensorView<S, 3> k, ConstTensorView<S, 3> v, std::span<const Position> positions) const {
    KVCACHE_REQUIRE(k.dimension(0) == n_kv_heads_ && (v.dimension(0) == n_kv_heads_ || v.size() == 0),
                    "append: keys have ", k.dimension(0), " heads and values ", v.dimension(0), ", the layer has ",
                    n_kv_heads_);
    const Eigen::Index m = k.dimension(1);
    KVCACHE_REQUIRE(k.dimension(2) == dk_, "append: keys have width ", k.dimension(2), ", head_dim_k is ", dk_);
    check_values(v.size(), v.dimension(2), v.dimension(1), m);
    KVCACHE_REQUIRE(static_cast<Eigen::Index>(positions.size()) == m, "append: ", m, " rows but ", positions.size(),
                    " positions");
  }

  /// Removes the given slots of head h: distinct, each in [0, length(h)), in any order. The last surviving rows move
  /// into the holes (each at most once), so length(h) drops by slots.size() and the survivors stay dense; a paged
  /// head returns the blocks past its new length to the pool. on_move(from, to) is called for each row moved, so
  /// per-slot data kept elsewhere (scores, norms) can follow. Different heads may be removed from at once.
  template <class OnMove = NoMove>
  void remove(int h, std::span<std::int32_t const> slots, OnMove&& on_move = {}) {
    remove_rows<false>(h, slots, on_move);
  }
  /// Blocks that remove(h, slots) would take from the pool: copies of the shared blocks it writes into (0 unless the
  /// head shares blocks with a fork). slots: distinct, in [0, length(h)). scratch: at least block_ids(h).size() ids.
  [[nodiscard]] std::int64_t removal_copies(int h, std::span<std::int32_t const> slots,
                                            std::span<std::int32_t> scratch) const noexcept {
    if (!paged_) return 0;
    return shared_holes(h, slots, length(h) - std::int64_t(slots.size()), scratch.data());
  }
  /// remove() that, when a paged head would have to copy a block it shares (a fork) and the pool has no block left,
  /// removes nothing and returns false instead of throwing (eviction then waits for a later step). Other bad input
  /// still throws.
  template <class OnMove = NoMove>
  bool try_remove(int h, std::span<std::int32_t const> slots, OnMove&& on_move = {}) {
    return remove_rows<true>(h, slots, on_move);
  }

 private:
  template <bool Try, class OnMove>
  bool remove_rows(int h, std::span<std::int32_t const> slots, OnMove& on_move) {
    check_head(h, "remove");
    const std::int64_t len = length(h);
    KVCACHE_REQUIRE(static_cast<std::int64_t>(slots.size()) <= len, "remove: ", slots.size(), " slots from head ", h,
                    ", which holds ", len);
    std::uint8_t* mark = mark_.data() + static_cast<std::size_t>(capacity_) * static_cast<std::size_t>(h);
    std::size_t marked = 0;
    for (; marked < slots.size(); ++marked) {
      const std::int32_t s = slots[marked];
      if (s < 0 || s >= len || mark[static_cast<std::size_t>(s)] != 0) break;
      mark[static_cast<std::size_t>(s)] = 1;
    }
    if (marked != slots.size()) [[unlikely]] {
      const std::int32_t bad = slots[marked];
      const bool duplicate = bad >= 0 && bad < len;
      for (std::size_t i = 0; i < marked; ++i) mark[static_cast<std::size_t>(slots[i])] = 0;
      if (duplicate) detail::throw_error("remove: slot ", bad, " of head ", h, " is listed twice");
      detail::throw_error("remove: slot ", bad, " does not exist in head ", h, ", which holds ", len, " rows");
    }
    const std::int64_t new_len = len - static_cast<std::int64_t>(slots.size());
    // Blocks that receive a moved row are written: a shared one is copied first (the only step that can fail).
    if (paged_ && !unshare_holes(h, slots, new_len)) {
      for (std::int32_t s : slots) mark[static_cast<std::size_t>(s)] = 0;
      if constexpr (Try) return false;
      detail::throw_error("block pool exhausted: removing ", slots.size(), " rows of head ", h,
                          " needs copies of the blocks it shares, and ", pool_->blocks_free(), " of ",
                          pool_->blocks_total(), " blocks are free");
    }
    std::int64_t src = len;  // scans [new_len, len) downwards for survivors
    for (std::int32_t hole : slots) {
      if (hole >= new_len) continue;
      do --src;
      while (mark[static_cast<std::size_t>(src)] != 0);
      move_row(h, src, hole);
      on_move(src, static_cast<std::int64_t>(hole));
    }
    for (std::int32_t s : slots) mark[static_cast<std::size_t>(s)] = 0;
    length_[static_cast<std::size_t>(h)] = new_len;
    if (paged_) drop_blocks(h, blocks_for(new_len));
    return true;
  }

 public:
  /// Rewrites row `slot` of head h in place: key [head_dim_k], value [head_dim_v] (f32, converted to dtype(); v is
  /// ignored in the latent layout) and position. For merging policies (DMC), whose newest slot absorbs the new token.
  /// Length does not change.
  void overwrite(int h, std::int64_t slot, const float* k, const float* v, Position position) {
    check_head(h, "overwrite");
    KVCACHE_REQUIRE(slot >= 0 && slot < length(h), "overwrite: slot ", slot, " does not exist in head ", h,
                    ", which holds ", length(h), " rows");
    unshare_block(h, slot >> shift_);
    const Isa isa = active_isa();
    store_rows(h, std::size_t(slot), k, 1, false, isa);
    if (!values_in_keys_) store_rows(h, std::size_t(slot), v, 1, true, isa);
    pos_rows_mut(h)[slot] = position;
  }

  /// Replaces the key row of slot `slot` of head h (f32, rounded to the storage type); values and position stay. In
  /// the latent layout this rewrites the whole row, the value part included.
  void overwrite_key(int h, std::int64_t slot, const float* k) {
    check_head(h, "overwrite_key");
    KVCACHE_REQUIRE(slot >= 0 && slot < length(h), "overwrite_key: slot ", slot, " does not exist in head ", h,
                    ", which holds ", length(h), " rows");
    unshare_block(h, slot >> shift_);
    store_rows(h, std::size_t(slot), k, 1, false, active_isa());
  }

  /// Drops every row of head h (or of every head). Dense memory stays allocated; a paged head returns its blocks.
  void clear(int h) noexcept {
    length_[static_cast<std::size_t>(h)] = 0;
    if (paged_) drop_blocks(h, 0);
  }
  void clear() noexcept {
    for (int h = 0; h < n_kv_heads_; ++h) clear(h);
  }

 private:
  LayerSlots(const AttentionShape& shape, std::int64_t capacity, DType dtype, BlockPool* pool)
      : n_kv_heads_(shape.n_kv_heads),
        dk_(shape.head_dim_k),
        dv_(shape.dim_v()),
        values_in_keys_(shape.values_in_keys),
        capacity_(capacity),
        dtype_(dtype) {
    shape.validate();
    KVCACHE_REQUIRE(capacity > 0 && capacity <= CacheConfig::kMaxCapacity, "capacity must be in [1, ",
                    CacheConfig::kMaxCapacity, "], got ", capacity);
    const std::size_t cap = static_cast<std::size_t>(capacity), heads = static_cast<std::size_t>(n_kv_heads_);
    if (pool == nullptr) {
      own_.reset(new BlockPool(BlockPool::Dense{}, shape, dtype, capacity, n_kv_heads_));
      pool_ = own_.get();
      shift_ = HeadRows::kDenseShift;
      max_blocks_ = 1;
    } else {
      KVCACHE_REQUIRE(pool->dtype() == dtype && pool->head_dim_k() == dk_ && pool->head_dim_v() == dv_ &&
                          pool->values_in_keys() == values_in_keys_,
                      "the block pool holds ", dtype_name(pool->dtype()), " rows of head_dim_k ", pool->head_dim_k(),
                      ", head_dim_v ", pool->head_dim_v(), pool->values_in_keys() ? " (latent)" : "",
                      "; the cache stores ", dtype_name(dtype), " rows of ", dk_, ", ", dv_,
                      values_in_keys_ ? " (latent)" : "");
      pool_ = pool;
      paged_ = true;
      shift_ = std::countr_zero(unsigned(pool->block_rows()));
      max_blocks_ = static_cast<std::int32_t>((capacity + pool->block_rows() - 1) / pool->block_rows());
    }
    ids_.assign(heads * std::size_t(max_blocks_), -1);
    bases_.assign(heads * std::size_t(max_blocks_), nullptr);
    n_blocks_.assign(heads, 0);
    if (!paged_)
      for (int h = 0; h < n_kv_heads_; ++h) {
        ids_[std::size_t(h)] = h;
        bases_[std::size_t(h)] = pool_->block(h);
        n_blocks_[std::size_t(h)] = 1;
      }
    pos_ = AlignedBuffer(round_up(cap * sizeof(Position), kCacheLine) * heads);
    length_.assign(heads, 0);
    mark_.assign(cap * heads, 0);
    if (paged_) scratch_.assign(2 * std::size_t(max_blocks_) * heads, 0);
  }

  template <class T>
  void require_type() const {
    KVCACHE_REQUIRE(dtype_of<T>() == dtype_, "rows are stored as ", dtype_name(dtype_), ", not as ",
                    dtype_name(dtype_of<T>()));
  }
  void require_dense(const char* who) const {
    KVCACHE_REQUIRE(!paged_, who, ": the rows of a paged head are not contiguous; read rows(h), k_row() or v_row()");
  }
  void check_head(int h, const char* who) const {
    KVCACHE_REQUIRE(h >= 0 && h < n_kv_heads_, who, ": KV head ", h, " does not exist (the layer has ", n_kv_heads_,
                    ")");
  }
  // Values of an append: [m, head_dim_v] with m rows, or empty in the latent layout.
  void check_values(Eigen::Index size, Eigen::Index width, Eigen::Index rows, Eigen::Index m) const {
    if (values_in_keys_) {
      KVCACHE_REQUIRE(size == 0, "append: the latent layout stores no values (they are the first ", dv_,
                      " elements of each key row); pass an empty value tensor");
      return;
    }
    KVCACHE_REQUIRE(width == dv_, "append: values have width ", width, ", head_dim_v is ", dv_);
    KVCACHE_REQUIRE(rows == m, "append: ", m, " key rows but ", rows, " value rows");
  }
  [[nodiscard]] std::size_t pos_stride() const noexcept {
    return round_up(std::size_t(capacity_) * sizeof(Position), kCacheLine) / sizeof(Position);
  }
  const Position* pos_rows(int h) const noexcept { return pos_.as<Position>() + pos_stride() * std::size_t(h); }
  Position* pos_rows_mut(int h) noexcept { return pos_.as<Position>() + pos_stride() * std::size_t(h); }

  // Paged blocks. A head's table: ids_ / bases_ [h * max_blocks_, + n_blocks_[h]).
  [[nodiscard]] std::int64_t blocks_for(std::int64_t rows) const noexcept {
    return paged_ ? (rows + block_rows() - 1) >> shift_ : 1;
  }
  [[nodiscard]] std::int32_t* table(int h) noexcept { return ids_.data() + std::size_t(h) * std::size_t(max_blocks_); }
  [[nodiscard]] std::byte** bases(int h) noexcept { return bases_.data() + std::size_t(h) * std::size_t(max_blocks_); }
  // Blocks that appending m rows to heads [h0, h1) takes: new ones past the last, and a copy of a shared last block
  // that the rows would be written into.
  [[nodiscard]] std::int64_t blocks_needed(int h0, int h1, std::int64_t m) const noexcept {
    if (!paged_ || m == 0) return 0;
    std::int64_t need = 0;
    for (int h = h0; h < h1; ++h) {
      const std::int64_t len = length(h), have = n_blocks_[std::size_t(h)];
      need += blocks_for(len + m) - have;
      if ((len & (block_rows() - 1)) != 0 &&
          pool_->refs(ids_[std::size_t(h) * std::size_t(max_blocks_) + std::size_t(have - 1)]) > 1)
        ++need;
    }
    return need;
  }
  // Before appending m rows to heads [h0, h1): takes every block they need in one call (all or nothing), copies
  // shared last blocks, and extends the tables.
  void take_blocks(int h0, int h1, std::int64_t m) {
    if (!paged_ || m == 0) return;
    const std::int64_t need = blocks_needed(h0, h1, m);
    if (need == 0) return;
    std::span<std::int32_t> got(scratch_.data(), std::size_t(need));  // need <= the tables' room: fits
    pool_->acquire(got);
    std::size_t i = 0;
    for (int h = h0; h < h1; ++h) {
      const std::int64_t len = length(h);
      std::int32_t& n = n_blocks_[std::size_t(h)];
      if ((len & (block_rows() - 1)) != 0 && pool_->refs(table(h)[n - 1]) > 1) replace_block(h, n - 1, got[i++]);
      for (const std::int64_t want = blocks_for(len + m); n < want; ++n) {
        table(h)[n] = got[i];
        bases(h)[n] = pool_->block(got[i++]);
      }
    }
  }
  // Block b of head h becomes `fresh`, a copy of it; the head's reference to the old one is dropped.
  void replace_block(int h, std::int64_t b, std::int32_t fresh) noexcept {
    const std::int32_t old = table(h)[b];
    std::memcpy(pool_->block(fresh), pool_->block(old), pool_->block_bytes());
    table(h)[b] = fresh;
    bases(h)[b] = pool_->block(fresh);
    pool_->release(std::span<const std::int32_t>(&old, 1));
  }
  // Copies block b of head h if another head shares it.
  void unshare_block(int h, std::int64_t b) {
    if (!paged_ || pool_->refs(table(h)[b]) <= 1) return;
    std::int32_t fresh;
    pool_->acquire(std::span<std::int32_t>(&fresh, 1));
    replace_block(h, b, fresh);
  }
  // Copies every shared block of head h that a removal leaving new_len rows writes into (those holding a hole below
  // new_len), taking the copies in one call; false (nothing taken or copied) if the pool has too few.
  [[nodiscard]] bool unshare_holes(int h, std::span<std::int32_t const> slots, std::int64_t new_len) noexcept {
    std::int32_t* want = scratch_.data() + 2 * std::size_t(h) * std::size_t(max_blocks_);
    const std::int64_t n = shared_holes(h, slots, new_len, want);
    if (n == 0) return true;
    std::int32_t* fresh = want + max_blocks_;
    if (!pool_->try_acquire(std::span<std::int32_t>(fresh, std::size_t(n)))) return false;
    for (std::int64_t i = 0; i < n; ++i) replace_block(h, want[i], fresh[i]);
    return true;
  }
  // The distinct shared blocks of head h holding a slot below new_len, written to want (room for max_blocks_).
  std::int64_t shared_holes(int h, std::span<std::int32_t const> slots, std::int64_t new_len,
                            std::int32_t* want) const noexcept {
    std::int64_t n = 0;
    const std::int32_t* tab = ids_.data() + std::size_t(h) * std::size_t(max_blocks_);
    for (std::int32_t s : slots) {
      if (s >= new_len) continue;
      const std::int32_t b = s >> shift_;
      if (pool_->refs(tab[b]) <= 1) continue;
      bool seen = false;
      for (std::int64_t i = 0; i < n && !seen; ++i) seen = want[i] == b;
      if (!seen) want[n++] = b;
    }
    return n;
  }
  // Returns head h's blocks from the keep-th on to the pool.
  void drop_blocks(int h, std::int64_t keep) noexcept {
    std::int32_t& n = n_blocks_[std::size_t(h)];
    if (n <= keep) return;
    pool_->release(std::span<const std::int32_t>(table(h) + keep, std::size_t(n - keep)));
    for (std::int64_t b = keep; b < n; ++b) {
      table(h)[b] = -1;
      bases(h)[b] = nullptr;
    }
    n = static_cast<std::int32_t>(keep);
  }

  /// Writes `count` rows of src (any element type, contiguous rows of head_dim_k, or head_dim_v for values) into head
  /// h from row `row` on, rounded to dtype(); i8 rows are quantized one by one, their scales written beside them.
  template <class S>
  void store_rows(int h, std::size_t row, const S* src, std::size_t count, bool values, Isa isa) const {
    const HeadRows hr = rows(h);
    const std::size_t w = std::size_t(values ? dv_ : dk_);
    for (std::size_t done = 0; done < count;) {
      const std::int64_t r = std::int64_t(row + done);
      const std::size_t n = std::min<std::size_t>(std::size_t(hr.contiguous(r)), count - done);
      void* base = const_cast<void*>(values ? static_cast<const void*>(hr.v<std::byte>(r))
                                            : static_cast<const void*>(hr.k<std::byte>(r)));
      float* scales = const_cast<float*>(values ? hr.vs(r) : hr.ks(r));
      store_run(base, scales, src + done * w, n, w, isa);
      done += n;
    }
  }
  // n consecutive rows of width w at base (and for i8 their scales).
  template <class S>
  void store_run(void* base, float* scales, const S* src, std::size_t n, std::size_t w, Isa isa) const {
    switch (dtype_) {
      case DType::kF32:
        convert(static_cast<float*>(base), src, n * w, isa);
        break;
      case DType::kF16:
        convert(static_cast<f16*>(base), src, n * w, isa);
        break;
      case DType::kBF16:
        convert(static_cast<bf16*>(base), src, n * w, isa);
        break;
      case DType::kI8: {
        float tmp[AttentionShape::kMaxHeadDim];
        for (std::size_t r = 0; r < n; ++r) {
          const float* x = tmp;
          if constexpr (std::is_same_v<S, float>)
            x = src + r * w;
          else
            convert(tmp, src + r * w, w, isa);
          scales[r] = quantize_row_i8(x, w, static_cast<i8*>(base) + r * w, isa);
        }
        break;
      }
    }
  }

  template <class S>
  void append_rows(int h, S const* k, S const* v, const Position* pos, std::int64_t m) {
    if (m == 0) return;  // the rows of an empty chunk may be null, and memcpy must not see a null pointer
    const std::size_t len = static_cast<std::size_t>(length(h));
    const Isa isa = active_isa();
    store_rows(h, len, k, static_cast<std::size_t>(m), false, isa);
    if (!values_in_keys_) store_rows(h, len, v, static_cast<std::size_t>(m), true, isa);
    std::memcpy(pos_rows_mut(h) + len, pos, static_cast<std::size_t>(m) * sizeof(Position));
    length_[static_cast<std::size_t>(h)] += m;
  }

  void move_row(int h, std::int64_t from, std::int64_t to) noexcept {
    const HeadRows r = rows(h);
    const std::size_t kb = std::size_t(dk_) * elem_size(), vb = values_in_keys_ ? 0 : std::size_t(dv_) * elem_size();
    std::memcpy(const_cast<std::byte*>(r.k<std::byte>(to)), r.k<std::byte>(from), kb);
    if (vb != 0) std::memcpy(const_cast<std::byte*>(r.v<std::byte>(to)), r.v<std::byte>(from), vb);
    pos_rows_mut(h)[to] = pos_rows(h)[from];
    if (r.scaled) {
      *const_cast<float*>(r.ks(to)) = *r.ks(from);
      if (!values_in_keys_) *const_cast<float*>(r.vs(to)) = *r.vs(from);
    }
  }

  int n_kv_heads_, dk_, dv_;
  bool values_in_keys_;
  std::int64_t capacity_;
  DType dtype_;
  std::unique_ptr<BlockPool> own_;  // dense storage's blocks: one per head
  BlockPool* pool_ = nullptr;       // own_, or the shared pool of paged storage
  bool paged_ = false;
  int shift_ = HeadRows::kDenseShift;   // log2 of the rows per block
  std::int32_t max_blocks_ = 1;         // a head's table entries
  std::vector<std::int32_t> ids_;       // [n_kv_heads, max_blocks]: block ids, row order
  std::vector<std::byte*> bases_;       // [n_kv_heads, max_blocks]: their addresses (what HeadRows::blocks points at)
  std::vector<std::int32_t> n_blocks_;  // [n_kv_heads]: blocks each head holds
  AlignedBuffer pos_;                   // [n_kv_heads, capacity] positions
  std::vector<std::int64_t> length_;
  // Scratch of remove(), [n_kv_heads, capacity], all zero between calls: one row per head, so that different heads
  // can be compacted at once (KVCache evicts each head in the decode task that finished it).
  std::vector<std::uint8_t> mark_;
  // Paged: block ids being taken, [n_kv_heads, 2 x max_blocks] (a whole-layer append uses the first half of it, a
  // removal its head's row: the blocks to copy, then their copies).
  std::vector<std::int32_t> scratch_;
};

/// Slot storage of one sequence: one LayerSlots per layer, all of one shape, capacity and element type; dense, or
/// paged on one BlockPool.
class SlotStorage {
 public:
  explicit SlotStorage(const CacheConfig& config) : config_(config) {
    config.validate();
    layers_.reserve(static_cast<std::size_t>(config.n_layers));
    for (int l = 0; l < config.n_layers; ++l) layers_.emplace_back(config.shape, config.capacity, config.dtype);
  }
  /// Paged on `pool`: capacity bounds each head's rows.
  SlotStorage(const CacheConfig& config, BlockPool& pool) : config_(config) {
    config.validate();
    layers_.reserve(static_cast<std::size_t>(config.n_layers));
    for (int l = 0; l < config.n_layers; ++l) layers_.emplace_back(config.shape, config.capacity, config.dtype, pool);
  }
  /// The same rows as `other` (paged), sharing its blocks copy-on-write.
  SlotStorage(LayerSlots::Share, const SlotStorage& other) : config_(other.config_) {
    layers_.reserve(other.layers_.size());
    for (const LayerSlots& l : other.layers_) layers_.emplace_back(LayerSlots::Share{}, l);
  }
  [[nodiscard]] bool paged() const noexcept { return layers_.front().paged(); }
  [[nodiscard]] BlockPool* pool() const noexcept { return layers_.front().pool(); }
  [[nodiscard]] std::int64_t blocks_held() const noexcept {
    std::int64_t n = 0;
    for (const auto& l : layers_) n += l.blocks_held();
    return n;
  }
  [[nodiscard]] const CacheConfig& config() const noexcept { return config_; }
  [[nodiscard]] int n_layers() const noexcept { return config_.n_layers; }
  [[nodiscard]] LayerSlots& layer(int l) {
    KVCACHE_REQUIRE(l >= 0 && l < n_layers(), "layer ", l, " does not exist (the cache has ", n_layers(), ")");
    return layers_[static_cast<std::size_t>(l)];
  }
  [[nodiscard]] const LayerSlots& layer(int l) const {
    KVCACHE_REQUIRE(l >= 0 && l < n_layers(), "layer ", l, " does not exist (the cache has ", n_layers(), ")");
    return layers_[static_cast<std::size_t>(l)];
  }
  [[nodiscard]] std::size_t kv_bytes() const noexcept {
    std::size_t b = 0;
    for (const auto& l : layers_) b += l.kv_bytes();
    return b;
  }
  [[nodiscard]] std::size_t bytes_reserved() const noexcept {
    std::size_t b = 0;
    for (const auto& l : layers_) b += l.bytes_reserved();
    return b;
  }
  void clear() noexcept {
    for (auto& l : layers_) l.clear();
  }

 private:
  CacheConfig config_;
  std::vector<LayerSlots> layers_;
};

}  // namespace kvcache
