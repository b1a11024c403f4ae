#pragma once

// Decodes a fuzzer's input as a stream of small choices. Reading past the end yields zeros, so every input, however
// short, is a complete program.

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kvfuzz {

class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size) noexcept : data_(data), size_(size) {}

  [[nodiscard]] bool empty() const noexcept { return pos_ >= size_; }
  /// The input's length, which a program may read as one more choice without consuming a byte.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  std::uint8_t byte() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
  std::uint32_t u32() noexcept { return static_cast<std::uint32_t>(u16()) | (static_cast<std::uint32_t>(u16()) << 16); }
  /// An integer in [lo, hi].
  int in(int lo, int hi) noexcept { return lo + static_cast<int>(u16() % static_cast<unsigned>(hi - lo + 1)); }
  /// True with probability about 1 / n.
  bool chance(int n) noexcept { return byte() % n == 0; }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

/// Values for tensors: a small LCG seeded from the input, so that the input spends its bytes on choices, not floats.
class Values {
 public:
  explicit Values(std::uint32_t seed) noexcept : state_(seed | 1u) {}
  /// Uniform in [-1, 1).
  float next() noexcept {
    state_ = state_ * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<std::int32_t>(state_)) * (1.0f / 2147483648.0f);
  }

 private:
  std::uint32_t state_;
};

}  // namespace kvfuzz
