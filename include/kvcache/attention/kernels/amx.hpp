#pragma once

// Attention kernels for Isa::kAmx: the avx512 kernels, except that decode runs both products of each block of 8
// query heads on the AMX tile unit (TDPBF16PS: a 16 x 32 by 32 x 16 bf16 product accumulated in f32 per
// instruction) when keys and values are bf16 and a KV head has 16 or more query heads (detail::decode_tiles_fit):
//  * scores: 16 key rows at a time, loaded from the cache as they are, against the queries laid out once per call;
//  * P.V: 32 rows at a time, the tile's V rows laid out once per tile in row pairs, against the probabilities.
// The vector ports keep the online softmax, the layouts and the rows past the last whole 16- or 32-row block. It
// matters where decode is compute-bound: MLA (128 heads on one latent row of 576) and large groups.
// Prefill over bf16 caches runs both products on tiles for every shape (prefill_block_tiles, below).
//
// Precision. A tile product multiplies bf16 pairs exactly and accumulates in f32. bf16 keys and values enter as they
// are; the f32 query and the f32 probabilities enter as three bf16 parts, hi = bf16(x), mid = bf16(x - hi),
// lo = bf16(x - hi - mid), which hold all 24 of x's significant bits. So a score or an output is the exact sum of the
// same products as the FMA kernels', only added in another order. (Tile products read bf16 subnormals, below
// 1.2e-38, as zero.)
//
// f16 caches stay on the FMA path: this CPU family has no f16 tile product, and splitting each f16 key into two bf16
// parts costs more vector work per row (about 12 ns at d = 128) than the tile product saves.

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "kvcache/attention/detail/kernel_deps.hpp"
#include "kvcache/attention/detail/kernels.hpp"
#include "kvcache/simd/avx512.hpp"
#include "kvcache/simd/target.hpp"

#if KVCACHE_HAVE_AMX
KVCACHE_TARGET_AMX_BEGIN
namespace kvcache::kernels::amx {
namespace ops = ::kvcache::simd::avx512;

// The tile registers decode uses (palette 1). Scores: A, key rows (16 x 32 bf16; the "half" ones 16 x 16, for
// dk % 32 == 16); B, query pairs, 16 pair-rows x 16 columns: B1 holds the 8 heads' hi parts then their mid parts, B2
// their lo parts then zeros, so that C = A B1 + A B2 has hi + lo in column n and mid in column 8 + n; C, 16 rows x 16
// f32. P.V reuses A (as A1), B2 (as A2), B and C, all 16 x 64 bytes.
// (Macros, not constants: GCC's tile intrinsics paste the register number into the assembly text.)
#define KVCACHE_TILE_A 0
#define KVCACHE_TILE_B 1
#define KVCACHE_TILE_C 2
#define KVCACHE_TILE_A_HALF 3
#define KVCACHE_TILE_B_HALF 4
#define KVCACHE_TILE_B2 5
#define KVCACHE_TILE_B2_HALF 6

struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

KVCACHE_INLINE void load_tile_config() noexcept {
  TileConfig c;
  const auto set = [&c](int t, int rows, int colsb) {
    c.rows[t] = static_cast<std::uint8_t>(rows);
    c.colsb[t] = static_cast<std::uint16_t>(colsb);
  };
  set(KVCACHE_TILE_A, 16, 64);
  set(KVCACHE_TILE_B, 16, 64);
  set(KVCACHE_TILE_B2, 16, 64);
  set(KVCACHE_TILE_C, 16, 64);
  set(KVCACHE_TILE_A_HALF, 16, 32);
  set(KVCACHE_TILE_B_HALF, 8, 64);
  set(KVCACHE_TILE_B2_HALF, 8, 64);
  _tile_loadconfig(&c);
}

template <class T>
KVCACHE_INLINE bool tiles_apply(int g, int dk, int dv) noexcept {
  return std::is_same_v<T, bf16> && ::kvcache::detail::decode_tiles_fit(g, dk, dv);
}

// Tile operands in the scratch ts (decode_scratch_floats): for each full 8-head block and each chunk of 32 key
// columns (the last may have 16), the two query tiles B1, B2 (1 KiB each); C, [16][16] f32; the value tiles of the
// current tile of rows, [2 chunks of 32 rows][dv / 16 column blocks][1 KiB]; the probability tiles, [8-head block][2
// chunks][A1, A2][1 KiB].
KVCACHE_INLINE int tile_chunks(int dk) noexcept { return (dk + 31) / 32; }
KVCACHE_INLINE std::uint16_t* tile_queries(float* ts, int block, int dk) noexcept {
  return reinterpret_cast<std::uint16_t*>(ts) + std::size_t(block) * std::size_t(tile_chunks(dk)) * 1024;
}
KVCACHE_INLINE float* tile_product(float* ts, int g, int dk) noexcept {
  return reinterpret_cast<float*>(tile_queries(ts, g / 8, dk));
}
KVCACHE_INLINE std::uint16_t* tile_values(float* ts, int g, int dk) noexcept {
  return reinterpret_cast<std::uint16_t*>(tile_product(ts, g, dk) + 256);
}
KVCACHE_INLINE std::uint16_t* tile_probabilities(float* ts, int g, int dk, int dv, int block) noexcept {
  return tile_values(ts, g, dk) + 2 * std::size_t(dv / 16) * 512 + std::size_t(block) * 2048;
}

KVCACHE_INLINE __m512 widen_bf16(__m256bh b) noexcept {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)b), 16));
}

// The three bf16 parts of 16 floats: x = hi + mid + lo to all of x's 24 bits.
KVCACHE_INLINE void split3(__m512 x, __m256bh& hi, __m256bh& mid, __m256bh& lo) noexcept {
  hi = _mm512_cvtneps_pbh(x);
  const __m512 r = _mm512_sub_ps(x, widen_bf16(hi));
  mid = _mm512_cvtneps_pbh(r);
  lo = _mm512_cvtneps_pbh(_mm512_sub_ps(r, widen_bf16(mid)));
}

KVCACHE_INLINE __m512 join_bf16(__m256bh a, __m256bh b) noexcept {
  return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512((__m256i)a), (__m256i)b, 1));
}

// Lays out the queries of every full 8-head block as B tiles and loads the tile configuration. In chunk c, pair-row
// p of B1 holds, in column n < 8, elements 32c + 2p and 32c + 2p + 1 of head 8b + n's hi part, and in column 8 + n
// the same of its mid part; B2 the lo parts, then zeros. Each is the 16 x 16 transpose (of bf16 pairs) of the 16
// vectors [hi of heads 0 - 7; mid of heads 0 - 7]. Once per call: the scores then cost no query work per row.
KVCACHE_INLINE void tiles_begin(const float* q, int ldq, int g, int dk, int dv, float* ts) noexcept {
  for (int b = 0; b + 8 <= g; b += 8) {
    // A2 of the probability tiles holds the lo parts in rows 0 - 7 and zeros below, for the whole call.
    std::uint16_t* pt = tile_probabilities(ts, g, dk, dv, b / 8);
    for (int c = 0; c < 2; ++c) std::memset(pt + c * 1024 + 512 + 8 * 32, 0, 8 * 64);
    std::uint16_t* bq = tile_queries(ts, b / 8, dk);
    for (int c = 0; c < dk; c += 32) {
      const bool half = c + 32 > dk;  // dk % 32 == 16: the last chunk has 16 columns, 8 pair-rows
      __m512 b1[16], b2[16];
      for (int h = 0; h < 8; ++h) {
        const float* qh = q + (b + h) * ldq + c;
        __m256bh hi0, mid0, lo0, hi1, mid1, lo1;
        split3(_mm512_loadu_ps(qh), hi0, mid0, lo0);
        split3(half ? _mm512_setzero_ps() : _mm512_loadu_ps(qh + 16), hi1, mid1, lo1);
        b1[h] = join_bf16(hi0, hi1);
        b1[8 + h] = join_bf16(mid0, mid1);
        b2[h] = join_bf16(lo0, lo1);
        b2[8 + h] = _mm512_setzero_ps();
      }
      ops::transpose(b1);
      ops::transpose(b2);
      std::uint16_t* t = bq + (c / 32) * 1024;
      for (int p = 0; p < (half ? 8 : 16); ++p) {
        _mm512_store_ps(reinterpret_cast<float*>(t + p * 32), b1[p]);
        _mm512_store_ps(reinterpret_cast<float*>(t + 512 + p * 32), b2[p]);
      }
    }
  }
  load_tile_config();
}
KVCACHE_INLINE void tiles_end() noexcept { _tile_release(); }

// c: [16 rows][16 columns] f32, columns n and 8 + n two parts of head n's scores. Writes the 16 scores of head h to
// s + h * ld: a 16 x 16 transpose with the addition of the two parts folded into its last stage.
KVCACHE_INLINE void transpose_scores(const float* c, float* s, int ld) noexcept {
  __m512 r[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(c + 16 * i);
  ops::transpose_in_lanes(r, u);
  for (int m = 0; m < 4; ++m) {
    // Lanes 0 + 2 and 1 + 3 of u: columns m + (8 + m) and (4 + m) + (12 + m), i.e. heads m and 4 + m, both parts.
    const __m512 a01 =
        _mm512_add_ps(_mm512_shuffle_f32x4(u[m], u[4 + m], 0x44), _mm512_shuffle_f32x4(u[m], u[4 + m], 0xee));
    const __m512 a23 =
        _mm512_add_ps(_mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x44), _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xee));
    _mm512_storeu_ps(s + m * ld, _mm512_shuffle_f32x4(a01, a23, 0x88));
    _mm512_storeu_ps(s + (4 + m) * ld, _mm512_shuffle_f32x4(a01, a23, 0xdd));
  }
}

// Interleaving two rows a and b of 32 bf16 into pair rows (vpermt2w indices; 32 + i is b's element i): kPairLo gives
// a0 b0 a1 b1 .. a15 b15, kPairHi a16 b16 .. a31 b31. Value tiles (decode's and prefill's) are laid out this way.
alignas(64) inline constexpr std::uint16_t kPairLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                          8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
alignas(64) inline constexpr std::uint16_t kPairHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21,
                                                          53, 22, 54, 23, 55, 24, 56, 25, 57, 26, 58,
                                                          27, 59, 28, 60, 29, 61, 30, 62, 31, 63};

// decode_scores<8> with tiles: rows [r0, r1) of bf16 keys against query block `block` (heads 8 * block ..), whole
// 16-row blocks by tile products, the rest (fewer than 16 rows) by the FMA path. Same prefetching as decode_scores.
template <class T>
KVCACHE_INLINE void tile_scores(const float* q, int ldq, int block, int g, int dk, T const* k, std::int64_t r0,
                                std::int64_t r1, float* s, T const* v, int dv, std::int64_t r_end, float* ts) noexcept;

template <class T>
KVCACHE_INLINE void tile_pv(const float* s, int gb, int dk, int dv, int ldv, T const* v, std::int64_t t0,
                            std::int64_t t1, float* o, T const* k_next, std::int64_t n_next, float* ts) noexcept;

#define KVCACHE_DECODE_TILES 1
#include "kvcache/attention/detail/decode.ipp"
#undef KVCACHE_DECODE_TILES

template <class T>
KVCACHE_INLINE void tile_scores(const float* q, int ldq, int block, int g, int dk, T const* k, std::int64_t r0,
                                std::int64_t r1, float* s, T const* v, int dv, std::int64_t r_end, float* ts) noexcept {
  const int full = dk / 32;
  const bool half = full != tile_chunks(dk);
  const std::uint16_t* bq = tile_queries(ts, block, dk);
  float* c = tile_product(ts, g, dk);
  const std::size_t row_bytes = sizeof(T) * std::size_t(dk);
  std::int64_t r = r0;
  for (; r + 16 <= r1; r += 16) {
    if (v != nullptr)
      for (std::int64_t i = r; i < r + 16; ++i) prefetch_row(k, dk, v, dv, i, r_end);
    const char* kr = reinterpret_cast<const char*>(k + r * dk);
    _tile_zero(KVCACHE_TILE_C);
    for (int j = 0; j < full; ++j) {
      _tile_loadd(KVCACHE_TILE_A, kr + 64 * j, row_bytes);
      _tile_loadd(KVCACHE_TILE_B, bq + 1024 * j, 64);
      _tile_loadd(KVCACHE_TILE_B2, bq + 1024 * j + 512, 64);
      _tile_dpbf16ps(KVCACHE_TILE_C, KVCACHE_TILE_A, KVCACHE_TILE_B);
      _tile_dpbf16ps(KVCACHE_TILE_C, KVCACHE_TILE_A, KVCACHE_TILE_B2);
    }
    if (half) {
      _tile_loadd(KVCACHE_TILE_A_HALF, kr + 64 * full, row_bytes);
      _tile_loadd(KVCACHE_TILE_B_HALF, bq + 1024 * full, 64);
      _tile_loadd(KVCACHE_TILE_B2_HALF, bq + 1024 * full + 512, 64);
      _tile_dpbf16ps(KVCACHE_TILE_C, KVCACHE_TILE_A_HALF, KVCACHE_TILE_B_HALF);
      _tile_dpbf16ps(KVCACHE_TILE_C, KVCACHE_TILE_A_HALF, KVCACHE_TILE_B2_HALF);
    }
    _tile_stored(KVCACHE_TILE_C, c, 64);
    transpose_scores(c, s + (r - r0), kDecodeTile);
  }
  if (r < r1) decode_scores<8>(q, ldq, dk, k, r, r1, s + (r - r0), v, dv, r_end);
}

// P.V of the full 8-head blocks (heads [0, gb)) over rows [t0, t1) by tile products, for each whole chunk of 32 rows:
// o[h] += sum_r p[h][r] v[r]. The chunk's V rows are laid out once as B tiles (pair-row i, column n: rows 2i and
// 2i + 1 of column n), the probabilities of each block as A1 = [hi rows of its 8 heads; mid rows] and A2 = [lo rows;
// zeros], and C = A1 B + A2 B gives head h's sums in rows h and 8 + h. Rows past the last whole chunk go by FMAs. The
// next tile's K rows (k_next, n_next of them) are prefetched a few lines per column block, spread over the pass.
template <class T>
KVCACHE_INLINE void tile_pv(const float* s, int gb, int dk, int dv, int ldv, T const* v, std::int64_t t0,
                            std::int64_t t1, float* o, T const* k_next, std::int64_t n_next, float* ts) noexcept {
  const int nt = static_cast<int>(t1 - t0), chunks = nt / 32, cbs = dv / 16, blocks = gb / 8;
  const std::size_t lines =
      k_next != nullptr ? sizeof(T) * std::size_t(dk) * std::size_t(n_next < kDecodeTile ? n_next : kDecodeTile) / 64
                        : 0;
  const char* kn = reinterpret_cast<const char*>(k_next);
  std::size_t issued = 0;
  if (chunks > 0) {
    std::uint16_t* vt = tile_values(ts, gb, dk);
    const __m512i lo_idx = _mm512_load_si512(kPairLo), hi_idx = _mm512_load_si512(kPairHi);
    for (int ch = 0; ch < chunks; ++ch)
      for (int i = 0; i < 16; ++i) {
        const T* ra = v + (t0 + 32 * ch + 2 * i) * ldv;
        const T* rb = ra + ldv;
        std::uint16_t* dst = vt + std::size_t(ch * cbs) * 512 + i * 32;
        int c = 0;
        for (; c + 32 <= dv; c += 32) {
          const __m512i a = _mm512_loadu_si512(ra + c), b = _mm512_loadu_si512(rb + c);
          _mm512_store_si512(dst + (c / 16) * 512, _mm512_permutex2var_epi16(a, lo_idx, b));
          _mm512_store_si512(dst + (c / 16 + 1) * 512, _mm512_permutex2var_epi16(a, hi_idx, b));
        }
        if (c < dv) {  // 16 columns left
          const __m512i a = _mm512_maskz_loadu_epi16(0xffff, ra + c), b = _mm512_maskz_loadu_epi16(0xffff, rb + c);
          _mm512_store_si512(dst + (c / 16) * 512, _mm512_permutex2var_epi16(a, lo_idx, b));
        }
      }
    float* c = tile_product(ts, gb, dk);
    const std::size_t steps = std::size_t(blocks) * std::size_t(cbs);
    std::size_t step = 0;
    for (int bl = 0; bl < blocks; ++bl) {
      std::uint16_t* pt = tile_probabilities(ts, gb, dk, dv, bl);
      for (int ch = 0; ch < chunks; ++ch)
        for (int h = 0; h < 8; ++h)
          for (int half = 0; half < 2; ++half) {
            __m256bh hi, mid, lo;
            split3(_mm512_loadu_ps(s + (8 * bl + h) * kDecodeTile + 32 * ch + 16 * half), hi, mid, lo);
            std::uint16_t* a1 = pt + ch * 1024 + 16 * half;
            _mm256_store_si256(reinterpret_cast<__m256i*>(a1 + h * 32), (__m256i)hi);
            _mm256_store_si256(reinterpret_cast<__m256i*>(a1 + (8 + h) * 32), (__m256i)mid);
            _mm256_store_si256(reinterpret_cast<__m256i*>(a1 + 512 + h * 32), (__m256i)lo);
          }
      for (int cb = 0; cb < cbs; ++cb, ++step) {
        _tile_zero(KVCACHE_TILE_C);
        for (int ch = 0; ch < chunks; ++ch) {
          _tile_loadd(KVCACHE_TILE_A, pt + ch * 1024, 64);
          _tile_loadd(KVCACHE_TILE_B2, pt + ch * 1024 + 512, 64);
          _tile_loadd(KVCACHE_TILE_B, vt + std::size_t(ch * cbs + cb) * 512, 64);
          _tile_dpbf16ps(KVCACHE_TILE_C, KVCACHE_TILE_A, KVCACHE_TILE_B);
          _tile_dpbf16ps(KVCACHE_TILE_C, KVCACHE_TILE_B2, KVCACHE_TILE_B);
        }
        _tile_stored(KVCACHE_TILE_C, c, 64);
        for (int h = 0; h < 8; ++h) {
          float* oh = o + std::size_t(8 * bl + h) * std::size_t(dv) + 16 * cb;
          _mm512_storeu_ps(oh, _mm512_add_ps(_mm512_loadu_ps(oh), _mm512_add_ps(_mm512_load_ps(c + 16 * h),
                                                                                _mm512_load_ps(c + 16 * (8 + h)))));
        }
        for (const std::size_t want = lines * (step + 1) / steps; issued < want; ++issued)
          ops::prefetch(kn + 64 * issued);
      }
    }
  }
  if (32 * chunks < nt)
    for (int bl = 0; bl < blocks; ++bl)
      decode_pv<8>(s + 8 * bl * kDecodeTile + 32 * chunks, dv, ldv, v, t0 + 32 * chunks, t1,
                   o + std::size_t(8 * bl) * dv, bl == 0 && issued == 0 ? k_next : nullptr, n_next, dk);
}

#undef KVCACHE_TILE_A
#undef KVCACHE_TILE_B
#undef KVCACHE_TILE_C
#undef KVCACHE_TILE_A_HALF
#undef KVCACHE_TILE_B_HALF
#undef KVCACHE_TILE_B2
#undef KVCACHE_TILE_B2_HALF

// Prefill with tiles (bf16 keys and values). The block structure of the avx512 prefill_block (M = tokens x heads
// query rows, tiles of 64 keys, the online softmax on the vector ports: the same code) with both products on tiles,
// on groups of 16 query rows (M padded with zero rows):
//  * S = Q K^T: A = the block's queries, pre-scaled, as three bf16 parts (16 rows x 32 key columns a tile, laid out
//    once per block); B = 16 keys' K^T in pair rows (pair-row p, column n: elements 2p and 2p + 1 of key n, the 32-bit
//    transpose of 16 key rows), laid out once per tile of keys. C = S of 16 rows x 16 keys, four of them at a time.
//  * O += P V: A = the tile's probabilities as three bf16 parts (16 rows x 32 keys); B = V of 32 keys in pair rows
//    (pair-row i, column n: keys 2i and 2i + 1 of value column n), laid out once per tile; C = 16 rows x 16 columns
//    of O, loaded from and stored back to the f32 accumulator, four at a time.
// The same precision as decode's tiles: exact products, f32 sums in another order than the FMA kernels'.
// Tile registers (palette 1, all 16 x 64 bytes): C 0 - 3, A parts 4 - 6, B 7.
using ::kvcache::detail::PrefillArgs;
inline constexpr int kPrefillKvTile = ::kvcache::detail::kPrefillKvTile;
inline constexpr int kPrefillMaxRows = ::kvcache::detail::kPrefillMaxRows;
#define KVCACHE_PT_DP3(c)  \
  _tile_dpbf16ps(c, 4, 7); \
  _tile_dpbf16ps(c, 5, 7); \
  _tile_dpbf16ps(c, 6, 7)

KVCACHE_INLINE void load_prefill_tile_config() noexcept {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  _tile_loadconfig(&c);
}

// Scratch of one worker (detail::prefill_tile_scratch_floats): the vector path's s, o, m, l, then q3 ([3 parts][96
// rows][kd32] bf16), p3 ([3 parts][96 rows][64 keys] bf16), kt ([4 key blocks][kd32 / 32 chunks] tiles of 1 KiB), vv
// ([2 chunks of 32 keys][ldv / 16 column blocks] tiles of 1 KiB).
struct PrefillTileScratch {
  avx512::PrefillScratch rows;  // s, o, m, l (q, kt, vp unused)
  std::uint16_t *q3, *p3, *kt, *vv;
};
KVCACHE_INLINE PrefillTileScratch prefill_tile_scratch(float* base, int dk, int dv) noexcept {
  constexpr std::size_t R = kPrefillMaxRows, B = kPrefillKvTile;
  const std::size_t kd32 = ::kvcache::detail::pad_to(std::size_t(dk), 32), ldv = avx512::pad_lanes(dv);
  PrefillTileScratch t{};
  t.rows.s = avx512::take_floats(base, R * B);
  t.rows.o = avx512::take_floats(base, R * ldv);
  t.rows.m = avx512::take_floats(base, R);
  t.rows.l = avx512::take_floats(base, R);
  t.q3 = reinterpret_cast<std::uint16_t*>(avx512::take_floats(base, 3 * R * kd32 / 2));
  t.p3 = reinterpret_cast<std::uint16_t*>(avx512::take_floats(base, 3 * R * B / 2));
  t.kt = reinterpret_cast<std::uint16_t*>(avx512::take_floats(base, (B / 16) * (kd32 / 32) * 256));
  t.vv = reinterpret_cast<std::uint16_t*>(avx512::take_floats(base, (B / 32) * (ldv / 16) * 256));
  return t;
}

KVCACHE_INLINE __mmask32 first_bf16(int w) noexcept {
  return w >= 32 ? ~__mmask32{0} : (w <= 0 ? __mmask32{0} : (__mmask32{1} << w) - 1);
}

// Rows [0, mp) of q3: the scaled queries of rows [0, m) in three bf16 parts, zero past dk and for rows m .. mp.
KVCACHE_INLINE void tile_block_queries(const PrefillArgs& a, int m, int mp, int kd32, std::uint16_t* q3) noexcept {
  const std::size_t part = std::size_t(kPrefillMaxRows) * std::size_t(kd32);
  const __m512 sv = _mm512_set1_ps(a.scale);
  for (int i = 0; i < mp; ++i) {
    std::uint16_t* d = q3 + std::size_t(i) * std::size_t(kd32);
    const float* src = i < m ? a.q + ((a.t0 + i / a.g) * a.n_q + a.head0 + i % a.g) * a.dk : nullptr;
    for (int c = 0; c < kd32; c += 16) {
      const int w = src == nullptr ? 0 : (a.dk - c < 16 ? a.dk - c : 16);
      const __m512 x =
          w <= 0
              ? _mm512_setzero_ps()
              : _mm512_mul_ps(w == 16 ? _mm512_loadu_ps(src + c) : _mm512_maskz_loadu_ps((1u << w) - 1, src + c), sv);
      __m256bh hi, mid, lo;
      split3(x, hi, mid, lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), (__m256i)hi);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + part + c), (__m256i)mid);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 2 * part + c), (__m256i)lo);
    }
  }
}

// kt: keys [j0, j0 + nk) as B tiles, tile (kb, ch) = keys 16 kb .. 16 kb + 15, key columns 32 ch .. 32 ch + 31; zero
// past nk and dk.
KVCACHE_INLINE void tile_block_keys(const TypedRows<bf16>& k, int dk, int kc, std::int64_t j0, int nk,
                                    std::uint16_t* kt) noexcept {
  constexpr int B = kPrefillKvTile;
  for (int kb = 0; kb < B / 16; ++kb) {
    const int rows = nk - 16 * kb < 16 ? (nk > 16 * kb ? nk - 16 * kb : 0) : 16;
    if (rows == 0) {  // past the keys: zero tiles (no row to address)
      for (int ch = 0; ch < kc; ++ch) {
        float* dst = reinterpret_cast<float*>(kt + std::size_t(kb * kc + ch) * 512);
        for (int p = 0; p < 256; ++p) dst[p] = 0.0f;
      }
      continue;
    }
    const bf16* src = k.k(j0 + 16 * kb);  // 16 rows inside one block of the cache (blocks hold at least 16)
    for (int ch = 0; ch < kc; ++ch) {
      const __mmask32 mask = first_bf16(dk - 32 * ch);
      __m512 r[16];
      KVCACHE_UNROLL
      for (int n = 0; n < 16; ++n)
        r[n] = n < rows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask, src + n * dk + 32 * ch))
                        : _mm512_setzero_ps();
      ops::transpose(r);
      float* dst = reinterpret_cast<float*>(kt + std::size_t(kb * kc + ch) * 512);
      KVCACHE_UNROLL
      for (int p = 0; p < 16; ++p) _mm512_store_ps(dst + 16 * p, r[p]);
    }
  }
}

// vv: values [j0, j0 + nk) (rows at stride vs) as B tiles for the first nch chunks of 32 keys, tile (ch, cb) = keys
// 32 ch .., value columns 16 cb ..; zero past nk and dv. A row pair lies in one block of the cache.
KVCACHE_INLINE void tile_block_values(const TypedRows<bf16>& v, int dv, int vs, int cbs, std::int64_t j0, int nk,
                                      int nch, std::uint16_t* vv) noexcept {
  const __m512i lo_idx = _mm512_load_si512(kPairLo), hi_idx = _mm512_load_si512(kPairHi);
  for (int ch = 0; ch < nch; ++ch)
    for (int i = 0; i < 16; ++i) {
      const int ja = 32 * ch + 2 * i;
      const bf16* ra = ja < nk ? v.v(j0 + ja) : nullptr;
      std::uint16_t* dst = vv + std::size_t(ch * cbs) * 512 + i * 32;
      for (int c = 0; c < 16 * cbs; c += 32) {
        const __mmask32 mask = first_bf16(dv - c);
        const __m512i x = ja < nk ? _mm512_maskz_loadu_epi16(mask, ra + c) : _mm512_setzero_si512();
        const __m512i y = ja + 1 < nk ? _mm512_maskz_loadu_epi16(mask, ra + vs + c) : _mm512_setzero_si512();
        _mm512_store_si512(dst + (c / 16) * 512, _mm512_permutex2var_epi16(x, lo_idx, y));
        if (c / 16 + 1 < cbs) _mm512_store_si512(dst + (c / 16 + 1) * 512, _mm512_permutex2var_epi16(x, hi_idx, y));
      }
    }
}

// S rows of row groups [g0, g1) against the tile's 64 keys: s[16 gi ..][0 .. 64).
KVCACHE_INLINE void tile_block_scores(const std::uint16_t* q3, int kd32, const std::uint16_t* kt, int g0, int g1,
                                      float* s) noexcept {
  constexpr int B = kPrefillKvTile;
  const std::size_t part = std::size_t(kPrefillMaxRows) * std::size_t(kd32);
  const int kc = kd32 / 32, qs = 2 * kd32;
  for (int gi = g0; gi < g1; ++gi) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const std::uint16_t* qa = q3 + std::size_t(16 * gi) * std::size_t(kd32);
    for (int ch = 0; ch < kc; ++ch) {
      _tile_loadd(4, qa + 32 * ch, qs);
      _tile_loadd(5, qa + part + 32 * ch, qs);
      _tile_loadd(6, qa + 2 * part + 32 * ch, qs);
      _tile_loadd(7, kt + std::size_t(0 * kc + ch) * 512, 64);
      KVCACHE_PT_DP3(0);
      _tile_loadd(7, kt + std::size_t(1 * kc + ch) * 512, 64);
      KVCACHE_PT_DP3(1);
      _tile_loadd(7, kt + std::size_t(2 * kc + ch) * 512, 64);
      KVCACHE_PT_DP3(2);
      _tile_loadd(7, kt + std::size_t(3 * kc + ch) * 512, 64);
      KVCACHE_PT_DP3(3);
    }
    float* srow = s + 16 * gi * B;
    _tile_stored(0, srow, 4 * B);
    _tile_stored(1, srow + 16, 4 * B);
    _tile_stored(2, srow + 32, 4 * B);
    _tile_stored(3, srow + 48, 4 * B);
  }
}

// p3: rows [0, mp) of the probabilities in sc.s as three bf16 parts, for the first nch chunks of 32 keys; zero past nk
// and for rows m .. mp.
KVCACHE_INLINE void tile_block_probabilities(const float* s, int m, int mp, int nk, int nch,
                                             std::uint16_t* p3) noexcept {
  constexpr int B = kPrefillKvTile;
  constexpr std::size_t part = std::size_t(kPrefillMaxRows) * B;
  for (int i = 0; i < mp; ++i)
    for (int j = 0; j < 32 * nch; j += 16) {
      const int w = i < m ? (nk - j < 16 ? nk - j : 16) : 0;
      const __m512 x =
          w <= 0 ? _mm512_setzero_ps()
                 : (w == 16 ? _mm512_load_ps(s + i * B + j) : _mm512_maskz_loadu_ps((1u << w) - 1, s + i * B + j));
      __m256bh hi, mid, lo;
      split3(x, hi, mid, lo);
      std::uint16_t* d = p3 + i * B + j;
      _mm256_store_si256(reinterpret_cast<__m256i*>(d), (__m256i)hi);
      _mm256_store_si256(reinterpret_cast<__m256i*>(d + part), (__m256i)mid);
      _mm256_store_si256(reinterpret_cast<__m256i*>(d + 2 * part), (__m256i)lo);
    }
}

// O rows of row groups [0, mg) += P V over the first nch chunks of 32 keys (o: row stride ldv floats, cbs = ldv / 16).
KVCACHE_INLINE void tile_block_pv(const std::uint16_t* p3, const std::uint16_t* vv, int mg, int nch, int cbs, int ldv,
                                  float* o) noexcept {
  constexpr int B = kPrefillKvTile;
  constexpr std::size_t part = std::size_t(kPrefillMaxRows) * B;
  const int os = 4 * ldv;
  for (int gi = 0; gi < mg; ++gi) {
    const std::uint16_t* pa = p3 + 16 * gi * B;
    float* orow = o + std::size_t(16 * gi) * std::size_t(ldv);
    int cb = 0;
    for (; cb + 4 <= cbs; cb += 4) {
      _tile_loadd(0, orow + 16 * cb, os);
      _tile_loadd(1, orow + 16 * (cb + 1), os);
      _tile_loadd(2, orow + 16 * (cb + 2), os);
      _tile_loadd(3, orow + 16 * (cb + 3), os);
      for (int ch = 0; ch < nch; ++ch) {
        _tile_loadd(4, pa + 32 * ch, 2 * B);
        _tile_loadd(5, pa + part + 32 * ch, 2 * B);
        _tile_loadd(6, pa + 2 * part + 32 * ch, 2 * B);
        const std::uint16_t* vb = vv + std::size_t(ch * cbs + cb) * 512;
        _tile_loadd(7, vb, 64);
        KVCACHE_PT_DP3(0);
        _tile_loadd(7, vb + 512, 64);
        KVCACHE_PT_DP3(1);
        _tile_loadd(7, vb + 1024, 64);
        KVCACHE_PT_DP3(2);
        _tile_loadd(7, vb + 1536, 64);
        KVCACHE_PT_DP3(3);
      }
      _tile_stored(0, orow + 16 * cb, os);
      _tile_stored(1, orow + 16 * (cb + 1), os);
      _tile_stored(2, orow + 16 * (cb + 2), os);
      _tile_stored(3, orow + 16 * (cb + 3), os);
    }
    for (; cb < cbs; ++cb) {
      _tile_loadd(0, orow + 16 * cb, os);
      for (int ch = 0; ch < nch; ++ch) {
        _tile_loadd(4, pa + 32 * ch, 2 * B);
        _tile_loadd(5, pa + part + 32 * ch, 2 * B);
        _tile_loadd(6, pa + 2 * part + 32 * ch, 2 * B);
        _tile_loadd(7, vv + std::size_t(ch * cbs + cb) * 512, 64);
        KVCACHE_PT_DP3(0);
      }
      _tile_stored(0, orow + 16 * cb, os);
    }
  }
}

KVCACHE_NOINLINE inline void prefill_block_tiles(const PrefillArgs& a, const TypedRows<bf16>& rows,
                                                 float* scratch) noexcept {
  constexpr int B = kPrefillKvTile;
  const PrefillTileScratch t = prefill_tile_scratch(scratch, a.dk, a.dv);
  const avx512::PrefillScratch& sc = t.rows;
  const int kd32 = static_cast<int>(::kvcache::detail::pad_to(std::size_t(a.dk), 32)), kc = kd32 / 32,
            ldv = avx512::pad_lanes(a.dv), cbs = ldv / 16;
  const int M = static_cast<int>(a.t1 - a.t0) * a.g, mg = (M + 15) / 16;

  tile_block_queries(a, M, 16 * mg, kd32, t.q3);
  avx512::init_rows(sc, 16 * mg, ldv);  // the padding rows too: their O goes through the tile products
  load_prefill_tile_config();
  const std::int64_t kv_end = a.n_old + a.t1;  // keys visible to the block's last token
  for (std::int64_t j0 = 0; j0 < kv_end; j0 += B) {
    const int nk = static_cast<int>(kv_end - j0 < B ? kv_end - j0 : B), nch = (nk + 31) / 32;
    tile_block_keys(rows, a.dk, kc, j0, nk, t.kt);
    tile_block_values(rows, a.dv, a.v_stride, cbs, j0, nk, nch, t.vv);
    tile_block_scores(t.q3, kd32, t.kt, 0, mg, sc.s);
    avx512::softmax_tile(a, sc, M, j0, nk, ldv);
    tile_block_probabilities(sc.s, M, 16 * mg, nk, nch, t.p3);
    tile_block_pv(t.p3, t.vv, mg, nch, cbs, ldv, sc.o);
  }
  avx512::store_rows(a, sc, M, ldv);

  // Column sums: the vector path's second sweep, its scores on tiles.
  avx512::ColsumRows cs;
  if (avx512::colsum_rows(a, cs))
    for (std::int64_t j0 = 0; j0 < cs.sweep_end; j0 += B) {
      const int nk = static_cast<int>(cs.sweep_end - j0 < B ? cs.sweep_end - j0 : B);
      tile_block_keys(rows, a.dk, kc, j0, nk, t.kt);
      tile_block_scores(t.q3, kd32, t.kt, cs.r0 / 16, (cs.r1 + 15) / 16, sc.s);
      avx512::colsum_tile(a, sc, cs.r0, cs.r1, j0, nk);
    }
  _tile_release();
}
#undef KVCACHE_PT_DP3

/// Prefill of one block: on tiles for bf16 caches, else the avx512 kernel.
template <class T>
inline void prefill_block(const PrefillArgs& a, const TypedRows<T>& rows, float* scratch) noexcept {
  if constexpr (std::is_same_v<T, bf16>)
    prefill_block_tiles(a, rows, scratch);
  else
    avx512::prefill_block(a, rows, avx512::prefill_scratch(scratch, a.dk, a.dv));
}

/// The dispatch entry point of prefill.hpp: amx's prefill_block takes the raw scratch.
template <class T>
KVCACHE_NOINLINE void prefill_unit(const PrefillArgs& a, const TypedRows<T>& rows, float* scratch) noexcept {
  prefill_block(a, rows, scratch);
}

#ifdef KVCACHE_KERNEL_INSTANCE  // compiled kernels (core/macros.hpp)
KVCACHE_KERNEL_INSTANCE void prefill_unit<float>(const PrefillArgs&, const TypedRows<float>&, float*) noexcept;
KVCACHE_KERNEL_INSTANCE void prefill_unit<f16>(const PrefillArgs&, const TypedRows<f16>&, float*) noexcept;
KVCACHE_KERNEL_INSTANCE void prefill_unit<bf16>(const PrefillArgs&, const TypedRows<bf16>&, float*) noexcept;
KVCACHE_KERNEL_INSTANCE void prefill_unit<i8>(const PrefillArgs&, const TypedRows<i8>&, float*) noexcept;
#endif
}  // namespace kvcache::kernels::amx
KVCACHE_TARGET_END
#endif
