#pragma once

// Test and bench hook: forces the ISA of every later kernel call in the process, so that one binary can compare its
// scalar, AVX2 and AVX-512 paths. Not part of the engine-facing API (engines use KVCACHE_ISA).

#include <atomic>
#include <optional>

#include "kvcache/simd/isa.hpp"

namespace kvcache {

/// Forces isa for every later call (std::nullopt returns to the normal choice). Throws Error when isa is not
/// available here.
inline void set_isa_for_testing(std::optional<Isa> isa) {
  if (isa) detail::require_available(*isa, "set_isa_for_testing");
  detail::isa_override().store(isa ? static_cast<int>(*isa) : -1, std::memory_order_relaxed);
}

}  // namespace kvcache
