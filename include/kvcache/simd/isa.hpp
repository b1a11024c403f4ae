#pragma once

// Instruction-set selection.
//
//   Isa::kScalar  one float lane; runs anywhere, and is the reference the SIMD paths are compared with.
//   Isa::kAvx2    AVX2 + FMA + F16C, 8 lanes.
//   Isa::kAvx512  AVX-512 F/BW/DQ/VL, 16 lanes.
//   Isa::kAmx     kAvx512 plus AMX-TILE, AMX-BF16 and AVX512-BF16 (Sapphire Rapids and later): the AVX-512 kernels,
//                 except that decode runs Q.K and P.V of groups of 16 or more query heads (MLA: all of them) over
//                 bf16 caches as AMX tile products, and prefill over bf16 caches does so for every shape
//                 (attention/kernels/amx.hpp). Linux only: the process asks
//                 the kernel for the tile state once (arch_prctl ARCH_REQ_XCOMP_PERM), and the ISA counts as
//                 unsupported if that is refused.
//
// The CPU is probed once (cached). The choice is, in order: the override of testing/isa.hpp (set_isa_for_testing());
// the environment variable KVCACHE_ISA=scalar|avx2|avx512|amx (read once); the best ISA the CPU has. Forcing an ISA
// that the CPU or the build lacks throws Error. Public kernels call active_isa() once per call and stay on that ISA for
// the whole call.

#include <array>
#include <atomic>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvcache/core/error.hpp"
#include "kvcache/core/macros.hpp"

#if KVCACHE_HAVE_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace kvcache {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

constexpr std::string_view isa_name(Isa isa) noexcept {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAmx:
      return "amx";
  }
  return "?";
}

/// Parses "scalar", "avx2", "avx512" or "amx"; throws Error naming the text otherwise.
inline Isa parse_isa(std::string_view s) {
  if (s == "scalar") return Isa::kScalar;
  if (s == "avx2") return Isa::kAvx2;
  if (s == "avx512") return Isa::kAvx512;
  if (s == "amx") return Isa::kAmx;
  detail::throw_error("unknown ISA '", s, "'; expected scalar, avx2, avx512 or amx");
}

/// Whether this build contains kernels for isa (static dispatch compiles only what the compiler flags imply).
constexpr bool isa_compiled(Isa isa) noexcept {
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return KVCACHE_HAVE_AVX2;
    case Isa::kAvx512:
      return KVCACHE_HAVE_AVX512;
    case Isa::kAmx:
      return KVCACHE_HAVE_AMX;
  }
  return false;
}

/// Whether the CPU (and the OS, which must save the wider registers) supports isa. Probed once; AMX is probed only
/// when asked about, because that probe asks Linux for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM), a change to
/// the process that KVCACHE_ISA=scalar|avx2|avx512 avoids.
inline bool cpu_supports(Isa isa) noexcept {
#if KVCACHE_X86 && (defined(__GNUC__) || defined(__clang__))
  static const std::array<bool, 3> supported = [] {
    __builtin_cpu_init();
#if defined(__clang__)
    // Clang's builtin does not know "f16c"; every AVX2 CPU has it (Haswell, Excavator and later).
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    return std::array<bool, 3>{true, avx2, avx512};
  }();
  if (isa != Isa::kAmx) return supported[static_cast<int>(isa)];
#if KVCACHE_HAVE_AMX
  static const bool amx = [] {
    // Tile data is off until the process asks for it (Linux 5.16+); a refusal (older kernel, seccomp) means no AMX.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return supported[2] && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") &&
           __builtin_cpu_supports("avx512bf16") && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return amx;
#else
  return false;
#endif
#else
  return isa == Isa::kScalar;
#endif
}

/// Whether isa can run here: compiled into this build and supported by the CPU.
inline bool isa_available(Isa isa) noexcept { return isa_compiled(isa) && cpu_supports(isa); }

/// The best ISA that is available.
inline Isa best_isa() noexcept {
  if (isa_available(Isa::kAmx)) return Isa::kAmx;
  if (isa_available(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_available(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

namespace detail {
inline void require_available(Isa isa, std::string_view who) {
  KVCACHE_REQUIRE(isa_compiled(isa), who, " asks for ISA '", isa_name(isa),
                  "', which this build does not contain (static dispatch compiles only what the compiler flags imply)");
  KVCACHE_REQUIRE(cpu_supports(isa), who, " asks for ISA '", isa_name(isa), "', which this CPU does not support");
}

inline std::atomic<int>& isa_override() noexcept {
  static std::atomic<int> v{-1};
  return v;
}

/// KVCACHE_ISA, parsed and checked once. Throws (on every call) when it names an unknown or unavailable ISA.
inline Isa env_or_best_isa() {
  struct Choice {
    Isa isa = Isa::kScalar;
    std::optional<Error> error;
  };
  static const Choice choice = [] {
    Choice c;
    if (char const* env = std::getenv("KVCACHE_ISA"); env != nullptr && *env != '\0') {
      try {
        c.isa = parse_isa(env);
        require_available(c.isa, "KVCACHE_ISA");
      } catch (Error const& e) {
        c.error = Error(std::string("KVCACHE_ISA=") + env + ": " + (e.what() + 9));  // drop the "kvcache: " prefix
      }
    } else {
      c.isa = best_isa();
    }
    return c;
  }();
  if (choice.error) throw *choice.error;
  return choice.isa;
}
}  // namespace detail

/// The ISA the next kernel call will use.
inline Isa active_isa() {
  const int forced = detail::isa_override().load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Isa>(forced);
  return detail::env_or_best_isa();
}

namespace detail {
inline std::atomic<int>& vnni_override() noexcept {
  static std::atomic<int> v{-1};
  return v;
}
}  // namespace detail

/// Whether int8 decode under `isa` takes the AVX-512 VNNI integer dot products (attention/kernels/vnni.hpp): isa is
/// avx512 or amx, the build contains the leaf and the CPU has AVX512-VNNI (Cascade Lake, Ice Lake and later Intel
/// cores; Zen 4 and later), unless a test turned it off (testing/isa.hpp).
inline bool vnni_active(Isa isa) noexcept {
#if KVCACHE_HAVE_VNNI
  if (isa != Isa::kAvx512 && isa != Isa::kAmx) return false;
  static const bool cpu = [] {
    __builtin_cpu_init();
    return cpu_supports(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni");
  }();
  return cpu && detail::vnni_override().load(std::memory_order_relaxed) != 0;
#else
  (void)isa;
  return false;
#endif
}

/// Every ISA available here, lowest first (tests iterate over it).
inline std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx})
    if (isa_available(i)) out.push_back(i);
  return out;
}

}  // namespace kvcache
