#pragma once

// Per-slot state beside the K/V rows of one layer: one table of columns, declared once, that append, compaction,
// reset and byte accounting all iterate, so a row's state always moves with the row.
//
// A column is named by a tag type with `using type = T;` (T trivially copyable). Its data are
// [n_kv_heads, rows, capacity] values of T: `rows` values per slot (1 for most state; a row per query head for
// scores kept per query head), head h's row r starting at (h * rows + r) * capacity. A policy declares its columns
// in its add_columns hook (policy/policy.hpp); KVCache adds the attention scores it exports.
//
//   on append  the new slots' values are zero until a policy's on_append hook writes them;
//   on move    compaction copies slot `from` to slot `to` of the same head in every column and row;
//   on reset   every value is zero again.
// Nothing allocates after the columns are added.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "kvcache/core/error.hpp"

namespace kvcache {

namespace detail {
// One address per tag type: the column's key in the table.
template <class Tag>
inline constexpr char kColumnKey = 0;
}  // namespace detail

class SlotColumns {
 public:
  SlotColumns() = default;
  SlotColumns(int n_kv_heads, std::int64_t capacity) : n_kv_heads_(n_kv_heads), capacity_(capacity) {}

  /// Adds the column of Tag with `rows` values per slot (zero-filled). Adding a tag twice is an error.
  template <class Tag>
  void add(int rows = 1) {
    using T = typename Tag::type;
    static_assert(std::is_trivially_copyable_v<T>, "kvcache: a slot column holds trivially copyable values");
    KVCACHE_REQUIRE(find(&detail::kColumnKey<Tag>) == nullptr, "a slot column was declared twice");
    KVCACHE_REQUIRE(rows >= 1, "a slot column needs at least one value per slot, got ", rows);
    Column c;
    c.key = &detail::kColumnKey<Tag>;
    c.elem = sizeof(T);
    c.rows = rows;
    c.data.assign(std::size_t(n_kv_heads_) * std::size_t(rows) * std::size_t(capacity_) * sizeof(T), std::byte{0});
    columns_.push_back(std::move(c));
  }

  template <class Tag>
  [[nodiscard]] bool has() const noexcept {
    return find(&detail::kColumnKey<Tag>) != nullptr;
  }
  /// Row r of head h: capacity values (slots [0, capacity)); nullptr when the column was not added.
  template <class Tag>
  [[nodiscard]] typename Tag::type* data(int h, int r = 0) noexcept {
    Column* c = find(&detail::kColumnKey<Tag>);
    return c == nullptr ? nullptr : reinterpret_cast<typename Tag::type*>(c->data.data()) + offset(*c, h, r);
  }
  template <class Tag>
  [[nodiscard]] const typename Tag::type* data(int h, int r = 0) const noexcept {
    const Column* c = find(&detail::kColumnKey<Tag>);
    return c == nullptr ? nullptr : reinterpret_cast<const typename Tag::type*>(c->data.data()) + offset(*c, h, r);
  }
  /// The first n slots of head h, row r (empty when the column was not added).
  template <class Tag>
  [[nodiscard]] std::span<const typename Tag::type> slots(int h, std::int64_t n, int r = 0) const noexcept {
    const auto* p = data<Tag>(h, r);
    return p == nullptr ? std::span<const typename Tag::type>{} : std::span(p, std::size_t(n));
  }
  template <class Tag>
  [[nodiscard]] int rows() const noexcept {
    const Column* c = find(&detail::kColumnKey<Tag>);
    return c == nullptr ? 0 : c->rows;
  }

  /// Compaction moved head h's row from slot `from` to slot `to`: every column follows.
  void move(int h, std::int64_t from, std::int64_t to) noexcept {
    for (Column& c : columns_) {
      for (int r = 0; r < c.rows; ++r) {
        std::byte* base = c.data.data() + offset(c, h, r) * c.elem;
        switch (c.elem) {  // fixed sizes compile to one load and store
          case 1:
            base[to] = base[from];
            break;
          case 4:
            std::memcpy(base + to * 4, base + from * 4, 4);
            break;
          case 8:
            std::memcpy(base + to * 8, base + from * 8, 8);
            break;
          default:
            std::memcpy(base + std::size_t(to) * c.elem, base + std::size_t(from) * c.elem, c.elem);
        }
      }
    }
  }
  /// Zeroes slots [first, first + count) of head h in every column (new rows start from zero).
  void clear_slots(int h, std::int64_t first, std::int64_t count) noexcept {
    for (Column& c : columns_)
      for (int r = 0; r < c.rows; ++r)
        std::memset(c.data.data() + (offset(c, h, r) + std::size_t(first)) * c.elem, 0, std::size_t(count) * c.elem);
  }
  void reset() noexcept {
    for (Column& c : columns_) std::memset(c.data.data(), 0, c.data.size());
  }
  [[nodiscard]] std::size_t bytes() const noexcept {
    std::size_t n = 0;
    for (const Column& c : columns_) n += c.data.size();
    return n;
  }
  [[nodiscard]] std::int64_t capacity() const noexcept { return capacity_; }

 private:
  struct Column {
    const void* key = nullptr;
    std::size_t elem = 0;
    int rows = 1;
    std::vector<std::byte> data;
  };
  [[nodiscard]] std::size_t offset(const Column& c, int h, int r) const noexcept {
    return (std::size_t(h) * std::size_t(c.rows) + std::size_t(r)) * std::size_t(capacity_);
  }
  Column* find(const void* key) noexcept {
    for (Column& c : columns_)
      if (c.key == key) return &c;
    return nullptr;
  }
  const Column* find(const void* key) const noexcept {
    for (const Column& c : columns_)
      if (c.key == key) return &c;
    return nullptr;
  }

  int n_kv_heads_ = 0;
  std::int64_t capacity_ = 0;
  std::vector<Column> columns_;
};

}  // namespace kvcache
