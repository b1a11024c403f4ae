#pragma once

// The bookkeeping of a cache layer that several model layers read (YOCO's global cache: KVCacheOptions::readers).
// prefill()/decode() make a step's first read; read_prefill()/read_decode() the others, in layer order. The policy's
// scores add up over all reads, and eviction waits for the last one.

#include <cstdint>
#include <vector>

#include "kvcache/core/error.hpp"

namespace kvcache {

class SharedReads {
 public:
  SharedReads() = default;
  SharedReads(int n_layers, int readers) : readers_(readers), layers_(std::size_t(n_layers)) {
    KVCACHE_REQUIRE(readers >= 1, "readers must be >= 1, got ", readers);
  }

  [[nodiscard]] int readers() const noexcept { return readers_; }

  /// Throws unless layer l's previous step has had all its reads.
  void require_done(int l, const char* who) const {
    const int due = layers_[std::size_t(l)].due;
    KVCACHE_REQUIRE(due == 0, who, ": layer ", l, " still waits for ", due, " read(s) of its previous step (", readers_,
                    " readers: call read_prefill / read_decode first)");
  }
  /// A prefill chunk of m tokens was read once; returns true when that was its last read. compresses: the policy
  /// selects after the chunk's last read (so the reads export its observation window).
  bool start_prefill(int l, std::int64_t m, bool compresses) noexcept {
    Layer& s = layers_[std::size_t(l)];
    s = Layer{readers_ - 1, m, true, compresses};
    return s.due == 0;
  }
  /// A decode step was read once; returns true when that was its last read.
  bool start_decode(int l) noexcept {
    layers_[std::size_t(l)] = Layer{readers_ - 1, 1, false, false};
    return readers_ == 1;
  }
  /// The chunk a further read_prefill() reads; throws when none waits.
  [[nodiscard]] std::int64_t pending_prefill(int l) const {
    const Layer& s = layers_[std::size_t(l)];
    KVCACHE_REQUIRE(s.prefill && s.due > 0, "read_prefill: layer ", l,
                    " has no prefill chunk waiting for readers (readers = ", readers_, ")");
    return s.tokens;
  }
  void require_pending_decode(int l) const {
    const Layer& s = layers_[std::size_t(l)];
    KVCACHE_REQUIRE(!s.prefill && s.due > 0, "read_decode: layer ", l,
                    " has no decode step waiting for readers (readers = ", readers_, ")");
  }
  [[nodiscard]] bool compresses(int l) const noexcept { return layers_[std::size_t(l)].compresses; }
  /// One more read of layer l's step; returns true when it is the last.
  bool read(int l) noexcept { return --layers_[std::size_t(l)].due == 0; }
  /// True when the next read of layer l is its step's last.
  [[nodiscard]] bool next_is_last(int l) const noexcept { return layers_[std::size_t(l)].due == 1; }
  void reset() noexcept {
    for (Layer& s : layers_) s = Layer{};
  }

 private:
  struct Layer {
    int due = 0;              // reads still due for the current step
    std::int64_t tokens = 0;  // the step's tokens (prefill chunk)
    bool prefill = false, compresses = false;
  };
  int readers_ = 1;
  std::vector<Layer> layers_;
};

}  // namespace kvcache
