#pragma once

// Decode attention over int8 caches on AVX-512 VNNI (vnni_active(): avx512 or amx on a CPU with AVX512-VNNI), for
// groups of 2 or more query heads, where the FMA kernel is bound by arithmetic rather than by the bytes it reads.
// Both products run as integer dot products, VPDPWSSD (pairs of 16-bit products added into 32-bit lanes): each int8
// row is sign-extended once per 32 elements, and one instruction per head then does what two FMAs and two more
// conversions do on the FMA path (detail/decode.ipp).
//  * Q.K: each query head is rounded once per call to 16-bit integers with a scale of its own (14 bits of magnitude, so
//    that a dot product of up to 1024 elements fits in 32 bits); a score is the integer dot product times the query's
//    and the key row's scales.
//  * P.V: per tile of kDecodeTile rows and per head, the probabilities times the value rows' scales are rounded to
//    16-bit integers with one scale for the tile (15 bits), two rows to a 32-bit lane; the value rows of a row pair
//    are interleaved by element, so each lane of a product sums the pair's two products for one column. A tile's sums
//    (at most 32 pairs of 2 x 32767 x 127: under 2^31) go into the f32 output once per tile.
// The online softmax, the exported probabilities and their scales are the FMA kernel's (avx512 namespace).
//
// Precision. The query's and the probabilities' rounding add a relative error of about 2^-15 and 2^-16 to each term,
// against 2^-8 from storing the rows in int8, so the outputs keep int8's accuracy, not f32's: the tests hold this path
// to 1e-3 where the FMA kernels meet 2e-5 (both against the reference on the dequantized rows).

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "kvcache/attention/detail/kernel_deps.hpp"
#include "kvcache/attention/detail/kernels.hpp"
#include "kvcache/simd/avx512.hpp"
#include "kvcache/simd/target.hpp"

#if KVCACHE_HAVE_VNNI
KVCACHE_TARGET_VNNI_BEGIN
namespace kvcache::kernels::vnni {
namespace ops = ::kvcache::simd::avx512;
namespace base = ::kvcache::kernels::avx512;

inline constexpr int kTile = ::kvcache::detail::kDecodeTile;

KVCACHE_INLINE __mmask32 byte_mask(int n) noexcept { return n >= 32 ? ~__mmask32{0} : (__mmask32{1} << n) - 1u; }

// 32 int8 elements from p (n < 32: the first n, zeros after), sign-extended to 16 bits.
KVCACHE_INLINE __m512i load_i16(const i8* p, int n) noexcept {
  const __m256i b =
      n >= 32 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi8(byte_mask(n), p);
  return _mm512_cvtepi8_epi16(b);
}

// Scratch after the scores (detail::decode_scratch_floats): the queries as 16-bit integers [g][ld16] (ld16 = dk
// rounded up to 32, zero-padded), their scales [g], and the probability pairs of one tile [g][kTile / 2].
struct Scratch {
  std::int16_t* q16;
  int ld16;
  float* q_scale;
  std::int32_t* pairs;
};
KVCACHE_INLINE Scratch carve(float* s, int g, int dk) noexcept {
  Scratch sc{};
  float* base_ptr = s + ::kvcache::detail::pad_to(static_cast<std::size_t>(g) * kTile, 16);
  sc.ld16 = (dk + 31) / 32 * 32;
  sc.q16 = reinterpret_cast<std::int16_t*>(base_ptr);
  base_ptr += ::kvcache::detail::pad_to(static_cast<std::size_t>(g) * static_cast<std::size_t>(sc.ld16) / 2, 16);
  sc.q_scale = base_ptr;
  base_ptr += ::kvcache::detail::pad_to(static_cast<std::size_t>(g), 16);
  sc.pairs = reinterpret_cast<std::int32_t*>(base_ptr);
  return sc;
}

// Query head h as 16-bit integers: q16 = round(q / scale), scale = max |q| / 16383 (0 for a zero query).
KVCACHE_INLINE void quantize_queries(const float* q, int ldq, int g, int dk, const Scratch& sc) noexcept {
  for (int h = 0; h < g; ++h) {
    const float* qh = q + h * ldq;
    ops::Vec mx = ops::zero();
    int c = 0;
    for (; c + 16 <= dk; c += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(ops::load(qh + c)));
    if (c < dk) mx = _mm512_max_ps(mx, _mm512_abs_ps(ops::load_n(qh + c, dk - c)));
    const float amax = ops::reduce_max(mx);
    const float scale = amax > 0.0f ? amax / 16383.0f : 0.0f;
    const ops::Vec inv = ops::set1(amax > 0.0f ? 16383.0f / amax : 0.0f);
    std::int16_t* dst = sc.q16 + h * sc.ld16;
    for (c = 0; c < sc.ld16; c += 16) {
      const int n = dk - c >= 16 ? 16 : (dk > c ? dk - c : 0);
      const __m512i r = _mm512_cvt_roundps_epi32(ops::mul(ops::load_n(qh + c, n), inv),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), _mm512_cvtsepi32_epi16(r));
    }
    sc.q_scale[h] = scale;
  }
}

// Scores of HB heads (query block at q16, rows of ld16) against rows [r0, r1) of k: s[h * kTile + (r - r0)] = the
// integer dot product, as a float (the query's and the key rows' scales come after, by scale_scores). Two rows at a
// time, so each query vector feeds two products; a block of 8 heads takes the row pair's 16 sums from one reduction
// tree, staged and transposed into s after the rows (as decode_scores does for 16-bit rows). Prefetches as
// decode_scores does: V row r (v not null) and, in the head's first tile, K rows kPrefetchRows ahead.
template <int HB>
KVCACHE_INLINE void scores(const std::int16_t* q16, int ld16, int dk, const i8* k, std::int64_t r0, std::int64_t r1,
                           float* s, const i8* v, int dv, std::int64_t r_end) noexcept {
  constexpr bool kStaged = HB == 8;
  [[maybe_unused]] alignas(64) float st[kStaged ? kTile * 8 : 1];
  for (std::int64_t r = r0; r < r1; r += 2) {
    const bool two = r + 1 < r1;
    if (v != nullptr) {
      base::prefetch_row(k, dk, v, dv, r, r_end);
      if (two) base::prefetch_row(k, dk, v, dv, r + 1, r_end);
    }
    const i8* k0 = k + r * dk;
    const i8* k1 = two ? k0 + dk : k0;
    __m512i a0[HB], a1[HB];
    KVCACHE_UNROLL
    for (int h = 0; h < HB; ++h) a0[h] = a1[h] = _mm512_setzero_si512();
    for (int c = 0; c < dk; c += 32) {
      const __m512i x0 = load_i16(k0 + c, dk - c), x1 = load_i16(k1 + c, dk - c);
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) {
        const __m512i qv = _mm512_loadu_si512(q16 + h * ld16 + c);
        a0[h] = _mm512_dpwssd_epi32(a0[h], x0, qv);
        a1[h] = _mm512_dpwssd_epi32(a1[h], x1, qv);
      }
    }
    if constexpr (kStaged) {
      ops::Vec both[16];
      KVCACHE_UNROLL
      for (int h = 0; h < 8; ++h) {
        both[h] = _mm512_cvtepi32_ps(a0[h]);
        both[8 + h] = _mm512_cvtepi32_ps(a1[h]);
      }
      ops::reduce_add_16(both, st + 8 * (r - r0));  // a lone last row's second half is never read
    } else {
      alignas(16) float sum[4];
      KVCACHE_UNROLL
      for (int h = 0; h < HB; h += 4) {
        ops::Vec f[4];
        KVCACHE_UNROLL
        for (int i = 0; i < 4; ++i) f[i] = h + i < HB ? _mm512_cvtepi32_ps(a0[h + i]) : ops::zero();
        ops::reduce_add_4(f[0], f[1], f[2], f[3], sum);
        KVCACHE_UNROLL
        for (int i = 0; i < 4; ++i)
          if (h + i < HB) s[(h + i) * kTile + (r - r0)] = sum[i];
        if (!two) continue;
        KVCACHE_UNROLL
        for (int i = 0; i < 4; ++i) f[i] = h + i < HB ? _mm512_cvtepi32_ps(a1[h + i]) : ops::zero();
        ops::reduce_add_4(f[0], f[1], f[2], f[3], sum);
        KVCACHE_UNROLL
        for (int i = 0; i < 4; ++i)
          if (h + i < HB) s[(h + i) * kTile + (r + 1 - r0)] = sum[i];
      }
    }
  }
  if constexpr (kStaged) {
    const int n = static_cast<int>(r1 - r0);
    int i = 0;
    for (; i + 16 <= n; i += 16) ops::transpose_16x8(st + 8 * i, s + i, kTile);
    for (; i < n; ++i) {
      KVCACHE_UNROLL
      for (int h = 0; h < 8; ++h) s[h * kTile + i] = st[8 * i + h];
    }
  }
}

// s[h * kTile + i] *= qs[h] * ks[i] for g heads and the nt rows of a tile: the integer dot products made scores.
KVCACHE_INLINE void scale_scores(float* s, int g, int nt, const float* qs, const float* ks) noexcept {
  for (int h = 0; h < g; ++h) {
    float* sh = s + h * kTile;
    const ops::Vec f = ops::set1(qs[h]);
    int i = 0;
    for (; i + 16 <= nt; i += 16) ops::store(sh + i, ops::mul(ops::load(sh + i), ops::mul(f, ops::load(ks + i))));
    if (i < nt)
      ops::store_n(sh + i, ops::mul(ops::load_n(sh + i, nt - i), ops::mul(f, ops::load_n(ks + i, nt - i))), nt - i);
  }
}

// Column positions of a row pair's product: lane e of the product of the low interleave holds column 8 (e / 4) + e % 4
// of the 32-column chunk, of the high interleave column 8 (e / 4) + 4 + e % 4. idx[j] picks, for output column 16 j +
// x, the lane of the pair (low lanes 0 - 15, high lanes 16 - 31) that holds it.
KVCACHE_INLINE __m512i column_order(int j) noexcept {
  alignas(64) std::int32_t idx[16];
  for (int x = 0; x < 16; ++x) {
    const int col = 16 * j + x;
    idx[x] = (col % 8 < 4 ? 0 : 16) + (col / 8) * 4 + col % 4;
  }
  return _mm512_load_si512(idx);
}

// o[h] += sum_r p[h][r] * vs[r] * v[r] for HB heads and the rows [r0, r1) of one tile (p: [HB][kTile], the tile's
// exponentials; vs: the value rows' scales from row r0): the weights rounded to 16 bits per head with one scale, in
// row pairs (pairs: [HB][kTile / 2] scratch), then integer products. k_next: the next tile's first n_next K rows,
// prefetched evenly over the row steps.
template <int HB>
KVCACHE_INLINE void pv(const float* p, const float* vs, int dv, int ldv, const i8* v, std::int64_t r0, std::int64_t r1,
                       float* o, std::int32_t* pairs, const i8* k_next, std::int64_t n_next, int dk) noexcept {
  const int nt = static_cast<int>(r1 - r0), np = (nt + 1) / 2;
  float w_scale[HB];
  KVCACHE_UNROLL
  for (int h = 0; h < HB; ++h) {
    alignas(64) float w[kTile];
    const float* ph = p + h * kTile;
    ops::Vec mx = ops::zero();
    int i = 0;
    for (; i + 16 <= nt; i += 16) {
      const ops::Vec x = ops::mul(ops::load(ph + i), ops::load(vs + i));
      ops::store(w + i, x);
      mx = ops::max(mx, x);
    }
    if (i < nt) {
      const ops::Vec x = ops::mul(ops::load_n(ph + i, nt - i), ops::load_n(vs + i, nt - i));
      ops::store(w + i, x);  // w holds kTile floats: a whole vector fits
      mx = ops::max(mx, x);
    }
    const float wmax = ops::reduce_max(mx);
    w_scale[h] = wmax > 0.0f ? wmax / 32767.0f : 0.0f;
    const ops::Vec inv = ops::set1(wmax > 0.0f ? 32767.0f / wmax : 0.0f);
    // Row pair j's 32-bit lane is rows 2j (low half) and 2j + 1 (high half): the weights as consecutive 16-bit
    // integers. Lanes past nt hold zeros (load_n above), so an odd last row pairs with a zero weight.
    auto* w16 = reinterpret_cast<std::int16_t*>(pairs + h * (kTile / 2));
    for (int j = 0; j < nt; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w16 + j),
                          _mm512_cvtsepi32_epi16(_mm512_cvt_roundps_epi32(
                              ops::mul(ops::load(w + j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)));
  }
  const int chunks = (dv + 31) / 32;
  base::SpreadPrefetch spread{
      reinterpret_cast<const char*>(k_next),
      k_next != nullptr ? (std::size_t(dk) * std::size_t(std::min<std::int64_t>(n_next, nt)) + 63) / 64 : 0,
      std::max<std::size_t>(std::size_t(np) * std::size_t(chunks), 1)};
  const __m512i order0 = column_order(0), order1 = column_order(1);
  for (int c = 0; c < dv; c += 32) {
    const int w = dv - c < 32 ? dv - c : 32;
    __m512i lo[HB], hi[HB];
    KVCACHE_UNROLL
    for (int h = 0; h < HB; ++h) lo[h] = hi[h] = _mm512_setzero_si512();
    const i8* va = v + r0 * ldv + c;
    const std::ptrdiff_t step = 2 * static_cast<std::ptrdiff_t>(ldv);
    for (int j = 0; j < np; ++j, va += step) {
      spread.advance(1);
      const __m512i a = load_i16(va, w);
      // An odd last row pairs with zeros (its partner's weight is 0 too).
      const __m512i b = 2 * j + 1 < nt ? load_i16(va + ldv, w) : _mm512_setzero_si512();
      const __m512i il = _mm512_unpacklo_epi16(a, b), ih = _mm512_unpackhi_epi16(a, b);
      KVCACHE_UNROLL
      for (int h = 0; h < HB; ++h) {
        const __m512i pp = _mm512_set1_epi32(pairs[h * (kTile / 2) + j]);
        lo[h] = _mm512_dpwssd_epi32(lo[h], il, pp);
        hi[h] = _mm512_dpwssd_epi32(hi[h], ih, pp);
      }
    }
    KVCACHE_UNROLL
    for (int h = 0; h < HB; ++h) {
      const ops::Vec sc = ops::set1(w_scale[h]);
      const ops::Vec fl = _mm512_cvtepi32_ps(lo[h]), fh = _mm512_cvtepi32_ps(hi[h]);
      float* oh = o + h * dv + c;
      const ops::Vec x0 = _mm512_permutex2var_ps(fl, order0, fh), x1 = _mm512_permutex2var_ps(fl, order1, fh);
      if (w == 32) {
        ops::store(oh, ops::fma(x0, sc, ops::load(oh)));
        ops::store(oh + 16, ops::fma(x1, sc, ops::load(oh + 16)));
      } else {
        const int w0 = w < 16 ? w : 16;
        ops::store_n(oh, ops::fma(x0, sc, ops::load_n(oh, w0)), w0);
        if (w > 16) ops::store_n(oh + 16, ops::fma(x1, sc, ops::load_n(oh + 16, w - 16)), w - 16);
      }
    }
  }
}

template <int HB>
KVCACHE_NOINLINE void scores_apart(const std::int16_t* q16, int ld16, int dk, const i8* k, std::int64_t r0,
                                   std::int64_t r1, float* s, const i8* v, int dv, std::int64_t r_end) noexcept {
  scores<HB>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
}
template <int HB>
KVCACHE_NOINLINE void pv_apart(const float* p, const float* vs, int dv, int ldv, const i8* v, std::int64_t r0,
                               std::int64_t r1, float* o, std::int32_t* pairs, const i8* k_next, std::int64_t n_next,
                               int dk) noexcept {
  pv<HB>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
}

KVCACHE_INLINE void scores_any(int hb, const std::int16_t* q16, int ld16, int dk, const i8* k, std::int64_t r0,
                               std::int64_t r1, float* s, const i8* v, int dv, std::int64_t r_end) noexcept {
  switch (hb) {
    case 1:
      return scores_apart<1>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    case 2:
      return scores_apart<2>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    case 3:
      return scores_apart<3>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    case 4:
      return scores_apart<4>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    case 5:
      return scores_apart<5>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    case 6:
      return scores_apart<6>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    case 7:
      return scores_apart<7>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
    default:
      return scores_apart<8>(q16, ld16, dk, k, r0, r1, s, v, dv, r_end);
  }
}
KVCACHE_INLINE void pv_any(int hb, const float* p, const float* vs, int dv, int ldv, const i8* v, std::int64_t r0,
                           std::int64_t r1, float* o, std::int32_t* pairs, const i8* k_next, std::int64_t n_next,
                           int dk) noexcept {
  switch (hb) {
    case 1:
      return pv_apart<1>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    case 2:
      return pv_apart<2>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    case 3:
      return pv_apart<3>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    case 4:
      return pv_apart<4>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    case 5:
      return pv_apart<5>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    case 6:
      return pv_apart<6>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    case 7:
      return pv_apart<7>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
    default:
      return pv_apart<8>(p, vs, dv, ldv, v, r0, r1, o, pairs, k_next, n_next, dk);
  }
}

/// avx512::decode_partial for i8 rows, with the products on VNNI (see the top of this header); same arguments and
/// results, the export included (the one-pass kernel's order: probabilities added after the head).
template <class T>
KVCACHE_NOINLINE void decode_partial(const float* q, int ldq, int g, int dk, int dv, int ldv, const TypedRows<T>& rows,
                                     std::int64_t r0, std::int64_t r1, float* o, float* m, float* l, float* probs,
                                     std::int64_t ld, float* tile_max, std::int64_t ldt, float* s, float* acc,
                                     std::int64_t acc_ld, float* acc_max) noexcept {
  static_assert(std::is_same_v<T, i8>, "the VNNI decode takes int8 rows");
  for (int h = 0; h < g; ++h) {
    m[h] = -std::numeric_limits<float>::infinity();
    l[h] = 0.0f;
  }
  for (int i = 0; i < g * dv; ++i) o[i] = 0.0f;
  const Scratch sc = carve(s, g, dk);
  quantize_queries(q, ldq, g, dk, sc);
  for (std::int64_t t0 = r0; t0 < r1; t0 += kTile) {
    const std::int64_t t1 = t0 + kTile < r1 ? t0 + kTile : r1;
    const int nt = static_cast<int>(t1 - t0);
    // Each tile run by run: rows inside one block (core/head_rows.hpp).
    for (int h0 = 0; h0 < g;) {
      const int hb = base::head_block(g - h0);
      for (std::int64_t a = t0, n; a < t1; a += n) {
        n = rows.run(a, t1);
        const i8* vp = h0 == 0 && ldv == dv ? rows.v(a) : nullptr;
        scores_any(hb, sc.q16 + h0 * sc.ld16, sc.ld16, dk, rows.k(a), 0, n, s + h0 * kTile + (a - t0), vp, dv,
                   t0 == r0 ? rows.run(a, r1) : 0);
      }
      h0 += hb;
    }
    for (std::int64_t a = t0, n; a < t1; a += n)
      scale_scores(s + (a - t0), g, int(n = rows.run(a, t1)), sc.q_scale, rows.ks(a));
    for (int h = 0; h < g; ++h) {
      float* sh = s + h * kTile;
      base::softmax_tile(sh, nt, m[h], l[h], o + h * dv, dv, sh, probs != nullptr ? probs + h * ld + t0 : nullptr);
      if (probs != nullptr) tile_max[h * ldt + t0 / kTile] = m[h];
    }
    for (int h0 = 0; h0 < g;) {
      const int hb = base::head_block(g - h0);
      for (std::int64_t a = t0, n; a < t1; a += n) {
        n = rows.run(a, t1);
        const std::int64_t an = a + kTile;
        pv_any(hb, s + h0 * kTile + (a - t0), rows.vs(a), dv, ldv, rows.v(a), 0, n, o + h0 * dv,
               sc.pairs + h0 * (kTile / 2), h0 == 0 && an < r1 ? rows.k(an) : nullptr, r1 - an, dk);
      }
      h0 += hb;
    }
  }
  if (acc != nullptr && r1 > r0)
    base::accumulate_probabilities(probs, g, ld, r1, tile_max, ldt, m, l, acc, acc_ld, acc_max);
}

#ifdef KVCACHE_KERNEL_INSTANCE  // compiled kernels (core/macros.hpp)
KVCACHE_KERNEL_INSTANCE void decode_partial<i8>(const float*, int, int, int, int, int, const TypedRows<i8>&,
                                                std::int64_t, std::int64_t, float*, float*, float*, float*,
                                                std::int64_t, float*, std::int64_t, float*, float*, std::int64_t,
                                                float*) noexcept;
#endif
}  // namespace kvcache::kernels::vnni
KVCACHE_TARGET_END
#endif  // KVCACHE_HAVE_VNNI
