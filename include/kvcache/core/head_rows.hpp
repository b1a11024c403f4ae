#pragma once

// HeadRows: where the cached rows of one KV head live, as the kernels see them.
//
// A head's rows lie in blocks of 2^block_shift rows: row r is row r & (2^block_shift - 1) of block r >> block_shift.
// Paged storage (storage/block_pool.hpp) has blocks of 16 to 256 rows taken from a shared pool; dense storage has one
// block that holds every row (block_shift = kDenseShift). Inside a block the key rows, the value rows and, for i8,
// the row scales each lie contiguously, at fixed byte offsets from the block's base:
//   [key rows: block_rows x k_stride][value rows: block_rows x v_stride][key scales][value scales]
// (the latent layout has no value rows: a value is the head of its key row, v_offset = 0, v_stride = k_stride, and
// its one scale per row serves both). Kernels walk a head in runs of consecutive rows inside one block
// (contiguous()), so their inner loops see plain strided rows and nothing is gathered.

#include <cstddef>
#include <cstdint>

namespace kvcache {

struct HeadRows {
  /// The block_shift of dense storage: one block, larger than any capacity.
  static constexpr int kDenseShift = 40;

  const std::byte* const* blocks = nullptr;  ///< block bases, [ceil(length / block_rows())]
  int block_shift = kDenseShift;
  std::size_t k_stride = 0;   ///< bytes between key rows
  std::size_t v_stride = 0;   ///< bytes between value rows (the latent layout: k_stride)
  std::size_t v_offset = 0;   ///< bytes from a block's base to its first value row (the latent layout: 0)
  std::size_t ks_offset = 0;  ///< i8: bytes from a block's base to its key scales (f32, one per row)
  std::size_t vs_offset = 0;  ///< i8: ... to its value scales (the latent layout: ks_offset)
  bool scaled = false;        ///< i8 rows, whose scales the kernels apply

  [[nodiscard]] std::int64_t block_rows() const noexcept { return std::int64_t{1} << block_shift; }
  /// Rows from r on that lie in r's block (consecutive in memory).
  [[nodiscard]] std::int64_t contiguous(std::int64_t r) const noexcept {
    return block_rows() - (r & (block_rows() - 1));
  }
  /// Rows of [r, end) from r on that lie in r's block.
  [[nodiscard]] std::int64_t run(std::int64_t r, std::int64_t end) const noexcept {
    const std::int64_t n = contiguous(r);
    return end - r < n ? end - r : n;
  }
  template <class T>
  [[nodiscard]] T const* k(std::int64_t r) const noexcept {
    return reinterpret_cast<const T*>(base(r) + index(r) * k_stride);
  }
  template <class T>
  [[nodiscard]] T const* v(std::int64_t r) const noexcept {
    return reinterpret_cast<const T*>(base(r) + v_offset + index(r) * v_stride);
  }
  /// The scale of key row r and those after it in its block (null unless scaled).
  [[nodiscard]] const float* ks(std::int64_t r) const noexcept {
    return scaled ? reinterpret_cast<const float*>(base(r) + ks_offset) + index(r) : nullptr;
  }
  [[nodiscard]] const float* vs(std::int64_t r) const noexcept {
    return scaled ? reinterpret_cast<const float*>(base(r) + vs_offset) + index(r) : nullptr;
  }

 private:
  [[nodiscard]] const std::byte* base(std::int64_t r) const noexcept {
    return blocks[static_cast<std::size_t>(r >> block_shift)];
  }
  [[nodiscard]] std::size_t index(std::int64_t r) const noexcept {
    return static_cast<std::size_t>(r & (block_rows() - 1));
  }
};

/// HeadRows of element type T: what the kernels take (T is deduced from it).
template <class T>
struct TypedRows : HeadRows {
  TypedRows() = default;
  explicit TypedRows(const HeadRows& r) noexcept : HeadRows(r) {}
  [[nodiscard]] T const* k(std::int64_t r) const noexcept { return HeadRows::template k<T>(r); }
  [[nodiscard]] T const* v(std::int64_t r) const noexcept { return HeadRows::template v<T>(r); }
};

}  // namespace kvcache
