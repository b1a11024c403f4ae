// Causal prefill (flash) attention for one KV head and one block of query tokens, written once against the op set
// `ops` of the enclosing ISA namespace. Compiled per ISA by attention/detail/kernels.hpp (simd/foreach_isa.inc); no
// include guard.
//
// A block holds the g query heads of the group for up to kPrefillTokens(g) consecutive new tokens: M = tokens * g
// rows (row i is token i / g, head i % g), so each K/V tile serves the whole group. For every KV tile of
// kPrefillKvTile keys at or below the block's diagonal (tiles above it are never visited):
//   pack K^T (f32, [dk_pad][tile]) and V (f32, [tile][dv_pad]) once, S = Q K^T with a register-tiled micro-kernel
//   (kPrefillMR rows x kPrefillNV vectors: broadcast Q, vector K^T, FMA), mask the diagonal, online softmax per row,
//   O += P V with the same micro-kernel shape.
// Q is packed pre-scaled, and rows are padded to whole vectors, so the micro-kernels have no tails.

inline constexpr int kPrefillKvTile = ::kvcache::detail::kPrefillKvTile;
inline constexpr int kPrefillNV = 4;
inline constexpr int kPrefillMR = ops::kLanes >= 16 ? 6 : (ops::kLanes >= 8 ? 3 : 4);
inline constexpr int kPrefillMaxRows = ::kvcache::detail::kPrefillMaxRows;  // a multiple of every kPrefillMR

KVCACHE_INLINE int pad_lanes(int n) noexcept { return (n + ops::kLanes - 1) / ops::kLanes * ops::kLanes; }

// s[i][col0 .. col0 + NV*L) = sum_c q[i][c] kt[c][col0 ..] for MR rows.
template <int MR>
KVCACHE_INLINE void qk_micro(const float* KVCACHE_RESTRICT q, int ldq, int kd, const float* KVCACHE_RESTRICT kt,
                             int col0, float* KVCACHE_RESTRICT s) noexcept {
  constexpr int L = ops::kLanes, NV = kPrefillNV, B = kPrefillKvTile;
  ops::Vec acc[MR][NV];
  KVCACHE_UNROLL
  for (int i = 0; i < MR; ++i) {
    KVCACHE_UNROLL
    for (int v = 0; v < NV; ++v) acc[i][v] = ops::zero();
  }
  for (int c = 0; c < kd; ++c) {
    ops::Vec b[NV];
    KVCACHE_UNROLL
    for (int v = 0; v < NV; ++v) b[v] = ops::load(kt + c * B + col0 + v * L);
    KVCACHE_UNROLL
    for (int i = 0; i < MR; ++i) {
      const ops::Vec a = ops::set1(q[i * ldq + c]);
      KVCACHE_UNROLL
      for (int v = 0; v < NV; ++v) acc[i][v] = ops::fma(a, b[v], acc[i][v]);
    }
  }
  KVCACHE_UNROLL
  for (int i = 0; i < MR; ++i) {
    KVCACHE_UNROLL
    for (int v = 0; v < NV; ++v) ops::store(s + i * B + col0 + v * L, acc[i][v]);
  }
}

// o[i][col0 .. col0 + NV*L) += sum_{j < nk} p[i][j] vp[j][col0 ..] for MR rows.
template <int MR, int NV>
KVCACHE_INLINE void pv_micro(const float* KVCACHE_RESTRICT p, int nk, const float* KVCACHE_RESTRICT vp, int ldv,
                             int col0, float* KVCACHE_RESTRICT o, int ldo) noexcept {
  constexpr int L = ops::kLanes, B = kPrefillKvTile;
  ops::Vec acc[MR][NV];
  KVCACHE_UNROLL
  for (int i = 0; i < MR; ++i) {
    KVCACHE_UNROLL
    for (int v = 0; v < NV; ++v) acc[i][v] = ops::load(o + i * ldo + col0 + v * L);
  }
  for (int j = 0; j < nk; ++j) {
    ops::Vec b[NV];
    KVCACHE_UNROLL
    for (int v = 0; v < NV; ++v) b[v] = ops::load(vp + j * ldv + col0 + v * L);
    KVCACHE_UNROLL
    for (int i = 0; i < MR; ++i) {
      const ops::Vec a = ops::set1(p[i * B + j]);
      KVCACHE_UNROLL
      for (int v = 0; v < NV; ++v) acc[i][v] = ops::fma(a, b[v], acc[i][v]);
    }
  }
  KVCACHE_UNROLL
  for (int i = 0; i < MR; ++i) {
    KVCACHE_UNROLL
    for (int v = 0; v < NV; ++v) ops::store(o + i * ldo + col0 + v * L, acc[i][v]);
  }
}

template <int MR>
KVCACHE_INLINE void qk_rows(const float* q, int ldq, int kd, const float* kt, float* s) noexcept {
  for (int col0 = 0; col0 < kPrefillKvTile; col0 += kPrefillNV * ops::kLanes) qk_micro<MR>(q, ldq, kd, kt, col0, s);
}
// o[0 .. ldv) += p V for MR rows; V rows at stride vs.
template <int MR>
KVCACHE_INLINE void pv_rows(const float* p, int nk, const float* vp, int vs, int ldv, float* o) noexcept {
  constexpr int W = kPrefillNV * ops::kLanes;
  int col0 = 0;
  for (; col0 + W <= ldv; col0 += W) pv_micro<MR, kPrefillNV>(p, nk, vp, vs, col0, o, ldv);
  switch ((ldv - col0) / ops::kLanes) {
    case 1:
      return pv_micro<MR, 1>(p, nk, vp, vs, col0, o, ldv);
    case 2:
      return pv_micro<MR, 2>(p, nk, vp, vs, col0, o, ldv);
    case 3:
      return pv_micro<MR, 3>(p, nk, vp, vs, col0, o, ldv);
    default:
      return;
  }
}

// S = Q K^T for rows [r0, r1) (row stride of q: kd, of s: kPrefillKvTile).
inline void qk_block(const float* q, int kd, const float* kt, int r0, int r1, float* s) noexcept {
  constexpr int MR = kPrefillMR, B = kPrefillKvTile;
  int i = r0;
  for (; i + MR <= r1; i += MR) qk_rows<MR>(q + i * kd, kd, kd, kt, s + i * B);
  for (; i < r1; ++i) qk_rows<1>(q + i * kd, kd, kd, kt, s + i * B);
}
// O += P V for rows [0, m) (row stride of o: ldv; of vp: vs, with at least ldv readable floats per row).
inline void pv_block(const float* p, int m, int nk, const float* vp, int vs, int ldv, float* o) noexcept {
  constexpr int MR = kPrefillMR, B = kPrefillKvTile;
  int i = 0;
  for (; i + MR <= m; i += MR) pv_rows<MR>(p + i * B, nk, vp, vs, ldv, o + i * ldv);
  for (; i < m; ++i) pv_rows<1>(p + i * B, nk, vp, vs, ldv, o + i * ldv);
}

// Packs keys [j0, j0 + nk) transposed into kt: [kd][kPrefillKvTile] f32, zero beyond nk and dk; i8 rows times their
// scales. Square blocks of kLanes rows x kLanes columns go through registers (ops::transpose), which costs a fraction
// of scattering element by element. j0 is a multiple of the tile, and blocks hold at least 16 rows, so each square
// block's rows lie in one block of the cache.
template <class T>
inline void pack_kt(const TypedRows<T>& rows_of, int dk, int kd, std::int64_t j0, int nk, float* kt) noexcept {
  constexpr int B = kPrefillKvTile, L = ops::kLanes;
  int jb = 0;
  for (; jb < nk; jb += L) {
    const int rows = nk - jb < L ? nk - jb : L;
    T const* src = rows_of.k(j0 + jb);
    for (int c = 0; c < kd; c += L) {
      ops::Vec r[L];
      if (rows == L && c + L <= dk) {
        KVCACHE_UNROLL
        for (int i = 0; i < L; ++i) r[i] = ops::load(src + i * dk + c);
      } else {  // the last rows of the sequence, or the last columns of a head dim that is not a multiple of L
        const int w = dk - c < L ? (dk > c ? dk - c : 0) : L;  // columns of the block inside the head dim
        KVCACHE_UNROLL
        for (int i = 0; i < L; ++i) r[i] = i < rows && w > 0 ? ops::load_n(src + i * dk + c, w) : ops::zero();
      }
      if constexpr (std::is_same_v<T, i8>) {
        const float* sc = rows_of.ks(j0 + jb);
        KVCACHE_UNROLL
        for (int i = 0; i < L; ++i) r[i] = ops::mul(r[i], ops::set1(i < rows ? sc[i] : 0.0f));
      }
      ops::transpose(r);
      KVCACHE_UNROLL
      for (int i = 0; i < L; ++i) ops::store(kt + (c + i) * B + jb, r[i]);
    }
  }
  for (int c = 0; c < kd; ++c)
    for (int j = jb; j < B; ++j) kt[c * B + j] = 0.0f;
}
// Packs values [j0, j0 + nk) (rows of width dv) into vp: [nk][ldv] f32, zero beyond dv; i8 rows times their scales.
template <class T>
inline void pack_v(const TypedRows<T>& rows, int dv, int ldv, std::int64_t j0, int nk, float* vp) noexcept {
  constexpr int L = ops::kLanes;
  for (int j = 0; j < nk; ++j) {
    T const* src = rows.v(j0 + j);
    if constexpr (std::is_same_v<T, i8>) {
      const ops::Vec f = ops::set1(*rows.vs(j0 + j));
      int c = 0;
      for (; c + L <= dv; c += L) ops::store(vp + j * ldv + c, ops::mul(ops::load(src + c), f));
      if (c < dv) ops::store_n(vp + j * ldv + c, ops::mul(ops::load_n(src + c, dv - c), f), dv - c);
    } else {
      ops::convert_n(vp + j * ldv, src, static_cast<std::size_t>(dv));
    }
    for (int c = dv; c < ldv; ++c) vp[j * ldv + c] = 0.0f;
  }
}

// Values [j0, j0 + nk) as f32 rows of at least ldv readable floats, at stride vs (set here): f32 values whose width
// is whole vectors, in one run of rows, in place (a copy would add a pass over them), others packed into vp.
template <class T>
inline const float* tile_values(const TypedRows<T>& rows, int dv, int v_stride, int ldv, std::int64_t j0, int nk,
                                float* vp, int& vs) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    if (dv == ldv && rows.contiguous(j0) >= nk) {
      vs = v_stride;
      return rows.v(j0);
    }
  }
  pack_v(rows, dv, ldv, j0, nk, vp);
  vs = ldv;
  return vp;
}

/// Scratch of one worker, carved from detail::prefill_scratch_floats(dk, dv) floats (64-byte aligned).
struct PrefillScratch {
  float* q;   // [kPrefillMaxRows][kd]
  float* o;   // [kPrefillMaxRows][ldv]
  float* s;   // [kPrefillMaxRows][kPrefillKvTile]
  float* kt;  // [kd][kPrefillKvTile]
  float* vp;  // [kPrefillKvTile][ldv]
  float* m;   // [kPrefillMaxRows]
  float* l;   // [kPrefillMaxRows]
};
KVCACHE_INLINE float* take_floats(float*& base, std::size_t n) noexcept {
  float* p = base;
  base += (n + 15) / 16 * 16;
  return p;
}
inline PrefillScratch prefill_scratch(float* base, int dk, int dv) noexcept {
  const std::size_t kd = static_cast<std::size_t>(pad_lanes(dk)), ldv = static_cast<std::size_t>(pad_lanes(dv));
  const std::size_t R = kPrefillMaxRows, B = kPrefillKvTile;
  PrefillScratch sc{};
  sc.q = take_floats(base, R * kd);
  sc.o = take_floats(base, R * ldv);
  sc.s = take_floats(base, R * B);
  sc.kt = take_floats(base, kd * B);
  sc.vp = take_floats(base, B * ldv);
  sc.m = take_floats(base, R);
  sc.l = take_floats(base, R);
  return sc;
}

using ::kvcache::detail::PrefillArgs;

// The block's rows before its first tile: O = 0, running maxima -inf, sums 0 (row stride of o: ldv).
KVCACHE_INLINE void init_rows(const PrefillScratch& sc, int m, int ldv) noexcept {
  for (int i = 0; i < m; ++i) {
    for (int c = 0; c < ldv; ++c) sc.o[i * ldv + c] = 0.0f;
    sc.m[i] = -std::numeric_limits<float>::infinity();
    sc.l[i] = 0.0f;
  }
}

// Online softmax of the block's rows [0, m) over the tile of keys [j0, j0 + nk) whose scores are in sc.s (row stride
// kPrefillKvTile): masks the diagonal, rescales O and the sums where a row's maximum grows, and leaves the tile's
// unnormalised probabilities in sc.s, zero from the first masked key to nk.
KVCACHE_INLINE void softmax_tile(const PrefillArgs& a, const PrefillScratch& sc, int m, std::int64_t j0, int nk,
                                 int ldv) noexcept {
  constexpr int L = ops::kLanes, B = kPrefillKvTile;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int g = a.g;
  for (int i = 0; i < m; ++i) {
    float* srow = sc.s + i * B;
    const std::int64_t visible = a.n_old + a.t0 + i / g + 1 - j0;  // causal: keys j <= n_old + t
    const int lim = static_cast<int>(visible < nk ? (visible > 0 ? visible : 0) : nk);
    float mt = kNegInf;
    int j = 0;
    if (lim >= L) {
      ops::Vec mv = ops::load(srow);
      for (j = L; j + L <= lim; j += L) mv = ops::max(mv, ops::load(srow + j));
      mt = ops::reduce_max(mv);
    }
    for (; j < lim; ++j) mt = srow[j] > mt ? srow[j] : mt;
    if (mt > sc.m[i]) {
      const float alpha = sc.m[i] == kNegInf ? 0.0f : std::exp(sc.m[i] - mt);
      sc.l[i] *= alpha;
      const ops::Vec av = ops::set1(alpha);
      float* orow = sc.o + i * ldv;
      for (int c = 0; c < ldv; c += L) ops::store(orow + c, ops::mul(ops::load(orow + c), av));
      sc.m[i] = mt;
    }
    const ops::Vec mh = ops::set1(sc.m[i]);
    ops::Vec lv = ops::zero();
    float lt = 0.0f;
    j = 0;
    for (; j + L <= lim; j += L) {
      const ops::Vec p = ops::exp(ops::sub(ops::load(srow + j), mh));
      ops::store(srow + j, p);
      lv = ops::add(lv, p);
    }
    for (; j < lim; ++j) {
      srow[j] = std::exp(srow[j] - sc.m[i]);
      lt += srow[j];
    }
    for (; j < nk; ++j) srow[j] = 0.0f;
    sc.l[i] += ops::reduce_add(lv) + lt;
  }
}

// Writes the block's rows [0, m) of O / l to the output (row stride of o: ldv).
KVCACHE_INLINE void store_rows(const PrefillArgs& a, const PrefillScratch& sc, int m, int ldv) noexcept {
  constexpr int L = ops::kLanes;
  for (int i = 0; i < m; ++i) {
    const std::int64_t t = a.t0 + i / a.g;
    float* dst = a.out + (t * a.n_q + a.head0 + i % a.g) * a.dv;
    const ops::Vec inv = ops::set1(sc.l[i] > 0.0f ? 1.0f / sc.l[i] : 0.0f);
    int c = 0;
    for (; c + L <= a.dv; c += L) ops::store(dst + c, ops::mul(ops::load(sc.o + i * ldv + c), inv));
    if (c < a.dv) ops::store_n(dst + c, ops::mul(ops::load(sc.o + i * ldv + c), inv), a.dv - c);
  }
}

// Adds the final probabilities of rows [r0, r1) over the keys [j0, j0 + nk), whose scores are in sc.s, into the
// column sums (the rows' maxima and sums are final by now).
KVCACHE_INLINE void colsum_tile(const PrefillArgs& a, const PrefillScratch& sc, int r0, int r1, std::int64_t j0,
                                int nk) noexcept {
  constexpr int L = ops::kLanes, B = kPrefillKvTile;
  const int g = a.g;
  for (int i = r0; i < r1; ++i) {
    float* srow = sc.s + i * B;
    const std::int64_t visible = a.n_old + a.t0 + i / g + 1 - j0;
    const int lim = static_cast<int>(visible < nk ? (visible > 0 ? visible : 0) : nk);
    const ops::Vec mh = ops::set1(sc.m[i]), inv = ops::set1(1.0f / sc.l[i]);
    float* dst = a.colsum + (i % g) * a.colsum_ld + j0;
    int j = 0;
    for (; j + L <= lim; j += L)
      ops::store(dst + j, ops::fma(ops::exp(ops::sub(ops::load(srow + j), mh)), inv, ops::load(dst + j)));
    for (; j < lim; ++j) dst[j] += std::exp(srow[j] - sc.m[i]) / sc.l[i];
  }
}

// The rows whose probabilities the column sums take, [r0, r1) of the block, and the keys they see, [0, sweep_end);
// false if the block has none.
struct ColsumRows {
  int r0, r1;
  std::int64_t sweep_end;
};
KVCACHE_INLINE bool colsum_rows(const PrefillArgs& a, ColsumRows& r) noexcept {
  if (a.colsum == nullptr) return false;
  const std::int64_t c0 = a.cs0 > a.t0 ? a.cs0 : a.t0, c1 = a.cs1 < a.t1 ? a.cs1 : a.t1;
  if (c0 >= c1) return false;
  r = {static_cast<int>(c0 - a.t0) * a.g, static_cast<int>(c1 - a.t0) * a.g, a.n_old + c1};
  return true;
}

template <class T>
KVCACHE_NOINLINE void prefill_block(const PrefillArgs& a, const TypedRows<T>& rows, const PrefillScratch& sc) noexcept {
  constexpr int B = kPrefillKvTile;
  const int g = a.g, kd = pad_lanes(a.dk), ldv = pad_lanes(a.dv);
  const int M = static_cast<int>(a.t1 - a.t0) * g;

  for (int i = 0; i < M; ++i) {
    const float* src = a.q + ((a.t0 + i / g) * a.n_q + a.head0 + i % g) * a.dk;
    float* dst = sc.q + i * kd;
    for (int c = 0; c < a.dk; ++c) dst[c] = src[c] * a.scale;
    for (int c = a.dk; c < kd; ++c) dst[c] = 0.0f;
  }
  init_rows(sc, M, ldv);

  const std::int64_t kv_end = a.n_old + a.t1;  // keys visible to the block's last token
  for (std::int64_t j0 = 0; j0 < kv_end; j0 += B) {
    const int nk = static_cast<int>(kv_end - j0 < B ? kv_end - j0 : B);
    pack_kt(rows, a.dk, kd, j0, nk, sc.kt);
    int vs = ldv;
    const float* vp = tile_values(rows, a.dv, a.v_stride, ldv, j0, nk, sc.vp, vs);
    qk_block(sc.q, kd, sc.kt, 0, M, sc.s);
    softmax_tile(a, sc, M, j0, nk, ldv);
    pv_block(sc.s, M, nk, vp, vs, ldv, sc.o);
  }
  store_rows(a, sc, M, ldv);

  // Column sums of the final probabilities of the chosen tokens: a second Q K^T sweep over their rows only, with
  // the row maxima and sums now known (no n x n matrix is kept).
  ColsumRows cs;
  if (!colsum_rows(a, cs)) return;
  for (std::int64_t j0 = 0; j0 < cs.sweep_end; j0 += B) {
    const int nk = static_cast<int>(cs.sweep_end - j0 < B ? cs.sweep_end - j0 : B);
    pack_kt(rows, a.dk, kd, j0, nk, sc.kt);
    qk_block(sc.q, kd, sc.kt, cs.r0, cs.r1, sc.s);
    colsum_tile(a, sc, cs.r0, cs.r1, j0, nk);
  }
}

/// One block of prefill with this ISA's scratch carved from `scratch` (the dispatch entry point of prefill.hpp; not
/// inlined, so that compiled kernels can make it an extern instantiation).
template <class T>
KVCACHE_NOINLINE void prefill_unit(const PrefillArgs& a, const TypedRows<T>& rows, float* scratch) noexcept {
  prefill_block(a, rows, prefill_scratch(scratch, a.dk, a.dv));
}

#ifdef KVCACHE_KERNEL_INSTANCE  // compiled kernels (core/macros.hpp)
KVCACHE_KERNEL_INSTANCE void prefill_unit<float>(const PrefillArgs&, const TypedRows<float>&, float*) noexcept;
KVCACHE_KERNEL_INSTANCE void prefill_unit<f16>(const PrefillArgs&, const TypedRows<f16>&, float*) noexcept;
KVCACHE_KERNEL_INSTANCE void prefill_unit<bf16>(const PrefillArgs&, const TypedRows<bf16>&, float*) noexcept;
KVCACHE_KERNEL_INSTANCE void prefill_unit<i8>(const PrefillArgs&, const TypedRows<i8>&, float*) noexcept;
#endif
