// The single-eviction scan of select_removals(), compiled per ISA by simd/foreach_isa.inc so
// that the compiler vectorises it at that width. Plain loops over 32-bit lanes: priorities become order-preserving
// unsigned keys (NaN lowest), so the reductions are integer min/max, which vectorise without fast-math.

KVCACHE_INLINE std::uint32_t order_key(float p) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &p, 4);
  u &= ~(0u - std::uint32_t(u == 0x80000000u));  // -0 is +0, as the float comparison of the sorting path has it
  const std::uint32_t sign = 0u - (u >> 31);     // all ones for negative numbers
  const std::uint32_t nan = 0u - std::uint32_t((u & 0x7fffffffu) > 0x7f800000u);
  return (u ^ (sign | 0x80000000u)) & ~nan;  // NaN ranks below -inf
}

template <bool kFactor, bool kNegate>
KVCACHE_INLINE float priority_at(const float* KVCACHE_RESTRICT pri, const float* KVCACHE_RESTRICT factor,
                                 std::int64_t s) noexcept {
  float p;
  if constexpr (kFactor)
    p = pri[s] * factor[s];
  else
    p = pri[s];
  if constexpr (kNegate) p = -p;
  return p;
}

template <bool kFactor, bool kNegate>
KVCACHE_VECTORIZE inline std::int64_t select_one_scan(const std::int32_t* KVCACHE_RESTRICT pos,
                                                      const float* KVCACHE_RESTRICT pri,
                                                      const float* KVCACHE_RESTRICT factor, std::int64_t n,
                                                      std::int32_t sinks, std::int32_t recent_from) noexcept {
  // One minimum over 64-bit (key, position) pairs: the lowest priority and, among equal ones, the oldest position
  // (positions are distinct, so the pair names one row). Protected rows get the all-ones key; positions are biased
  // by 2^31 so that they order as unsigned numbers (a negative sink count leaves negative positions unprotected).
  // One pass over the priorities instead of two 32-bit scans (lowest key, then oldest position at that key), which
  // would read them back from L2. The scan waits on the cold positions, not on arithmetic.
  constexpr std::uint64_t kNone = ~std::uint64_t{0};
  std::uint64_t lowest = kNone;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::uint32_t prot = std::uint32_t(pos[s] < sinks) | std::uint32_t(pos[s] >= recent_from);
    const std::uint32_t k = order_key(priority_at<kFactor, kNegate>(pri, factor, s)) | (0u - prot);
    const std::uint64_t c = (std::uint64_t{k} << 32) | (std::uint32_t(pos[s]) ^ 0x80000000u);
    lowest = c < lowest ? c : lowest;
  }
  if ((lowest >> 32) == 0xffffffffu) return -1;
  // Its slot: a scan of the positions alone (masks, not ?:, which GCC leaves scalar here).
  const auto oldest = static_cast<std::int32_t>(std::uint32_t(lowest) ^ 0x80000000u);
  constexpr std::int32_t kNoSlot = 0x7fffffff;
  const auto n32 = static_cast<std::int32_t>(n);  // slots fit 32 bits (capacity is checked against it)
  std::int32_t slot = kNoSlot;
  for (std::int32_t s = 0; s < n32; ++s) {
    const std::uint32_t hit = 0u - std::uint32_t(pos[s] == oldest);
    const auto c = static_cast<std::int32_t>((std::uint32_t(s) & hit) | (std::uint32_t(kNoSlot) & ~hit));
    slot = c < slot ? c : slot;
  }
  return slot == kNoSlot ? -1 : slot;
}

/// The slot to evict among rows whose position is in [sinks, recent_from): the lowest priority (pri[s], times
/// factor[s] when factor is not null, negated when negate), and among equal priorities the oldest position. -1 when
/// every row is protected. Positions are distinct. Branch-free bodies (no short-circuit) so that the loops vectorise.
KVCACHE_NOINLINE inline std::int64_t select_one(const std::int32_t* pos, const float* pri, const float* factor,
                                                std::int64_t n, std::int32_t sinks, std::int32_t recent_from,
                                                bool negate) noexcept {
  if (negate)
    return factor != nullptr ? select_one_scan<true, true>(pos, pri, factor, n, sinks, recent_from)
                             : select_one_scan<false, true>(pos, pri, nullptr, n, sinks, recent_from);
  return factor != nullptr ? select_one_scan<true, false>(pos, pri, factor, n, sinks, recent_from)
                           : select_one_scan<false, false>(pos, pri, nullptr, n, sinks, recent_from);
}

/// The slot to evict when every row ranks alike: the oldest position in [sinks, recent_from); -1 when every row is
/// protected. Positions are distinct. Two 32-bit scans of the positions alone (the second finds them in cache): the
/// lowest biased position among the unprotected rows, then its slot.
KVCACHE_NOINLINE KVCACHE_VECTORIZE inline std::int64_t select_oldest(const std::int32_t* KVCACHE_RESTRICT pos,
                                                                     std::int64_t n, std::int32_t sinks,
                                                                     std::int32_t recent_from) noexcept {
  // Positions biased by 2^31 order as unsigned numbers; a protected row reads as all ones, so with every row protected
  // the minimum decodes to 2^31 - 1, which is >= recent_from (a clamped int32) and is caught below.
  std::uint32_t lowest = ~0u;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::uint32_t prot = std::uint32_t(pos[s] < sinks) | std::uint32_t(pos[s] >= recent_from);
    const std::uint32_t k = (std::uint32_t(pos[s]) ^ 0x80000000u) | (0u - prot);
    lowest = k < lowest ? k : lowest;
  }
  const auto oldest = static_cast<std::int32_t>(lowest ^ 0x80000000u);
  if (oldest < sinks || oldest >= recent_from) return -1;
  constexpr std::int32_t kNoSlot = 0x7fffffff;
  const auto n32 = static_cast<std::int32_t>(n);  // slots fit 32 bits (capacity is checked against it)
  std::int32_t slot = kNoSlot;
  for (std::int32_t s = 0; s < n32; ++s) {
    const std::uint32_t hit = 0u - std::uint32_t(pos[s] == oldest);
    const auto c = static_cast<std::int32_t>((std::uint32_t(s) & hit) | (std::uint32_t(kNoSlot) & ~hit));
    slot = c < slot ? c : slot;
  }
  return slot == kNoSlot ? -1 : slot;
}

/// The largest position (positions are never empty here).
KVCACHE_NOINLINE KVCACHE_VECTORIZE inline std::int32_t newest_position(const std::int32_t* pos,
                                                                       std::int64_t n) noexcept {
  std::int32_t m = pos[0];
  for (std::int64_t s = 1; s < n; ++s) m = pos[s] > m ? pos[s] : m;
  return m;
}
