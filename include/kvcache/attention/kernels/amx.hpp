#pragma once

// Attention kernels for Isa::kAmx: the avx512 kernels, except that decode computes the scores of each block of 8
// query heads against 16 bf16 key rows with AMX tile products (TDPBF16PS: 16 rows x 32 columns x 16 outputs per
// instruction) instead of 64 FMAs and 8 horizontal reductions per row. The tile unit runs beside the vector ports,
// which keep the online softmax and P.V. It matters where decode is compute-bound: MLA (128 heads on one latent row
// of 576) and GQA groups of 8 or more.
//
// Precision. A tile product multiplies bf16 pairs exactly and accumulates in f32. bf16 keys enter as they are; the
// f32 query enters as three bf16 parts, hi = bf16(q), mid = bf16(q - hi), lo = bf16(q - hi - mid), which hold all of
// its 24 significant bits. So a score is the exact sum of the same products as the FMA kernels', only added in
// another order. (Tile products treat bf16 subnormals, below 1.2e-38, as zero.)
//
// f16 keys stay on the FMA path: this CPU family has no f16 tile product, and splitting each f16 key into two bf16
// parts costs more vector work per row (about 12 ns at d = 128) than the tile product saves.

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "kvcache/attention/detail/kernel_deps.hpp"
#include "kvcache/attention/kernels/avx512.hpp"
#include "kvcache/simd/avx512.hpp"
#include "kvcache/simd/target.hpp"

#if KVCACHE_HAVE_AMX
KVCACHE_TARGET_AMX_BEGIN
namespace kvcache::kernels::amx {
namespace ops = ::kvcache::simd::avx512;

// The tile registers decode uses (palette 1). A: key rows (16 x 32 bf16; the "half" ones 16 x 16, for dk % 32 == 16).
// B: query pairs, 16 pair-rows x 16 columns: B1 holds the 8 heads' hi parts then their mid parts, B2 their lo parts
// then zeros, so that C = A B1 + A B2 has hi + lo in column n and mid in column 8 + n. C: 16 rows x 16 f32.
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
KVCACHE_INLINE bool tiles_apply(int g, int dk) noexcept {
  return std::is_same_v<T, bf16> && ::kvcache::detail::decode_tiles_fit(g, dk);
}

// Tile operands in the scratch ts (decode_scratch_floats): for each full 8-head block and each chunk of 32 key
// columns (the last may have 16), the two query tiles B1, B2 (1 KiB each); then C, [16][16] f32.
KVCACHE_INLINE int tile_chunks(int dk) noexcept { return (dk + 31) / 32; }
KVCACHE_INLINE std::uint16_t* tile_queries(float* ts, int block, int dk) noexcept {
  return reinterpret_cast<std::uint16_t*>(ts) + std::size_t(block) * std::size_t(tile_chunks(dk)) * 1024;
}
KVCACHE_INLINE float* tile_product(float* ts, int g, int dk) noexcept {
  return reinterpret_cast<float*>(tile_queries(ts, g / 8, dk));
}

// Lays out the queries of every full 8-head block as B tiles and loads the tile configuration. In chunk c, pair-row
// p of B1 holds, in column n < 8, elements 32c + 2p and 32c + 2p + 1 of head 8b + n's hi part, and in column 8 + n
// the same of its mid part; B2 the lo parts, then zeros. Once per call: the scores then cost no query work per row.
KVCACHE_INLINE void tiles_begin(const float* q, int ldq, int g, int dk, float* ts) noexcept {
  for (int b = 0; b + 8 <= g; b += 8) {
    std::uint16_t* bq = tile_queries(ts, b / 8, dk);
    for (int c = 0; c < tile_chunks(dk); ++c) std::memset(bq + c * 1024 + 512, 0, 1024);
    for (int h = 0; h < 8; ++h) {
      const float* qh = q + (b + h) * ldq;
      for (int c = 0; c < dk; ++c) {
        const std::uint16_t hi = f32_to_bf16_bits(qh[c]);
        const float r1 = qh[c] - bf16_bits_to_f32(hi);  // exact, as is r1 - mid
        const std::uint16_t mid = f32_to_bf16_bits(r1);
        const std::uint16_t lo = f32_to_bf16_bits(r1 - bf16_bits_to_f32(mid));
        std::uint16_t* t = bq + (c / 32) * 1024 + ((c % 32) / 2) * 32 + (c & 1);
        t[2 * h] = hi;
        t[2 * (8 + h)] = mid;
        t[512 + 2 * h] = lo;
      }
    }
  }
  load_tile_config();
}
KVCACHE_INLINE void tiles_end() noexcept { _tile_release(); }

// c: [16 rows][16 columns] f32, columns n and 8 + n two parts of head n's scores. Writes the 16 scores of head h to
// s + h * ld. A 16 x 16 transpose (unpacks within 128-bit lanes, then 128-bit lane shuffles) with the hi + lo
// addition folded into its last stage.
KVCACHE_INLINE void transpose_scores(const float* c, float* s, int ld) noexcept {
  __m512 r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_ps(c + 16 * i);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4a + m], 128-bit lane j: rows 4a .. 4a + 3 of column 4j + m.
  for (int a = 0; a < 16; a += 4) {
    u[a] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[a]), _mm512_castps_pd(t[a + 2])));
    u[a + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[a]), _mm512_castps_pd(t[a + 2])));
    u[a + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[a + 1]), _mm512_castps_pd(t[a + 3])));
    u[a + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[a + 1]), _mm512_castps_pd(t[a + 3])));
  }
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

// decode_scores<8> with tiles: rows [r0, r1) of bf16 keys against query block `block` (heads 8 * block ..), whole
// 16-row blocks by tile products, the rest (fewer than 16 rows) by the FMA path. Same prefetching as decode_scores.
template <class T>
KVCACHE_INLINE void tile_scores(const float* q, int ldq, int block, int g, int dk, T const* k, std::int64_t r0,
                                std::int64_t r1, float* s, T const* v, int dv, std::int64_t r_end, float* ts) noexcept;

#define KVCACHE_DECODE_TILES 1
#include "kvcache/attention/detail/decode.ipp"
#undef KVCACHE_DECODE_TILES

template <class T>
KVCACHE_INLINE void tile_scores(const float* q, int ldq, int block, int g, int dk, T const* k, std::int64_t r0,
                                std::int64_t r1, float* s, T const* v, int dv, std::int64_t r_end, float* ts) noexcept {
  constexpr std::int64_t kPrefetchRows = 8;
  const int full = dk / 32;
  const bool half = full != tile_chunks(dk);
  const std::uint16_t* bq = tile_queries(ts, block, dk);
  float* c = tile_product(ts, g, dk);
  const std::size_t row_bytes = sizeof(T) * std::size_t(dk);
  std::int64_t r = r0;
  for (; r + 16 <= r1; r += 16) {
    if (v != nullptr)
      for (std::int64_t i = r; i < r + 16; ++i) {
        if (i + kPrefetchRows < r_end) {
          const char* kn = reinterpret_cast<const char*>(k + (i + kPrefetchRows) * dk);
          for (std::size_t b = 0; b < row_bytes; b += 64) ops::prefetch(kn + b);
        }
        const char* vr = reinterpret_cast<const char*>(v + i * dv);
        for (std::size_t b = 0; b < sizeof(T) * std::size_t(dv); b += 64) ops::prefetch(vr + b);
      }
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

#undef KVCACHE_TILE_A
#undef KVCACHE_TILE_B
#undef KVCACHE_TILE_C
#undef KVCACHE_TILE_A_HALF
#undef KVCACHE_TILE_B_HALF
#undef KVCACHE_TILE_B2
#undef KVCACHE_TILE_B2_HALF

// Everything else is the avx512 code.
using ::kvcache::kernels::avx512::newest_position;
using ::kvcache::kernels::avx512::prefill_block;
using ::kvcache::kernels::avx512::prefill_scratch;
using ::kvcache::kernels::avx512::select_one;
}  // namespace kvcache::kernels::amx
KVCACHE_TARGET_END
#endif
