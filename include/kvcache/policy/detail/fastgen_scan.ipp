// FastGen's per-step loops (policy/fastgen.hpp: budget_now and rank), compiled per ISA by simd/foreach_isa.inc so
// that they vectorise at that width whatever the engine's flags: they run for every head at every step over every
// row.
// Branch-free over 32-bit lanes: bit masks, not ?:, which GCC leaves scalar.

/// Over rows [0, n): in_window = rows with pos >= from; classed = rows outside the window whose tag is special or
/// punct (punct 0xff: no punctuation class).
KVCACHE_NOINLINE KVCACHE_VECTORIZE inline void fastgen_count(const std::uint8_t* KVCACHE_RESTRICT tags,
                                                             const std::int32_t* KVCACHE_RESTRICT pos, std::int32_t n,
                                                             std::int32_t from, std::uint8_t special,
                                                             std::uint8_t punct, std::int32_t* in_window,
                                                             std::int32_t* classed) noexcept {
  std::int32_t w = 0, c = 0;
  for (std::int32_t j = 0; j < n; ++j) {
    const std::int32_t recent = std::int32_t(pos[j] >= from);
    const std::int32_t keep = std::int32_t(tags[j] == special) | std::int32_t(tags[j] == punct);
    w += recent;
    c += keep & (recent ^ 1);
  }
  *in_window = w;
  *classed = c;
}

/// out[j] = +inf for rows tagged special or punct; otherwise scores[j] / (newest - pos[j] + 1) (the mean attention
/// of the row's column), or -inf when scores is null. A float quotient of two floats is the float rounding of their
/// double quotient, so this ranks as the double form does.
KVCACHE_NOINLINE KVCACHE_VECTORIZE inline void fastgen_rank(const std::uint8_t* KVCACHE_RESTRICT tags,
                                                            const std::int32_t* KVCACHE_RESTRICT pos,
                                                            const float* KVCACHE_RESTRICT scores, std::int64_t n,
                                                            std::int32_t newest, std::uint8_t special,
                                                            std::uint8_t punct, float* KVCACHE_RESTRICT out) noexcept {
  constexpr std::uint32_t kPlusInf = 0x7f800000u, kMinusInf = 0xff800000u;
  if (scores == nullptr) {
    for (std::int64_t j = 0; j < n; ++j) {
      const std::uint32_t keep = 0u - (std::uint32_t(tags[j] == special) | std::uint32_t(tags[j] == punct));
      out[j] = std::bit_cast<float>((kMinusInf & ~keep) | (kPlusInf & keep));
    }
    return;
  }
  for (std::int64_t j = 0; j < n; ++j) {
    const std::uint32_t keep = 0u - (std::uint32_t(tags[j] == special) | std::uint32_t(tags[j] == punct));
    const std::uint32_t mean = std::bit_cast<std::uint32_t>(scores[j] / float(newest - pos[j] + 1));
    out[j] = std::bit_cast<float>((mean & ~keep) | (kPlusInf & keep));
  }
}
