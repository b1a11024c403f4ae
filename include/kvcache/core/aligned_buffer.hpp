#pragma once

// A fixed-size, 64-byte aligned, zero-initialised byte buffer. Storage and workspaces use it so that rows start on
// cache-line boundaries and nothing reallocates after construction.
//
// On Linux, a buffer of kHugePageBytes or more starts on a 2 MiB boundary and asks the kernel for transparent huge
// pages over its whole 2 MiB pages (madvise MADV_HUGEPAGE, before the first touch). Decode streams a cache far larger
// than the TLBs cover; with 4 KiB pages every 4 KiB of rows costs a page walk, and a paged head, whose blocks lie
// apart, also misses the page-table lines the walks read. The advice is a hint: where transparent huge pages are off
// (/sys/kernel/mm/transparent_hugepage/enabled = never) nothing changes. The tail past the last whole 2 MiB page keeps
// small pages, so no memory is spent beyond the buffer itself.

#include <cstddef>
#include <cstring>
#include <memory>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace kvcache {

inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

constexpr std::size_t round_up(std::size_t n, std::size_t a) noexcept { return (n + a - 1) / a * a; }

namespace detail {
struct AlignedFree {
  std::size_t align = kCacheLine;
  void operator()(std::byte* p) const noexcept { ::operator delete (p, std::align_val_t{align}); }
};
}  // namespace detail

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t bytes) : size_(bytes) {
    if (bytes == 0) return;
    const std::size_t align = bytes >= kHugePageBytes ? kHugePageBytes : kCacheLine;
    data_ = std::unique_ptr<std::byte[], detail::AlignedFree>(
        static_cast<std::byte*>(::operator new (round_up(bytes, kCacheLine), std::align_val_t{align})),
        detail::AlignedFree{align});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHugePageBytes) (void)::madvise(data_.get(), bytes / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
#endif
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
  std::unique_ptr<std::byte[], detail::AlignedFree> data_;
  std::size_t size_ = 0;
};

}  // namespace kvcache
