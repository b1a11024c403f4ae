#pragma once

// A fixed-size, 64-byte aligned, zero-initialised byte buffer. Storage and workspaces use it so that rows start on
// cache-line boundaries and nothing reallocates after construction.

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

namespace kvcache {

inline constexpr std::size_t kCacheLine = 64;

constexpr std::size_t round_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t bytes) : size_(bytes) {
    if (bytes == 0) return;
    data_.reset(static_cast<std::byte*>(::operator new (round_up(bytes, kCacheLine), std::align_val_t{kCacheLine})));
    std::memset(data_.get(), 0, bytes);
  }

  [[nodiscard]] std::byte* data() noexcept { return data_.get(); }
  [[nodiscard]] const std::byte* data() const noexcept { return data_.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  template <class T>
  [[nodiscard]] T* as() noexcept {
    return reinterpret_cast<T*>(data_.get());
  }
  template <class T>
  [[nodiscard]] T const* as() const noexcept {
    return reinterpret_cast<const T*>(data_.get());
  }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept { ::operator delete (p, std::align_val_t{kCacheLine}); }
  };
  std::unique_ptr<std::byte[], Free> data_;
  std::size_t size_ = 0;
};

}  // namespace kvcache
