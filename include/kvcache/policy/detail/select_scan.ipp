// The single-eviction scan of select_removals(), compiled per ISA inside kernels::<isa> (and its target region) so
// that the compiler vectorises it at that width. Plain loops over 32-bit lanes: priorities become order-preserving
// unsigned keys (NaN lowest), so the reductions are integer min/max, which vectorise without fast-math.

KVCACHE_INLINE std::uint32_t order_key(float p) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &p, 4);
  const std::uint32_t sign = 0u - (u >> 31);  // all ones for negative numbers
  const std::uint32_t nan = 0u - std::uint32_t((u & 0x7fffffffu) > 0x7f800000u);
  return (u ^ (sign | 0x80000000u)) & ~nan;  // NaN ranks below -inf
}

/// The slot to evict among rows whose position is in [sinks, recent_from): the lowest priority, and among equal
/// priorities the oldest position. -1 when every row is protected. Positions are distinct. Branch-free bodies (no
/// short-circuit) so that the loops vectorise.
KVCACHE_NOINLINE KVCACHE_VECTORIZE inline std::int64_t select_one(const std::int32_t* KVCACHE_RESTRICT pos,
                                                                  const float* KVCACHE_RESTRICT pri, std::int64_t n,
                                                                  std::int32_t sinks,
                                                                  std::int32_t recent_from) noexcept {
  constexpr std::uint32_t kProtected = 0xffffffffu;
  std::uint32_t lowest = kProtected;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::uint32_t prot = std::uint32_t(pos[s] < sinks) | std::uint32_t(pos[s] >= recent_from);
    const std::uint32_t k = order_key(pri[s]) | (0u - prot);
    lowest = k < lowest ? k : lowest;
  }
  if (lowest == kProtected) return -1;
  // The oldest position holding the lowest key, with its slot: a min over (position << 32 | slot).
  constexpr std::int64_t kNone = 0x7fffffffffffffffll;
  std::int64_t best = kNone;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::uint32_t prot = std::uint32_t(pos[s] < sinks) | std::uint32_t(pos[s] >= recent_from);
    const std::uint32_t k = order_key(pri[s]) | (0u - prot);
    const std::int64_t c = k == lowest ? (std::int64_t(pos[s]) << 32 | s) : kNone;
    best = c < best ? c : best;
  }
  return best == kNone ? -1 : (best & 0xffffffffll);
}

/// The largest position (positions are never empty here).
KVCACHE_NOINLINE KVCACHE_VECTORIZE inline std::int32_t newest_position(const std::int32_t* pos,
                                                                       std::int64_t n) noexcept {
  std::int32_t m = pos[0];
  for (std::int64_t s = 1; s < n; ++s) m = pos[s] > m ? pos[s] : m;
  return m;
}
