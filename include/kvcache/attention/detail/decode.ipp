// Decode attention for one KV head, written once against the op set `ops` of the enclosing ISA namespace.
// Compiled per ISA by attention/detail/kernels.hpp (simd/foreach_isa.inc) and by the AMX leaf; no include guard, no
// includes.
//
// The g query heads of a group are processed together, so each K and V row is read from memory once per KV head
//. Rows are visited in tiles of kDecodeTile: scores for the tile, one online-softmax rescale per
// tile and head, then P.V with the tile's V rows hot in L1. Accumulation is fp32 whatever the storage type. i8 rows
// are dequantized in registers: the products run on the integer values, and each row's scale is applied once per
// tile and head, to the scores (key scales) and to the probabilities before P.V (value scales).

inline constexpr int kDecodeTile = ::kvcache::detail::kDecodeTile;

#if !defined(KVCACHE_DECODE_TILES)
// Op sets without matrix tiles: every product comes from decode_scores and decode_pv below. (The amx leaf defines
// these hooks.)
template <class T>
KVCACHE_INLINE bool tiles_apply(int, int, int) noexcept {
  return false;
}
KVCACHE_INLINE void tiles_begin(const float*, int, int, int, int, float*) noexcept {}
KVCACHE_INLINE void tiles_end() noexcept {}
template <class T>
KVCACHE_INLINE void tile_scores(const float*, int, int, int, int, T const*, std::int64_t, std::int64_t, float*,
                                T const*, int, std::int64_t, float*) noexcept {}
template <class T>
KVCACHE_INLINE void tile_pv(const float*, int, int, int, int, T const*, std::int64_t, std::int64_t, float*, T const*,
                            std::int64_t, float*) noexcept {}
#endif

inline constexpr std::int64_t kPrefetchRows = 8;

// `lines` cache lines from p, prefetched evenly over `steps` row steps: line i goes out at the step where
// i * steps / lines is passed (a Bresenham walk: bursts of prefetches would queue behind each other).
struct SpreadPrefetch {
  const char* p;
  std::size_t lines, steps, acc = 0, next = 0;
  KVCACHE_INLINE void advance(std::size_t rows) noexcept {
    for (acc += rows * lines; acc >= steps; acc -= steps) ops::prefetch(p + 64 * next++);
  }
};

// The prefetches of the score pass for row r (see decode_scores): K row r + kPrefetchRows, if below r_end (callers pass
// an r_end past the first tile only: later tiles' K was prefetched a whole tile ahead), and V row r (none with dv = 0:
// decode_two_pass prefetches V in its second pass).
template <class T>
KVCACHE_INLINE void prefetch_row(T const* k, int dk, T const* v, int dv, std::int64_t r, std::int64_t r_end) noexcept {
  if (r + kPrefetchRows < r_end) {
    const char* kn = reinterpret_cast<const char*>(k + (r + kPrefetchRows) * dk);
    for (std::size_t b = 0; b < sizeof(T) * std::size_t(dk); b += 64) ops::prefetch(kn + b);
  }
  const char* vr = reinterpret_cast<const char*>(v + r * dv);
  for (std::size_t b = 0; b < sizeof(T) * std::size_t(dv); b += 64) ops::prefetch(vr + b);
}

// Rows the score pass takes at once for a block of hb heads that is not a multiple of 4 (those have their own
// two-row path), on AVX-512 (32 registers: R x hb accumulators, R keys and a query): enough rows that R x hb
// independent FMA chains cover the FMA latency (with one row, blocks of 3, 5, 6 and 7 heads wait on it). Blocks of 2
// heads stay at one row, and so do blocks of 1 head in runs of a whole tile: those groups are bound by DRAM, and
// scoring several rows at once would send the tile's V prefetches, issued row by row, out in a shorter burst. Runs
// shorter than a tile (paged heads with blocks of 16 or 32 rows) are different: the hardware prefetcher, which keeps
// a long run streaming, gives little on a few KiB, so the rows come in at the pace the score pass asks for them, and
// a single head's one FMA chain per row (8 dependent FMAs at d 128) is what sets that pace. There a head takes 4 rows
// at once (Zen 5, g 1, 16-row blocks, runs of those cases alone: 0.76 -> 0.83 - 0.91 of dense speed; runs of every
// paged case spread over 0.66 - 0.75 either way; whole-tile runs with 4 rows lost 0.1 of read bandwidth).
// AVX2 (16 registers) keeps one row.
constexpr int score_rows(int hb) noexcept {
  if constexpr (ops::kLanes >= 16) return hb == 1 ? 4 : hb == 3 ? 3 : hb >= 5 ? 2 : 1;
  return 1;
}

// s[h * kDecodeTile + i] = the sum of a[i][h]'s lanes, for R rows and HB heads: four sums per reduce_add_4, taking
// the (row, head) pairs in order and padding the last call with zeros.
template <int R, int HB>
KVCACHE_INLINE void store_sums(const ops::Vec (&a)[R][HB], float* KVCACHE_RESTRICT s) noexcept {
  constexpr int N = R * HB;
  alignas(16) float sum[4];
  KVCACHE_UNROLL
  for (int j = 0; j < N; j += 4) {
    ops::Vec x[4];
    KVCACHE_UNROLL
    for (int t = 0; t < 4; ++t) x[t] = j + t < N ? a[(j + t) / HB][(j + t) % HB] : ops::zero();
    ops::reduce_add_4(x[0], x[1], x[2], x[3], sum);
    KVCACHE_UNROLL
    for (int t = 0; t < 4; ++t)
      if (j + t < N) s[(j + t) % HB * kDecodeTile + (j + t) / HB] = sum[t];
  }
}

// Scores of HB query heads (rows of q, stride ldq, already scaled) against rows [r0, r1) of k:
// s[h * kDecodeTile + (r - r0)].
// Prefetching keeps memory busy in both phases of a tile (the hardware prefetcher alone does not: it stops at page
// boundaries and cannot see the next tile), each line one phase ahead of its use: while the scores of a tile are
// computed, the tile's own V rows are prefetched (v not null; and in a head's first tile, K rows kPrefetchRows ahead);
// while its P.V runs, all of the next tile's K (decode_pv's k_next). pf_lines cache lines from pf (decode_two_pass's
// next K tile, which has no P.V phase in between) are spread evenly over the rows here.
template <int HB, class T>
KVCACHE_INLINE void decode_scores(const float* KVCACHE_RESTRICT q, int ldq, int dk, T const* KVCACHE_RESTRICT k,
                                  std::int64_t r0, std::int64_t r1, float* KVCACHE_RESTRICT s, T const* v, int dv,
                                  std::int64_t r_end, const char* pf = nullptr, std::size_t pf_lines = 0) noexcept {
  constexpr int L = ops::kLanes;
  const int full = dk / L * L, tail = dk - full;
  SpreadPrefetch spread{pf, pf_lines, std::max<std::size_t>(std::size_t(r1 - r0), 1)};
  // Blocks of 8 heads on 16 lanes, 16-bit storage: a row pair's 16 sums come out of one reduction tree as one vector,
  // [row][head], staged here and transposed into s after the rows (one tree, one store and 1.5 permutes per pair
  // instead of four 4-way reductions and 16 scalar copies). Not for f32, whose twice-as-wide rows make the stream,
  // not these instructions, the bound.
  constexpr int R = score_rows(HB);
  constexpr bool kStaged = ops::kLanes >= 16 && HB == 8 && sizeof(T) == 2;
  [[maybe_unused]] alignas(64) float st[kStaged ? kDecodeTile * 8 : 1];
  for (std::int64_t r = r0; r < r1; ++r) {
    T const* kr = k + r * dk;
    if (v != nullptr) prefetch_row(k, dk, v, dv, r, r_end);
    spread.advance(1);
    if constexpr (ops::kLanes >= 16 && HB % 4 == 0) {
      // Two rows at once: each query load feeds two FMAs (16 accumulators of the 32 registers), so the loop issues
      // 10 loads per 16 FMAs instead of 9 per 8 and the FMA ports, not the load ports, set the pace.
      if (r + 1 < r1) {
        T const* kr1 = kr + dk;
        ops::Vec a0[HB], a1[HB];
        KVCACHE_UNROLL
        for (int h = 0; h < HB; ++h) a0[h] = a1[h] = ops::zero();
        for (int c = 0; c < full; c += L) {
          const ops::Vec k0 = ops::load(kr + c), k1 = ops::load(kr1 + c);
          KVCACHE_UNROLL
          for (int h = 0; h < HB; ++h) {
            const ops::Vec qv = ops::in_register(ops::load(q + h * ldq + c));
            a0[h] = ops::fma(qv, k0, a0[h]);
            a1[h] = ops::fma(qv, k1, a1[h]);
          }
        }
        if (tail != 0) {
          const ops::Vec k0 = ops::load_n(kr + full, tail), k1 = ops::load_n(kr1 + full, tail);
          KVCACHE_UNROLL
          for (int h = 0; h < HB; ++h) {
            const ops::Vec qv = ops::load_n(q + h * ldq + full, tail);
            a0[h] = ops::fma(qv, k0, a0[h]);
            a1[h] = ops::fma(qv, k1, a1[h]);
          }
        }
        if constexpr (kStaged) {
          ops::Vec both[16];
          KVCACHE_UNROLL
          for (int h = 0; h < 8; ++h) {
            both[h] = a0[h];
            both[8 + h] = a1[h];
          }
          ops::reduce_add_16(both, st + 8 * (r - r0));
        } else {
          alignas(16) float sum[4];
          KVCACHE_UNROLL
          for (int h = 0; h < HB; h += 4) {
            ops::reduce_add_4(a0[h], a0[h + 1], a0[h + 2], a0[h + 3], sum);
            KVCACHE_UNROLL
            for (int i = 0; i < 4; ++i) s[(h + i) * kDecodeTile + (r - r0)] = sum[i];
            ops::reduce_add_4(a1[h], a1[h + 1], a1[h + 2], a1[h + 3], sum);
            KVCACHE_UNROLL
            for (int i = 0; i < 4; ++i) s[(h + i) * kDecodeTile + (r + 1 - r0)] = sum[i];
          }
        }
        if (v != nullptr) prefetch_row(k, dk, v, dv, r + 1, r_end);  // the second row's (the first's came above)
        spread.advance(1);
        ++r;
        continue;
      }
    }
    if constexpr (HB % 4 != 0 && R > 1) {
      // R rows at once (score_rows): each query load feeds R FMAs and each key load HB. The multiples of 4 keep the
      // path above, whose sums come out four heads of a row at a time (and for 8 f16/bf16 heads through the tree);
      // run through this one instead (inlined, with the new blocks inlined too), group 8 over f32 took 1.15 - 1.2x as
      // long with the same inner loop, likely the code-size effect described at decode_scores_any.
      if (r + R <= r1 && (HB != 1 || r1 - r0 < kDecodeTile)) {
        ops::Vec a[R][HB];
        KVCACHE_UNROLL
        for (int i = 0; i < R; ++i) {
          KVCACHE_UNROLL
          for (int h = 0; h < HB; ++h) a[i][h] = ops::zero();
        }
        for (int c = 0; c < full; c += L) {
          ops::Vec kv[R];
          KVCACHE_UNROLL
          for (int i = 0; i < R; ++i) kv[i] = ops::load(kr + i * dk + c);
          KVCACHE_UNROLL
          for (int h = 0; h < HB; ++h) {
            const ops::Vec qv = ops::in_register(ops::load(q + h * ldq + c));
            KVCACHE_UNROLL
            for (int i = 0; i < R; ++i) a[i][h] = ops::fma(qv, kv[i], a[i][h]);
          }
        }
        if (tail != 0) {
          ops::Vec kv[R];
          KVCACHE_UNROLL
          for (int i = 0; i < R; ++i) kv[i] = ops::load_n(kr + i * dk + full, tail);
          KVCACHE_UNROLL
          for (int h = 0; h < HB; ++h) {
            const ops::Vec qv = ops::load_n(q + h * ldq + full, tail);
            KVCACHE_UNROLL
            for (int i = 0; i < R; ++i) a[i][h] = ops::fma(qv, kv[i], a[i][h]);
          }
        }
        store_sums<R, HB>(a, s + (r - r0));
        KVCACHE_UNROLL
        for (int i = 1; i < R; ++i) {  // the other rows' prefetches (the first's came above)
          if (v != nullptr) prefetch_row(k, dk, v, dv, r + i, r_end);
          spread.advance(1);
        }
        r += R - 1;
        continue;
      }
    }
    ops::Vec acc[HB];
    KVCACHE_UNROLL
    for (int h = 0; h < HB; ++h) acc[h] = ops::zero();
    for (int c = 0; c < full; c += L) {
      const ops::Vec kv = ops::load(kr + c);
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) acc[h] = ops::fma(ops::load(q + h * ldq + c), kv, acc[h]);
    }
    if (tail != 0) {
      const ops::Vec kv = ops::load_n(kr + full, tail);
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) acc[h] = ops::fma(ops::load_n(q + h * ldq + full, tail), kv, acc[h]);
    }
    if constexpr (HB % 4 == 0) {
      alignas(16) float sum[4];
      KVCACHE_UNROLL
      for (int h = 0; h < HB; h += 4) {
        ops::reduce_add_4(acc[h], acc[h + 1], acc[h + 2], acc[h + 3], sum);
        KVCACHE_UNROLL
        for (int i = 0; i < 4; ++i) s[(h + i) * kDecodeTile + (r - r0)] = sum[i];
      }
    } else {
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) s[h * kDecodeTile + (r - r0)] = ops::reduce_add(acc[h]);
    }
  }
  if constexpr (kStaged) {
    const int paired = static_cast<int>(r1 - r0) / 2 * 2;  // the rows the pair path took, from r0 on
    int i = 0;
    for (; i + 16 <= paired; i += 16) ops::transpose_16x8(st + 8 * i, s + i, kDecodeTile);
    for (; i < paired; ++i) {
      KVCACHE_UNROLL
      for (int h = 0; h < 8; ++h) s[h * kDecodeTile + i] = st[8 * i + h];
    }
  }
}

// o[h] += sum_r p[h][r] * v[r] for HB heads and rows [r0, r1). o: [HB, dv] with row stride dv; v rows of width dv
// at stride ldv (ldv > dv in the latent layout, where values are the head of each key row).
// Each head keeps NA = 8 / HB accumulators that take alternate rows, so about 8 independent FMA chains are in flight
// whatever the group size (one chain per head made small groups wait on FMA latency, at half the FMA throughput).
// k_next (if not null): rows of width dk (contiguous) to prefetch while this runs, exactly the lines of the first
// min(n_next, r1 - r0), spread evenly over all the call's row steps (a burst would queue behind itself). All of the
// tile, not part: what P.V leaves out waits on the score pass's prefetch a few rows ahead, too close to hide DRAM.
template <int HB, class T>
KVCACHE_INLINE void decode_pv(const float* KVCACHE_RESTRICT p, int dv, int ldv, T const* v, std::int64_t r0,
                              std::int64_t r1, float* KVCACHE_RESTRICT o, T const* k_next, std::int64_t n_next,
                              int dk) noexcept {
  constexpr int L = ops::kLanes;
  constexpr int NA = HB >= 8 ? 1 : 8 / HB;
  const int full = dv / L * L, tail = dv - full;
  // The row steps of the call: column sweeps x rows.
  const int pairs = ops::kLanes >= 16 && HB >= 4 ? full / (2 * L) : 0;
  const int sweeps = pairs + (dv - pairs * 2 * L + L - 1) / L;
  SpreadPrefetch spread{
      reinterpret_cast<const char*>(k_next),
      k_next != nullptr ? (sizeof(T) * std::size_t(dk) * std::size_t(std::min(n_next, r1 - r0)) + 63) / 64 : 0,
      std::max<std::size_t>(std::size_t(r1 - r0) * std::size_t(sweeps), 1)};
  int c = 0;
  if constexpr (ops::kLanes >= 16 && HB >= 4) {
    // Two column chunks at once: each broadcast probability feeds two FMAs (16 accumulators), 10 loads per 16 FMAs.
    for (; c + 2 * L <= full; c += 2 * L) {
      ops::Vec a0[HB], a1[HB];
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) {
        a0[h] = ops::load(o + h * dv + c);
        a1[h] = ops::load(o + h * dv + c + L);
      }
      for (std::int64_t r = r0; r < r1; ++r) {
        spread.advance(1);
        const ops::Vec v0 = ops::load(v + r * ldv + c), v1 = ops::load(v + r * ldv + c + L);
        KVCACHE_UNROLL
        for (int h = 0; h < HB; ++h) {
          const ops::Vec pv = ops::set1(p[h * kDecodeTile + (r - r0)]);
          a0[h] = ops::fma(pv, v0, a0[h]);
          a1[h] = ops::fma(pv, v1, a1[h]);
        }
      }
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) {
        ops::store(o + h * dv + c, a0[h]);
        ops::store(o + h * dv + c + L, a1[h]);
      }
    }
  }
  for (; c < dv; c += L) {
    const int w = c < full ? L : tail;  // lanes in this chunk
    ops::Vec acc[HB][NA];
    KVCACHE_UNROLL
    for (int h = 0; h < HB; ++h) {
      acc[h][0] = w == L ? ops::load(o + h * dv + c) : ops::load_n(o + h * dv + c, w);
      KVCACHE_UNROLL
      for (int a = 1; a < NA; ++a) acc[h][a] = ops::zero();
    }
    std::int64_t r = r0;
    for (; r + NA <= r1; r += NA) {
      spread.advance(NA);
      KVCACHE_UNROLL
      for (int a = 0; a < NA; ++a) {
        const ops::Vec vv = w == L ? ops::load(v + (r + a) * ldv + c) : ops::load_n(v + (r + a) * ldv + c, w);
        KVCACHE_UNROLL
        for (int h = 0; h < HB; ++h) acc[h][a] = ops::fma(ops::set1(p[h * kDecodeTile + (r + a - r0)]), vv, acc[h][a]);
      }
    }
    for (; r < r1; ++r) {
      spread.advance(1);
      const ops::Vec vv = w == L ? ops::load(v + r * ldv + c) : ops::load_n(v + r * ldv + c, w);
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) acc[h][0] = ops::fma(ops::set1(p[h * kDecodeTile + (r - r0)]), vv, acc[h][0]);
    }
    KVCACHE_UNROLL
    for (int h = 0; h < HB; ++h) {
      KVCACHE_UNROLL
      for (int a = 1; a < NA; ++a) acc[h][0] = ops::add(acc[h][0], acc[h][a]);
      if (w == L)
        ops::store(o + h * dv + c, acc[h][0]);
      else
        ops::store_n(o + h * dv + c, acc[h][0], w);
    }
  }
}

// The kernels of a block of hb heads, 1 <= hb <= 8, each compiled for its block size. Blocks of 3, 5, 6 and 7 are
// called, not inlined: inlined as well, they would make decode_partial much larger, and the hot loops of the common
// groups (1, 4, 8) are sensitive to code layout (docs/kernels.md).
template <int HB, class T>
KVCACHE_NOINLINE void decode_scores_apart(const float* q, int ldq, int dk, T const* k, std::int64_t r0, std::int64_t r1,
                                          float* s, T const* v, int dv, std::int64_t r_end, const char* pf,
                                          std::size_t pf_lines) noexcept {
  decode_scores<HB>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
}
template <int HB, class T>
KVCACHE_NOINLINE void decode_pv_apart(const float* p, int dv, int ldv, T const* v, std::int64_t r0, std::int64_t r1,
                                      float* o, T const* k_next, std::int64_t n_next, int dk) noexcept {
  decode_pv<HB>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
}
template <class T>
KVCACHE_INLINE void decode_scores_any(int hb, const float* q, int ldq, int dk, T const* k, std::int64_t r0,
                                      std::int64_t r1, float* s, T const* v, int dv, std::int64_t r_end,
                                      const char* pf = nullptr, std::size_t pf_lines = 0) noexcept {
  switch (hb) {
    case 1:
      return decode_scores<1>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    case 2:
      return decode_scores<2>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    case 3:
      return decode_scores_apart<3>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    case 4:
      return decode_scores<4>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    case 5:
      return decode_scores_apart<5>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    case 6:
      return decode_scores_apart<6>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    case 7:
      return decode_scores_apart<7>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
    default:
      return decode_scores<8>(q, ldq, dk, k, r0, r1, s, v, dv, r_end, pf, pf_lines);
  }
}
template <class T>
KVCACHE_INLINE void decode_pv_any(int hb, const float* p, int dv, int ldv, T const* v, std::int64_t r0, std::int64_t r1,
                                  float* o, T const* k_next, std::int64_t n_next, int dk) noexcept {
  switch (hb) {
    case 1:
      return decode_pv<1>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    case 2:
      return decode_pv<2>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    case 3:
      return decode_pv_apart<3>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    case 4:
      return decode_pv<4>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    case 5:
      return decode_pv_apart<5>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    case 6:
      return decode_pv_apart<6>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    case 7:
      return decode_pv_apart<7>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
    default:
      return decode_pv<8>(p, dv, ldv, v, r0, r1, o, k_next, n_next, dk);
  }
}

// Blocks of 8 heads while at least 8 are left, then the rest (1 - 7) as one block (8 first keeps the amx path's tile
// blocks whole).
KVCACHE_INLINE int head_block(int left) noexcept { return left >= 8 ? 8 : left; }

// o[0, n) *= alpha.
KVCACHE_INLINE void scale_row(float* o, int n, float alpha) noexcept {
  constexpr int L = ops::kLanes;
  const ops::Vec av = ops::set1(alpha);
  int c = 0;
  for (; c + L <= n; c += L) ops::store(o + c, ops::mul(ops::load(o + c), av));
  for (; c < n; ++c) o[c] *= alpha;
}

// One head's online-softmax step over the nt scores of a tile, sh: the running maximum m and sum l move on (when the
// maximum rises, l and, if not null, the output row o [dv] are rescaled), and the tile's exponentials e^(s - m) are
// written to e (which may be sh) and, if not null, to dst as well.
KVCACHE_INLINE void softmax_tile(const float* sh, int nt, float& m, float& l, float* o, int dv, float* e,
                                 float* dst) noexcept {
  constexpr int L = ops::kLanes;
  ops::Vec mv = ops::set1(m);
  int r = 0;
  for (; r + L <= nt; r += L) mv = ops::max(mv, ops::load(sh + r));
  float mt = ops::reduce_max(mv);
  for (; r < nt; ++r) mt = sh[r] > mt ? sh[r] : mt;
  if (mt > m) {
    const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(m - mt);
    l *= alpha;
    if (o != nullptr) scale_row(o, dv, alpha);
    m = mt;
  }
  const ops::Vec mh = ops::set1(m);
  ops::Vec lv = ops::zero();
  r = 0;
  for (; r + L <= nt; r += L) {
    const ops::Vec p = ops::exp(ops::sub(ops::load(sh + r), mh));
    ops::store(e + r, p);
    if (dst != nullptr) ops::store(dst + r, p);
    lv = ops::add(lv, p);
  }
  float lt = 0.0f;
  if (r < nt) {
    const ops::Vec p = ops::exp(ops::sub(ops::load_n(sh + r, nt - r), mh));
    ops::store_n(e + r, p, nt - r);
    if (dst != nullptr) ops::store_n(dst + r, p, nt - r);
    for (; r < nt; ++r) lt += e[r];
  }
  l += ops::reduce_add(lv) + lt;
}

// s[h * kDecodeTile + i] *= sc[i] for g heads and the nt rows of a tile: the i8 rows' scales applied to the scores of
// their integer values (key scales), or to the probabilities before P.V (value scales).
KVCACHE_INLINE void scale_tile(float* s, int g, int nt, const float* sc) noexcept {
  constexpr int L = ops::kLanes;
  for (int h = 0; h < g; ++h) {
    float* sh = s + h * kDecodeTile;
    int i = 0;
    for (; i + L <= nt; i += L) ops::store(sh + i, ops::mul(ops::load(sh + i), ops::load(sc + i)));
    if (i < nt) ops::store_n(sh + i, ops::mul(ops::load_n(sh + i, nt - i), ops::load_n(sc + i, nt - i)), nt - i);
  }
}

// Turns tile_max[h][t] (the running maximum after tile t) into the scale of tile t's exponentials,
// e^(tile_max - m_h) / l_h, for tiles [t, t + n) of every head.
KVCACHE_INLINE void probability_scales(int g, float* tile_max, std::int64_t ldt, std::int64_t t, std::int64_t n,
                                       const float* m, const float* l) noexcept {
  constexpr int L = ops::kLanes;
  for (int h = 0; h < g; ++h) {
    float* tm = tile_max + h * ldt;
    const ops::Vec mh = ops::set1(m[h]), inv = ops::set1(l[h] > 0.0f ? 1.0f / l[h] : 0.0f);
    std::int64_t i = t;
    for (; i + L <= t + n; i += L) ops::store(tm + i, ops::mul(ops::exp(ops::sub(ops::load(tm + i), mh)), inv));
    if (i < t + n) {
      const int r = static_cast<int>(t + n - i);
      ops::store_n(tm + i, ops::mul(ops::exp(ops::sub(ops::load_n(tm + i, r), mh)), inv), r);
    }
  }
}

// The export of rows [t0, t1) of one tile: acc[j] += sum_h probs[h][j] * sc[h * ldt] (sc: the tile's scales), or
// with acc_ld > 0 each head's into its own row, acc[h * acc_ld + j], and acc_max[j] = their maximum if not null.
KVCACHE_INLINE void accumulate_tile(const float* probs, int g, std::int64_t ld, std::int64_t t0, std::int64_t t1,
                                    const float* sc, std::int64_t ldt, float* acc, std::int64_t acc_ld,
                                    float* acc_max) noexcept {
  constexpr int L = ops::kLanes;
  std::int64_t j = t0;
  if (acc_ld > 0) {
    // Slot-major so that each slot's maximum comes from the sums just written (no second pass over the g rows).
    for (; j + L <= t1; j += L) {
      ops::Vec mx = ops::fma(ops::load(probs + j), ops::set1(sc[0]), ops::load(acc + j));
      ops::store(acc + j, mx);
      for (int h = 1; h < g; ++h) {
        const ops::Vec a =
            ops::fma(ops::load(probs + h * ld + j), ops::set1(sc[h * ldt]), ops::load(acc + h * acc_ld + j));
        ops::store(acc + h * acc_ld + j, a);
        mx = ops::max(mx, a);
      }
      if (acc_max != nullptr) ops::store(acc_max + j, mx);
    }
    for (; j < t1; ++j) {
      float mx = acc[j] += probs[j] * sc[0];
      for (int h = 1; h < g; ++h) {
        const float a = acc[h * acc_ld + j] += probs[h * ld + j] * sc[h * ldt];
        mx = a > mx ? a : mx;
      }
      if (acc_max != nullptr) acc_max[j] = mx;
    }
    return;
  }
  for (; j + L <= t1; j += L) {
    ops::Vec sum = ops::load(acc + j);
    for (int h = 0; h < g; ++h) sum = ops::fma(ops::load(probs + h * ld + j), ops::set1(sc[h * ldt]), sum);
    ops::store(acc + j, sum);
  }
  for (; j < t1; ++j)
    for (int h = 0; h < g; ++h) acc[j] += probs[h * ld + j] * sc[h * ldt];
}

/// acc[j] += sum_h probs[h][j] * e^(tile_max[h][j / kDecodeTile] - m[h]) / l[h] for j in [0, n): the group's
/// probabilities, summed, added into a per-slot accumulator; with acc_ld > 0 each head's are added into its own row
/// instead, acc[h * acc_ld + j] (GqaReduce::kMax keeps them apart), and if acc_max is not null, acc_max[j] is set to
/// max_h acc[h * acc_ld + j] after the addition. probs: [g, ld] and tile_max: [g, ldt] from decode_partial (tile_max
/// is overwritten with the scales); m, l: [g], the head's final softmax statistics.
KVCACHE_NOINLINE inline void accumulate_probabilities(const float* probs, int g, std::int64_t ld, std::int64_t n,
                                                      float* tile_max, std::int64_t ldt, const float* m, const float* l,
                                                      float* acc, std::int64_t acc_ld, float* acc_max) noexcept {
  const std::int64_t tiles = (n + kDecodeTile - 1) / kDecodeTile;
  probability_scales(g, tile_max, ldt, 0, tiles, m, l);
  for (std::int64_t t0 = 0; t0 < n; t0 += kDecodeTile) {
    const std::int64_t t1 = t0 + kDecodeTile < n ? t0 + kDecodeTile : n;
    accumulate_tile(probs, g, ld, t0, t1, tile_max + t0 / kDecodeTile, ldt, acc, acc_ld, acc_max);
  }
}

inline constexpr int kTwoPassGroup = 16;  ///< the largest group decode_two_pass takes (its stack arrays)

// decode_partial with the export added into the caller's accumulator in the same call (one split), in two passes: the
// scores and softmax statistics of every tile over K, storing the exponentials in probs (as decode_partial does), then,
// with the head's final maximum and sum known, P.V over V tile by tile together with the export of the tile's
// probabilities. The exponentials are read back while V streams in, not in a separate pass after the head (by then the
// head's K and V had pushed them out of L2). o, m, l, probs and the accumulator come out bit for bit as decode_partial
// followed by accumulate_probabilities: P.V replays the one-pass kernel's rescaling (the running maximum of each tile
// is in tile_max) on the same exponentials.
template <class T>
KVCACHE_NOINLINE void decode_two_pass(const float* q, int ldq, int g, int dk, int dv, int ldv, const TypedRows<T>& rows,
                                      std::int64_t r0, std::int64_t r1, float* o, float* m, float* l, float* probs,
                                      std::int64_t ld, float* tile_max, std::int64_t ldt, float* s, float* acc,
                                      std::int64_t acc_ld, float* acc_max) noexcept {
  constexpr int L = ops::kLanes;
  // Pass 1: scores, running maximum and sum; the exponentials go to probs, the running maximum to tile_max.
  for (std::int64_t t0 = r0; t0 < r1; t0 += kDecodeTile) {
    const std::int64_t t1 = t0 + kDecodeTile < r1 ? t0 + kDecodeTile : r1;
    const int nt = static_cast<int>(t1 - t0);
    for (int h0 = 0; h0 < g;) {
      const int hb = head_block(g - h0);
      for (std::int64_t a = t0, n; a < t1; a += n) {
        n = rows.run(a, t1);
        // K rows kPrefetchRows ahead in the first tile; the next tile's K (the run a tile further on) spread over this
        // run's rows.
        T const* k = rows.k(a);
        const std::int64_t an = a + kDecodeTile, n_next = h0 == 0 && an < r1 ? std::min(n, r1 - an) : 0;
        decode_scores_any(hb, q + h0 * ldq, ldq, dk, k, 0, n, s + h0 * kDecodeTile + (a - t0), h0 == 0 ? k : nullptr, 0,
                          t0 == r0 ? rows.run(a, r1) : 0,
                          n_next > 0 ? reinterpret_cast<const char*>(rows.k(an)) : nullptr,
                          (sizeof(T) * std::size_t(dk) * std::size_t(n_next) + 63) / 64);
      }
      h0 += hb;
    }
    if (rows.scaled)
      for (std::int64_t a = t0, n; a < t1; a += n) scale_tile(s + (a - t0), g, int(n = rows.run(a, t1)), rows.ks(a));
    for (int h = 0; h < g; ++h) {
      softmax_tile(s + h * kDecodeTile, nt, m[h], l[h], nullptr, dv, probs + h * ld + t0, nullptr);
      tile_max[h * ldt + t0 / kDecodeTile] = m[h];
    }
  }
  // Pass 2: per tile, the rescaling of o the one-pass kernel made there, the export, then P.V.
  float raw_max[kTwoPassGroup][L], prev[kTwoPassGroup];
  for (int h = 0; h < g; ++h) prev[h] = -std::numeric_limits<float>::infinity();
  const std::int64_t first = r0 / kDecodeTile;
  for (std::int64_t t0 = r0; t0 < r1; t0 += kDecodeTile) {
    const std::int64_t t1 = t0 + kDecodeTile < r1 ? t0 + kDecodeTile : r1, tile = t0 / kDecodeTile;
    const int nt = static_cast<int>(t1 - t0);
    if ((tile - first) % L == 0) {
      // The next L tiles' scales, computed as accumulate_probabilities computes them (lane by lane the same).
      const std::int64_t n = std::min<std::int64_t>(L, (r1 - t0 + kDecodeTile - 1) / kDecodeTile);
      for (int h = 0; h < g; ++h) {
        // keep the raw running maxima of these tiles for the rescaling below
        for (std::int64_t i = 0; i < n; ++i) raw_max[h][i] = tile_max[h * ldt + tile + i];
      }
      probability_scales(g, tile_max, ldt, tile, n, m, l);
    }
    for (int h = 0; h < g; ++h) {
      const float mt = raw_max[h][(tile - first) % L];
      if (mt > prev[h]) {
        if (prev[h] != -std::numeric_limits<float>::infinity()) scale_row(o + h * dv, dv, std::exp(prev[h] - mt));
        prev[h] = mt;
      }
      std::copy_n(probs + h * ld + t0, nt, s + h * kDecodeTile);
    }
    if (rows.scaled)
      for (std::int64_t a = t0, n; a < t1; a += n) scale_tile(s + (a - t0), g, int(n = rows.run(a, t1)), rows.vs(a));
    accumulate_tile(probs, g, ld, t0, t1, tile_max + tile, ldt, acc, acc_ld, acc_max);
    for (int h0 = 0; h0 < g;) {
      const int hb = head_block(g - h0);
      for (std::int64_t a = t0, n; a < t1; a += n) {
        n = rows.run(a, t1);
        const std::int64_t an = a + kDecodeTile;
        decode_pv_any(hb, s + h0 * kDecodeTile + (a - t0), dv, ldv, rows.v(a), 0, n, o + h0 * dv,
                      h0 == 0 && an < r1 ? rows.v(an) : nullptr, r1 - an, ldv);
      }
      h0 += hb;
    }
  }
}

/// Unnormalised attention of g query heads over rows [r0, r1) of one KV head (a split of the KV length).
/// q: [g, dk] f32, already multiplied by the softmax scale, row stride ldq (64-byte aligned rows are fastest);
/// rows: the head's rows (core/head_rows.hpp): keys of width dk, values of width dv at stride ldv elements, for i8
/// their scales; each tile is visited run by run (rows inside one block), so blocks of any size the layout allows
/// work; s: scratch of decode_scratch_floats(g, dk, dv) floats, 64-byte aligned.
/// Any g: each tile of K and V rows is read from memory once for all g heads (MLA runs 128 heads on one latent).
/// Out: o: [g, dv] = sum_j e^(s_hj - m_h) v_j, m: [g] = max_j s_hj (-inf if empty), l: [g] = sum_j e^(s_hj - m_h),
/// with s_hj = q_h . k_j.
/// For probability export (probs not null; r0 must be a multiple of kDecodeTile): probs: [g, ld] receives
/// e^(s_hj - mt_h) at column j, where mt_h is the running maximum after j's tile, and tile_max: [g, ldt] receives
/// mt_h at column j / kDecodeTile. The final probability is then probs * e^(mt - m_final) / l_final: one multiply per
/// row and head, reusing the exponentials the softmax computed anyway. acc (if not null; the whole head, r0 == 0):
/// those probabilities are also added into the accumulator, as accumulate_probabilities(probs, g, ld, r1, tile_max,
/// ldt, m, l, acc, acc_ld, acc_max) would after the call (groups of 4 to kTwoPassGroup: by decode_two_pass, with
/// the same result).
template <class T>
KVCACHE_NOINLINE void decode_partial(const float* q, int ldq, int g, int dk, int dv, int ldv, const TypedRows<T>& rows,
                                     std::int64_t r0, std::int64_t r1, float* o, float* m, float* l, float* probs,
                                     std::int64_t ld, float* tile_max, std::int64_t ldt, float* s, float* acc,
                                     std::int64_t acc_ld, float* acc_max) noexcept {
  for (int h = 0; h < g; ++h) {
    m[h] = -std::numeric_limits<float>::infinity();
    l[h] = 0.0f;
  }
  for (int i = 0; i < g * dv; ++i) o[i] = 0.0f;
  // With matrix tiles (amx), the full 8-head blocks get their scores and P.V from tile products; the operands live
  // in s after the scores of a tile. Below one tile of rows, laying the queries out costs more than the tiles save.
  const bool tiles = r1 - r0 >= kDecodeTile && tiles_apply<T>(g, dk, dv);
  if (acc != nullptr && !tiles && g >= 4 && g <= kTwoPassGroup) {
    decode_two_pass(q, ldq, g, dk, dv, ldv, rows, r0, r1, o, m, l, probs, ld, tile_max, ldt, s, acc, acc_ld, acc_max);
    return;
  }
  float* const ts = s + ::kvcache::detail::pad_to(static_cast<std::size_t>(g) * kDecodeTile, 16);
  if (tiles) tiles_begin(q, ldq, g, dk, dv, ts);

  for (std::int64_t t0 = r0; t0 < r1; t0 += kDecodeTile) {
    const std::int64_t t1 = t0 + kDecodeTile < r1 ? t0 + kDecodeTile : r1;
    const int nt = static_cast<int>(t1 - t0);
    // Tile products need the tile in one run (blocks of at least a tile); other tiles take the vector path.
    const bool tile_run = tiles && rows.contiguous(t0) >= nt;
    for (int h0 = 0; h0 < g;) {
      const int hb = head_block(g - h0);
      for (std::int64_t a = t0, n; a < t1; a += n) {
        n = rows.run(a, t1);
        T const* k = rows.k(a);
        T const* vp = h0 == 0 && ldv == dv ? rows.v(a) : nullptr;
        if (tile_run && hb == 8)
          tile_scores(q + h0 * ldq, ldq, h0 / 8, g, dk, k, 0, n, s + h0 * kDecodeTile, vp, dv, rows.run(a, r1), ts);
        else
          decode_scores_any(hb, q + h0 * ldq, ldq, dk, k, 0, n, s + h0 * kDecodeTile + (a - t0), vp, dv,
                            t0 == r0 ? rows.run(a, r1) : 0);
      }
      h0 += hb;
    }
    if (rows.scaled)
      for (std::int64_t a = t0, n; a < t1; a += n) scale_tile(s + (a - t0), g, int(n = rows.run(a, t1)), rows.ks(a));
    for (int h = 0; h < g; ++h) {
      // The exponentials replace the scores in s; the export stores them a second time.
      float* sh = s + h * kDecodeTile;
      softmax_tile(sh, nt, m[h], l[h], o + h * dv, dv, sh, probs != nullptr ? probs + h * ld + t0 : nullptr);
      if (probs != nullptr) tile_max[h * ldt + t0 / kDecodeTile] = m[h];
    }
    if (rows.scaled)
      for (std::int64_t a = t0, n; a < t1; a += n) scale_tile(s + (a - t0), g, int(n = rows.run(a, t1)), rows.vs(a));
    int h0 = 0;
    if (tile_run) {
      h0 = g / 8 * 8;
      tile_pv(s, h0, dk, dv, ldv, rows.v(t0), 0, nt, o, t1 < r1 ? rows.k(t1) : nullptr, t1 < r1 ? r1 - t1 : 0, ts);
    }
    for (; h0 < g;) {
      const int hb = head_block(g - h0);
      for (std::int64_t a = t0, n; a < t1; a += n) {
        n = rows.run(a, t1);
        const std::int64_t an = a + kDecodeTile;
        decode_pv_any(hb, s + h0 * kDecodeTile + (a - t0), dv, ldv, rows.v(a), 0, n, o + h0 * dv,
                      h0 == 0 && an < r1 ? rows.k(an) : nullptr, r1 - an, dk);
      }
      h0 += hb;
    }
  }
  if (tiles) tiles_end();
  if (acc != nullptr && r1 > r0) accumulate_probabilities(probs, g, ld, r1, tile_max, ldt, m, l, acc, acc_ld, acc_max);
}

#ifdef KVCACHE_KERNEL_INSTANCE  // compiled kernels (core/macros.hpp)
#define KVCACHE_DECODE_INSTANCE_(T)                                                                                   \
  KVCACHE_KERNEL_INSTANCE void decode_partial<T>(                                                                     \
      const float*, int, int, int, int, int, const TypedRows<T>&, std::int64_t, std::int64_t, float*, float*, float*, \
      float*, std::int64_t, float*, std::int64_t, float*, float*, std::int64_t, float*) noexcept;
KVCACHE_DECODE_INSTANCE_(float)
KVCACHE_DECODE_INSTANCE_(f16)
KVCACHE_DECODE_INSTANCE_(bf16)
KVCACHE_DECODE_INSTANCE_(i8)
#undef KVCACHE_DECODE_INSTANCE_
#endif
