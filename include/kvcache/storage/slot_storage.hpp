#pragma once

// Dense slot storage.
//
// One LayerSlots holds every KV head of one layer. KV head h owns rows [0, length(h)) of
//   K: [n_kv_heads, capacity, head_dim_k]   V: [n_kv_heads, capacity, head_dim_v]   positions: [n_kv_heads, capacity]
// in the element type chosen at construction (f32, f16, bf16 or i8). Heads may hold different numbers of rows. Rows are
// appended at the end; remove() deletes any set of slots by moving the last surviving rows into the holes, so the
// live rows stay dense (kernels need no mask), each surviving row moves at most once, and removing r rows moves at
// most r rows. Slot order therefore carries no meaning after a removal: the original position travels with each row.
//
// With AttentionShape::values_in_keys (MLA's latent layout) no value rows exist: the value of a row is the first
// head_dim_v elements of its key row, v_data() aliases k_data() with row stride v_stride() = head_dim_k, appends take
// keys only, and a row costs head_dim_k elements.
//
// i8 rows (DType::kI8) are quantized as they are written (quantize_row_i8: symmetric, one f32 scale per row), and the
// scales travel with their rows: k_scales(h), v_scales(h): [length(h)] (in the latent layout v_scales aliases
// k_scales, one scale per row). The value of element c of key row j is k_rows<i8>(h)[j * head_dim_k + c] *
// k_scales(h)[j].
//
// Nothing allocates after construction. Mutating calls validate their arguments and throw kvcache::Error naming
// the bad value, before touching any row (a failed call changes nothing).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "kvcache/core/aligned_buffer.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/tensor.hpp"
#include "kvcache/simd/convert.hpp"

namespace kvcache {

class LayerSlots {
 public:
  /// The default on_move of remove(): nothing else to move.
  struct NoMove {
    void operator()(std::int64_t, std::int64_t) const noexcept {}
  };

  LayerSlots(const AttentionShape& shape, std::int64_t capacity, DType dtype)
      : n_kv_heads_(shape.n_kv_heads),
        dk_(shape.head_dim_k),
        dv_(shape.dim_v()),
        values_in_keys_(shape.values_in_keys),
        capacity_(capacity),
        dtype_(dtype) {
    shape.validate();
    KVCACHE_REQUIRE(capacity > 0 && capacity <= CacheConfig::kMaxCapacity, "capacity must be in [1, ",
                    CacheConfig::kMaxCapacity, "], got ", capacity);
    const std::size_t cap = static_cast<std::size_t>(capacity);
    head_stride_k_ = round_up(cap * static_cast<std::size_t>(dk_) * elem_size(), kCacheLine);
    head_stride_v_ = values_in_keys_ ? 0 : round_up(cap * static_cast<std::size_t>(dv_) * elem_size(), kCacheLine);
    head_stride_pos_ = round_up(cap * sizeof(Position), kCacheLine);
    k_ = AlignedBuffer(head_stride_k_ * static_cast<std::size_t>(n_kv_heads_));
    if (!values_in_keys_) v_ = AlignedBuffer(head_stride_v_ * static_cast<std::size_t>(n_kv_heads_));
    pos_ = AlignedBuffer(head_stride_pos_ * static_cast<std::size_t>(n_kv_heads_));
    if (dtype == DType::kI8) {  // the row scales: [n_kv_heads, capacity] for keys, and for values unless latent
      ks_ = AlignedBuffer(head_stride_pos_ * static_cast<std::size_t>(n_kv_heads_));
      if (!values_in_keys_) vs_ = AlignedBuffer(head_stride_pos_ * static_cast<std::size_t>(n_kv_heads_));
    }
    length_.assign(static_cast<std::size_t>(n_kv_heads_), 0);
    mark_.assign(cap * static_cast<std::size_t>(n_kv_heads_), 0);
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
  /// Bytes allocated for this layer: K, V, their i8 scales and positions at full capacity (each head padded to 64
  /// bytes), the removal marks (one byte per slot) and the per-head lengths.
  [[nodiscard]] std::size_t bytes_reserved() const noexcept {
    return k_.size() + v_.size() + ks_.size() + vs_.size() + pos_.size() + mark_.size() * sizeof(mark_[0]) +
           length_.size() * sizeof(length_[0]);
  }

  /// Raw rows of head h (row stride head_dim_k / head_dim_v elements of dtype()).
  [[nodiscard]] const void* k_data(int h) const noexcept { return k_.data() + head_stride_k_ * std::size_t(h); }
  [[nodiscard]] const void* v_data(int h) const noexcept {
    return values_in_keys_ ? k_data(h) : v_.data() + head_stride_v_ * std::size_t(h);
  }
  [[nodiscard]] void* k_data(int h) noexcept { return k_.data() + head_stride_k_ * std::size_t(h); }
  [[nodiscard]] void* v_data(int h) noexcept {
    return values_in_keys_ ? k_data(h) : v_.data() + head_stride_v_ * std::size_t(h);
  }

  /// The scales of head h's i8 rows, [length(h)] (value = element x scale of its row); null for the other types. In
  /// the latent layout v_scales(h) is k_scales(h).
  [[nodiscard]] const float* k_scales(int h) const noexcept {
    return ks_.size() != 0 ? ks_.as<float>() + head_stride_pos_ / sizeof(float) * std::size_t(h) : nullptr;
  }
  [[nodiscard]] const float* v_scales(int h) const noexcept {
    return values_in_keys_   ? k_scales(h)
           : vs_.size() != 0 ? vs_.as<float>() + head_stride_pos_ / sizeof(float) * std::size_t(h)
                             : nullptr;
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
  /// Mutable rows, for code that rewrites keys in place (RoPE re-rotation, merging). Length does not change.
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

  /// Views of the live rows of head h, no copy. k: [length(h), head_dim_k], v: [length(h), head_dim_v].
  /// T must be the storage element type (float, kvcache::f16 = Eigen::half, kvcache::bf16 = Eigen::bfloat16, or
  /// kvcache::i8, whose rows need their scales).
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
    return {pos_.as<Position>() + head_stride_pos_ / sizeof(Position) * std::size_t(h),
            static_cast<std::size_t>(length(h))};
  }

  /// Appends m rows to head h. k: [m, head_dim_k], v: [m, head_dim_v], positions: [m]. S may be any element type;
  /// rows are converted to dtype() (round to nearest even when narrowing, quantized row by row for i8). The latent
  /// layout takes no values: v must
  /// then be empty ([m, 0] or [0, 0]).
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
    append_rows(h, k.data(), v.data(), positions.data(), m);
  }

  /// Appends m rows to every head, all at the same positions. k: [n_kv_heads, m, head_dim_k],
  /// v: [n_kv_heads, m, head_dim_v], positions: [m].
  template <class S>
  void append(ConstTensorView<S, 3> k, ConstTensorView<S, 3> v, std::span<const Position> positions) {
    check_append(k, v, positions);
    const Eigen::Index m = k.dimension(1);
    for (int h = 0; h < n_kv_heads_; ++h)
      append_rows(h, k.data() + h * m * dk_, values_in_keys_ ? nullptr : v.data() + h * m * dv_, positions.data(), m);
  }

  /// Throws what append(k, v, positions) would throw (shapes, capacity), without appending.
  template <class S>
  void check_append(ConstTensorView<S, 3> k, ConstTensorView<S, 3> v, std::span<const Position> positions) const {
    check_shapes(k, v, positions);
    const Eigen::Index m = k.dimension(1);
    for (int h = 0; h < n_kv_heads_; ++h)
      KVCACHE_REQUIRE(length(h) + m <= capacity_, "append: head ", h, " holds ", length(h), " rows; ", m,
                      " more exceed the capacity of ", capacity_);
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
  /// into the holes (each at most once), so length(h) drops by slots.size() and the survivors stay dense.
  /// on_move(from, to) is called for each row moved, so per-slot data kept elsewhere (scores, norms) can follow.
  template <class OnMove = NoMove>
  void remove(int h, std::span<std::int32_t const> slots, OnMove&& on_move = {}) {
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
  }

  /// Rewrites row `slot` of head h in place: key [head_dim_k], value [head_dim_v] (f32, converted to dtype(); v is
  /// ignored in the latent layout) and position. For merging policies (DMC), whose newest slot absorbs the new token.
  /// Length does not change.
  void overwrite(int h, std::int64_t slot, const float* k, const float* v, Position position) {
    check_head(h, "overwrite");
    KVCACHE_REQUIRE(slot >= 0 && slot < length(h), "overwrite: slot ", slot, " does not exist in head ", h,
                    ", which holds ", length(h), " rows");
    const Isa isa = active_isa();
    store_rows(k_data(h), k_scales_mut(h), std::size_t(slot), k, 1, dk_, isa);
    if (!values_in_keys_) store_rows(v_data(h), v_scales_mut(h), std::size_t(slot), v, 1, dv_, isa);
    pos_rows(h)[slot] = position;
  }

  /// Replaces the key row of slot `slot` of head h (f32, rounded to the storage type); values and position stay. In
  /// the latent layout this rewrites the whole row, the value part included.
  void overwrite_key(int h, std::int64_t slot, const float* k) {
    check_head(h, "overwrite_key");
    KVCACHE_REQUIRE(slot >= 0 && slot < length(h), "overwrite_key: slot ", slot, " does not exist in head ", h,
                    ", which holds ", length(h), " rows");
    store_rows(k_data(h), k_scales_mut(h), std::size_t(slot), k, 1, dk_, active_isa());
  }

  /// Drops every row of head h (or of every head). Memory stays allocated.
  void clear(int h) noexcept { length_[static_cast<std::size_t>(h)] = 0; }
  void clear() noexcept {
    for (auto& l : length_) l = 0;
  }

 private:
  template <class T>
  void require_type() const {
    KVCACHE_REQUIRE(dtype_of<T>() == dtype_, "rows are stored as ", dtype_name(dtype_), ", not as ",
                    dtype_name(dtype_of<T>()));
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
  Position* pos_rows(int h) noexcept {
    return pos_.as<Position>() + head_stride_pos_ / sizeof(Position) * std::size_t(h);
  }

  float* k_scales_mut(int h) noexcept { return const_cast<float*>(k_scales(h)); }
  float* v_scales_mut(int h) noexcept { return values_in_keys_ ? nullptr : const_cast<float*>(v_scales(h)); }

  /// Writes `rows` rows of `width` elements of src (any element type, contiguous) from row `row` of a key or value
  /// buffer, rounded to dtype(); i8 rows are quantized one by one, their scales written to scales[row ..].
  template <class S>
  void store_rows(void* base, float* scales, std::size_t row, const S* src, std::size_t rows, int width,
                  Isa isa) const {
    const std::size_t w = static_cast<std::size_t>(width), at = row * w, n = rows * w;
    switch (dtype_) {
      case DType::kF32:
        convert(static_cast<float*>(base) + at, src, n, isa);
        break;
      case DType::kF16:
        convert(static_cast<f16*>(base) + at, src, n, isa);
        break;
      case DType::kBF16:
        convert(static_cast<bf16*>(base) + at, src, n, isa);
        break;
      case DType::kI8: {
        float tmp[AttentionShape::kMaxHeadDim];
        for (std::size_t r = 0; r < rows; ++r) {
          const float* x = tmp;
          if constexpr (std::is_same_v<S, float>)
            x = src + r * w;
          else
            convert(tmp, src + r * w, w, isa);
          scales[row + r] = quantize_row_i8(x, w, static_cast<i8*>(base) + at + r * w, isa);
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
    store_rows(k_data(h), k_scales_mut(h), len, k, static_cast<std::size_t>(m), dk_, isa);
    if (!values_in_keys_) store_rows(v_data(h), v_scales_mut(h), len, v, static_cast<std::size_t>(m), dv_, isa);
    std::memcpy(pos_rows(h) + len, pos, static_cast<std::size_t>(m) * sizeof(Position));
    length_[static_cast<std::size_t>(h)] += m;
  }

  void move_row(int h, std::int64_t from, std::int64_t to) noexcept {
    const std::size_t kb = std::size_t(dk_) * elem_size(), vb = values_in_keys_ ? 0 : std::size_t(dv_) * elem_size();
    auto* kd = static_cast<std::byte*>(k_data(h));
    auto* vd = static_cast<std::byte*>(v_data(h));
    std::memcpy(kd + std::size_t(to) * kb, kd + std::size_t(from) * kb, kb);
    if (vb != 0) std::memcpy(vd + std::size_t(to) * vb, vd + std::size_t(from) * vb, vb);
    pos_rows(h)[to] = pos_rows(h)[from];
    if (float* ks = k_scales_mut(h)) ks[to] = ks[from];
    if (float* vs = v_scales_mut(h)) vs[to] = vs[from];
  }

  int n_kv_heads_, dk_, dv_;
  bool values_in_keys_;
  std::int64_t capacity_;
  DType dtype_;
  std::size_t head_stride_k_ = 0, head_stride_v_ = 0, head_stride_pos_ = 0;  // bytes between heads
  AlignedBuffer k_, v_, pos_;
  AlignedBuffer ks_, vs_;  // i8 only: the row scales of keys and values, laid out as the positions
  std::vector<std::int64_t> length_;
  // Scratch of remove(), [n_kv_heads, capacity], all zero between calls: one row per head, so that different heads
  // can be compacted at once (KVCache evicts each head in the decode task that finished it).
  std::vector<std::uint8_t> mark_;
};

/// Slot storage of one sequence: one LayerSlots per layer, all of one shape, capacity and element type.
class SlotStorage {
 public:
  explicit SlotStorage(const CacheConfig& config) : config_(config) {
    config.validate();
    layers_.reserve(static_cast<std::size_t>(config.n_layers));
    for (int l = 0; l < config.n_layers; ++l) layers_.emplace_back(config.shape, config.capacity, config.dtype);
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
