#pragma once

// Test and bench hooks: force the ISA of every later kernel call in the process, so that one binary can compare its
// scalar, AVX2 and AVX-512 paths, and turn int8 decode's VNNI path off. Not part of the engine-facing API (engines use
// KVCACHE_ISA).

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

/// Turns the AVX-512 VNNI path of int8 decode off (false) or back to the normal choice (true or std::nullopt: on
/// where the CPU has VNNI), so that tests and benches can run the FMA path on the same CPU.
inline void set_vnni_for_testing(std::optional<bool> on) {
  detail::vnni_override().store(on ? (*on ? 1 : 0) : -1, std::memory_order_relaxed);
}

}  // namespace kvcache
