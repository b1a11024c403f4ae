// Decode attention against the Eigen reference (double precision), for every ISA this CPU has, every storage type,
// awkward lengths and group sizes, exported probabilities, splits and threads.
//
// Tolerances: outputs are convex combinations of V rows (|v| ~ 1), accumulated in fp32 over up to 4099 rows:
// max abs error 2e-5. Probabilities (summed over at most 8 heads, each <= 1): max abs error 2e-6. Both readings of
// a stored f16/bf16 row are exact, so the storage type does not loosen either bound; an i8 row's products are taken
// on its integers (exact in f32) and scaled once, and the reference reads the same dequantized values. The AMX tile
// path multiplies the same exact products (query and probabilities split into three bf16 parts that hold all their
// bits), so the bounds are the same.

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kvcache/testing/testing.hpp"
#include "test_util.hpp"

namespace {

using kvtest::expect_error_mentioning;

using kvcache::AttentionShape;
using kvcache::ConstTensorView;
using kvcache::DType;
using kvcache::LayerSlots;
using kvcache::TensorView;

struct DecodeCase {
  AttentionShape shape;
  std::int64_t length;
  DType dtype;
  int max_splits = 1;
  bool probabilities = true;
  bool per_query_head = false;  // export one row per query head (GqaReduce::kMax) instead of the group's sum
  bool group_max = true;        // with per_query_head: also ask for the group's maximum per slot
};

template <class Exec = kvcache::SerialExecutor>
void check_decode(const DecodeCase& c, const Exec& ex = Exec{}, LayerSlots* given = nullptr) {
  const int n_q = c.shape.n_q_heads, dk = c.shape.head_dim_k, dv = c.shape.dim_v(), n_kv = c.shape.n_kv_heads;
  const std::int64_t cap = std::max<std::int64_t>(c.length, 1) + 8;
  LayerSlots own(c.shape, cap, c.dtype);
  LayerSlots& kv = given != nullptr ? *given : own;
  if (given == nullptr && c.length > 0) kvtest::fill_random(kv, c.length, 11u + static_cast<std::uint32_t>(c.length));
  const auto q = kvtest::random_vector(static_cast<std::size_t>(n_q * dk), 99, 2.0f);
  std::vector<float> out(static_cast<std::size_t>(n_q * dv), 123.0f), ref(out.size());
  const std::int64_t stride = kv.capacity() + 3;
  const int rows = c.per_query_head ? n_q : n_kv, g = n_q / n_kv;
  std::vector<float> probs(static_cast<std::size_t>(rows * stride), 0.5f), ref_probs(probs);
  std::vector<float> maxima(static_cast<std::size_t>(n_kv * stride), -3.0f);  // per_query_head: the group's maximum

  kvcache::reference::decode_attention(kv, ConstTensorView<float, 2>(q.data(), n_q, dk),
                                       TensorView<float, 2>(ref.data(), n_q, dv), 0.0f, ref_probs.data(), stride,
                                       c.per_query_head);
  kvcache::DecodeWorkspace ws(c.shape, kv.capacity(), c.max_splits, c.probabilities);
  kvcache::DecodeOptions opt;
  opt.max_splits = c.max_splits;
  if (c.probabilities) {
    opt.probabilities = probs.data();
    opt.probabilities_stride = stride;
    opt.probabilities_per_query_head = c.per_query_head;
    if (c.per_query_head && c.group_max) opt.probabilities_max = maxima.data();
  }
  kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), n_q, dk), TensorView<float, 2>(out.data(), n_q, dv),
                            ws, opt, ex);
  const std::string what = "n_q " + std::to_string(n_q) + " n_kv " + std::to_string(n_kv) + " dk " +
                           std::to_string(dk) + " dv " + std::to_string(dv) + " len " + std::to_string(c.length) + " " +
                           std::string(kvcache::dtype_name(c.dtype)) + " splits " + std::to_string(c.max_splits) +
                           (c.per_query_head ? " per query head" : "");
  // int8 rows on VNNI round the query and the weights to 16 bits (kernels/vnni.hpp): int8's accuracy, not f32's.
  const bool vnni = c.dtype == DType::kI8 && g >= 2 && kvcache::vnni_active(kvcache::active_isa());
  EXPECT_LE(kvtest::max_abs_diff(out, ref), vnni ? 1e-3 : 2e-5) << what;
  if (c.probabilities) {
    // A sum over g heads of probabilities <= 1 each: the bound grows with the group beyond 8.
    EXPECT_LE(kvtest::max_abs_diff(probs, ref_probs), (vnni ? 2e-4 : 2e-6) * std::max(1, c.per_query_head ? 1 : g / 8))
        << what;
    // Entries past each head's length are untouched.
    for (int r = 0; r < rows; ++r)
      for (std::int64_t j = kv.length(c.per_query_head ? r / g : r); j < stride; ++j)
        ASSERT_EQ(probs[r * stride + j], 0.5f) << what;
    // The maximum over each group's rows, exactly as accumulated, and nothing past the head's length.
    if (c.per_query_head)
      for (int h = 0; h < n_kv; ++h)
        for (std::int64_t j = 0; j < stride; ++j) {
          float want = -3.0f;
          if (c.group_max && j < kv.length(h)) {
            want = probs[std::size_t(h * g) * stride + j];
            for (int i = 1; i < g; ++i) want = std::max(want, probs[std::size_t(h * g + i) * stride + j]);
          }
          ASSERT_EQ(maxima[h * stride + j], want) << what << " head " << h << " slot " << j;
        }
  }
}

class DecodeTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(DecodeTest, AwkwardLengthsAndGroupSizes) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int g : {1, 2, 3, 8})
      for (std::int64_t len : {1, 7, 15, 17, 1000, 4099}) check_decode({{2 * g, 2, 64, 64}, len, dt});
}

// Every block size of the decode kernels (groups 1 - 3 and 8 above; 9 = a block of 8 and one of 1), at lengths around
// the score pass's 2- and 3-row steps and the 64-row tiles, with the export summed and per query head.
TEST_P(DecodeTest, EveryHeadBlock) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int g : {4, 5, 6, 7, 9})
      for (std::int64_t len : {1, 2, 3, 5, 64, 67, 130}) {
        check_decode({{2 * g, 2, 72, 40}, len, dt});  // key and value rows with tails past the whole vectors
        if (len == 130) check_decode({{2 * g, 2, 72, 40}, len, dt, 1, true, /*per_query_head=*/true});
      }
}

TEST_P(DecodeTest, HeadDims) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int d : {64, 80, 96, 128, 256})
      for (std::int64_t len : {17, 300}) check_decode({{8, 2, d, d}, len, dt});
}

TEST_P(DecodeTest, DimsThatAreNotMultiplesOfTheVectorWidth) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8}) {
    check_decode({{3, 1, 72, 40}, 33, dt});
    check_decode({{4, 2, 5, 3}, 70, dt});
    check_decode({{2, 2, 1, 1}, 9, dt});
  }
}

TEST_P(DecodeTest, LargeGroupsInOneCall) {
  check_decode({{16, 1, 64, 64}, 130, DType::kF16});
  check_decode({{40, 2, 64, 64}, 130, DType::kF16});  // 20 per KV head: not a multiple of the head block of 8
  check_decode({{128, 1, 64, 64}, 70, DType::kBF16});
}

// Groups of 16 or more with bf16 keys and values: the shapes Isa::kAmx runs on the tile unit when a call (or split)
// has at least one tile of 64 rows (scores in whole 16-row blocks, P.V in whole 32-row chunks; the rows past them,
// and heads past the last block of 8, by FMAs). Every ISA runs them; on the others they are more large-group cases.
TEST_P(DecodeTest, TileShapes) {
  EXPECT_TRUE(kvcache::detail::decode_tiles_fit(16, 64, 64));
  EXPECT_FALSE(kvcache::detail::decode_tiles_fit(8, 64, 64));
  EXPECT_FALSE(kvcache::detail::decode_tiles_fit(16, 72, 72));
  EXPECT_FALSE(kvcache::detail::decode_tiles_fit(16, 64, 40));
  for (int g : {16, 20, 24})
    for (std::int64_t len : {1, 7, 17, 63, 64, 65, 80, 100, 1000, 4099})
      check_decode({{g, 1, 64, 64}, len, DType::kBF16});
  for (int d : {80, 96, 128, 256}) check_decode({{32, 2, d, d}, 300, DType::kBF16});  // 80: a half tile of columns
  check_decode({{16, 1, 72, 72}, 100, DType::kBF16});                                 // columns not in half tiles: FMAs
  check_decode({{32, 2, 128, 128}, 2000, DType::kBF16, 3}, kvtest::ThreadExecutor{2});
  check_decode({{16, 1, 64, 64}, 1000, DType::kBF16, 1, true, true});
  check_decode({{32, 2, 64, 64}, 777, DType::kBF16, 2, true, true});
  check_decode({{16, 1, 64, 64}, 300, DType::kBF16, 1, false});
}

// The latent layout (MLA): one KV head whose rows are [latent | RoPE key] and whose values are the latent.
TEST_P(DecodeTest, LatentLayout) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8}) {
    for (std::int64_t len : {1, 7, 17, 1000}) check_decode({{4, 1, 112, 96, true}, len, dt});  // tinylm-mla
    check_decode({{3, 1, 45, 37, true}, 65, dt});                                              // odd widths
  }
  check_decode({{128, 1, 576, 512, true}, 130, DType::kBF16, 2});  // DeepSeek-V2, split in two
  check_decode({{128, 1, 576, 512, true}, 1000, DType::kBF16, 3}, kvtest::ThreadExecutor{2});
  check_decode({{16, 1, 112, 96, true}, 300, DType::kBF16});  // latent rows on the tile path, a half tile of columns
  check_decode({{8, 1, 112, 96, true}, 300, DType::kF16, 2}, kvtest::ThreadExecutor{2});
}

TEST_P(DecodeTest, SplitsAndThreadsGiveTheSameAnswer) {
  for (int splits : {2, 3, 7}) check_decode({{8, 2, 64, 64}, 4099, DType::kF16, splits});
  check_decode({{8, 1, 128, 128}, 2000, DType::kBF16, 4}, kvtest::ThreadExecutor{2});
  check_decode({{8, 8, 64, 64}, 1000, DType::kF32, 2}, kvtest::ThreadExecutor{2});
  // One split per head, three threads over four heads: concurrent tasks share the reused probability buffers.
  check_decode({{12, 4, 64, 64}, 777, DType::kF16, 1}, kvtest::ThreadExecutor{3});
}

// GqaReduce::kMax: each query head's probabilities in a row of their own, on every path (one split, splits,
// threads, heads of different lengths).
TEST_P(DecodeTest, ProbabilitiesPerQueryHead) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int g : {1, 2, 3, 8})
      for (std::int64_t len : {1, 17, 1000}) check_decode({{2 * g, 2, 64, 64}, len, dt, 1, true, true});
  check_decode({{8, 2, 64, 64}, 4099, DType::kF16, 3, true, true});
  check_decode({{12, 4, 64, 64}, 777, DType::kF16, 1, true, true}, kvtest::ThreadExecutor{3});
  check_decode({{8, 2, 64, 64}, 2000, DType::kBF16, 2, true, true}, kvtest::ThreadExecutor{2});
  // Rows per query head without the maximum: the maxima buffer stays untouched.
  check_decode({{6, 2, 64, 64}, 1000, DType::kF16, 1, true, true, false});
  check_decode({{6, 2, 64, 64}, 1000, DType::kF16, 2, true, true, false});
}

TEST_P(DecodeTest, WithoutProbabilityExport) { check_decode({{8, 2, 64, 64}, 517, DType::kF16, 1, false}); }

TEST_P(DecodeTest, HeadsOfDifferentLengthsAndEmptyHeads) {
  AttentionShape shape{6, 3, 64, 64};
  LayerSlots kv(shape, 600, DType::kF16);
  kvtest::fill_random(kv, 600, 4);
  std::vector<std::int32_t> drop(450);
  for (int i = 0; i < 450; ++i) drop[i] = 2 * i % 600 + (2 * i >= 600 ? 1 : 0);
  kv.remove(1, drop);
  kv.clear(2);
  ASSERT_EQ(kv.length(1), 150);
  check_decode({shape, 600, DType::kF16, 3}, kvcache::SerialExecutor{}, &kv);
  // An empty head gives a zero output.
  const auto q = kvtest::random_vector(6 * 64, 1);
  std::vector<float> out(6 * 64, 7.0f);
  kvcache::DecodeWorkspace ws(shape, 600);
  kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 6, 64), TensorView<float, 2>(out.data(), 6, 64),
                            ws);
  for (int i = 4 * 64; i < 6 * 64; ++i) ASSERT_EQ(out[i], 0.0f);
}

TEST_P(DecodeTest, OneTokenIsItsOwnValue) {
  AttentionShape shape{3, 1, 16, 16};
  LayerSlots kv(shape, 4, DType::kF32);
  kvtest::fill_random(kv, 1, 8);
  const auto q = kvtest::random_vector(3 * 16, 2);
  std::vector<float> out(3 * 16);
  kvcache::DecodeWorkspace ws(shape, 4);
  kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 3, 16), TensorView<float, 2>(out.data(), 3, 16),
                            ws);
  for (int h = 0; h < 3; ++h)
    for (int c = 0; c < 16; ++c) ASSERT_EQ(out[h * 16 + c], kv.v<float>(0)(0, c));
}

// DecodeOptions::head_done: called once per KV head, after that head's probabilities are in the accumulator, for one
// split per head and for several (then from the merge); a callback that drops rows of its own head (as KVCache's
// eviction does) changes neither the output nor the other heads' probabilities.
TEST_P(DecodeTest, HeadDoneComesOncePerHeadAfterItsProbabilities) {
  const AttentionShape shape{8, 4, 64, 64};
  const std::int64_t len = 1100, stride = len + 8;
  for (int splits : {1, 3}) {
    LayerSlots kv(shape, len + 8, DType::kF16), twin(shape, len + 8, DType::kF16);
    kvtest::fill_random(kv, len, 5);
    kvtest::fill_random(twin, len, 5);
    const auto q = kvtest::random_vector(std::size_t(8 * 64), 6, 2.0f);
    std::vector<float> out(8 * 64), want(out.size()), probs(std::size_t(4 * stride)), want_probs(probs.size());
    kvcache::DecodeWorkspace ws(shape, len + 8, splits, true);
    kvcache::DecodeOptions opt;
    opt.max_splits = splits;
    opt.probabilities = want_probs.data();
    opt.probabilities_stride = stride;
    kvcache::decode_attention(twin, ConstTensorView<float, 2>(q.data(), 8, 64),
                              TensorView<float, 2>(want.data(), 8, 64), ws, opt, kvtest::ThreadExecutor{4});
    struct Seen {
      LayerSlots* kv;
      const float* probs;
      std::int64_t stride;
      std::atomic<int> calls[4] = {};
      std::atomic<bool> had_probabilities[4] = {};
    } seen{&kv, probs.data(), stride};
    opt.probabilities = probs.data();
    opt.head_done_context = &seen;
    opt.head_done = [](void* c, int h) noexcept {
      auto* s = static_cast<Seen*>(c);
      s->calls[h]++;
      double sum = 0;  // the group's probabilities of head h sum to its 2 query heads
      for (std::int64_t j = 0; j < s->kv->length(h); ++j) sum += s->probs[std::size_t(h * s->stride + j)];
      s->had_probabilities[h] = std::abs(sum - 2.0) < 1e-4;
      const std::int32_t drop[] = {0, 5, 17};
      s->kv->remove(h, drop);
    };
    kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 8, 64), TensorView<float, 2>(out.data(), 8, 64),
                              ws, opt, kvtest::ThreadExecutor{4});
    for (int h = 0; h < 4; ++h) {
      EXPECT_EQ(seen.calls[h], 1) << "head " << h << " splits " << splits;
      EXPECT_TRUE(seen.had_probabilities[h]) << "head " << h << " splits " << splits;
      EXPECT_EQ(kv.length(h), len - 3);
    }
    EXPECT_EQ(out, want) << "splits " << splits;
    EXPECT_EQ(probs, want_probs) << "splits " << splits;
  }
}

// decode_two_pass (groups of 4 to 16, one split, export on) against the one-pass kernel followed by the separate
// export pass: output, statistics, accumulator (and per-query-head rows with their maximum) bit for bit, as
// docs/kernels.md states. The per-row probabilities and tile maxima of both are compared too.
template <class T>
void check_two_pass(kvcache::Isa isa, DType dt, int g, int dk, int dv, std::int64_t len, bool per_query_head) {
  const AttentionShape shape{g, 1, dk, dv};
  const std::int64_t cap = len + 5, tiles = (cap + kvcache::detail::kDecodeTile - 1) / kvcache::detail::kDecodeTile;
  LayerSlots kv(shape, cap, dt);
  kvtest::fill_random(kv, len, 5u + static_cast<std::uint32_t>(len));
  const int ldq = (dk + 15) / 16 * 16;
  kvcache::AlignedBuffer qb(sizeof(float) * std::size_t(ldq * g));
  const auto qr = kvtest::random_vector(static_cast<std::size_t>(g * dk), 7, 0.5f);
  for (int i = 0; i < g; ++i)
    for (int c = 0; c < dk; ++c) qb.as<float>()[i * ldq + c] = qr[std::size_t(i * dk + c)];
  const std::size_t scratch = kvcache::detail::decode_scratch_floats(g, dk, dv);
  struct Run {
    kvcache::AlignedBuffer s;
    std::vector<float> o, m, l, probs, tile_max, acc, acc_max;
  };
  const int rows = per_query_head ? g : 1;
  auto run = [&](bool fused) {
    Run r{kvcache::AlignedBuffer(sizeof(float) * scratch),
          std::vector<float>(std::size_t(g * dv)),
          std::vector<float>(std::size_t(g)),
          std::vector<float>(std::size_t(g)),
          std::vector<float>(std::size_t(g * cap), -1.0f),
          std::vector<float>(std::size_t(g * tiles), -1.0f),
          kvtest::random_vector(static_cast<std::size_t>(rows * cap), 3, 0.5f),
          std::vector<float>(std::size_t(cap), -2.0f)};
    const std::int64_t acc_ld = per_query_head ? cap : 0;
    float* acc_max = per_query_head ? r.acc_max.data() : nullptr;
    const kvcache::TypedRows<T> head(kv.rows(0));
    kvcache::detail::decode_head_range(isa, qb.as<float>(), ldq, g, dk, dv, kv.v_stride(), head, 0, len, r.o.data(),
                                       r.m.data(), r.l.data(), r.probs.data(), cap, r.tile_max.data(), tiles,
                                       r.s.template as<float>(), fused ? r.acc.data() : nullptr, acc_ld,
                                       fused ? acc_max : nullptr);
    if (!fused)
      kvcache::detail::decode_probabilities(isa, r.probs.data(), g, cap, len, r.tile_max.data(), tiles, r.m.data(),
                                            r.l.data(), r.acc.data(), acc_ld, acc_max);
    return r;
  };
  const Run one = run(false), two = run(true);
  const std::string what = std::string(kvcache::dtype_name(dt)) + " g " + std::to_string(g) + " dk " +
                           std::to_string(dk) + " dv " + std::to_string(dv) + " len " + std::to_string(len) +
                           (per_query_head ? " per query head" : "");
  EXPECT_EQ(two.o, one.o) << what;
  EXPECT_EQ(two.m, one.m) << what;
  EXPECT_EQ(two.l, one.l) << what;
  EXPECT_EQ(two.probs, one.probs) << what;
  EXPECT_EQ(two.tile_max, one.tile_max) << what;
  EXPECT_EQ(two.acc, one.acc) << what;
  EXPECT_EQ(two.acc_max, one.acc_max) << what;
}

TEST_P(DecodeTest, TwoPassExportIsBitForBitTheOnePassKernel) {
  const kvcache::Isa isa = GetParam();
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int g : {3, 4, 5, 8, 16})  // 3: the one-pass kernel on both sides
      for (std::int64_t len : {1, 63, 64, 65, 1000, 4099})
        for (bool per_query_head : {false, true})
          for (auto [dk, dv] : {std::pair{64, 64}, std::pair{72, 40}}) {
            switch (dt) {
              case DType::kF32:
                check_two_pass<float>(isa, dt, g, dk, dv, len, per_query_head);
                break;
              case DType::kF16:
                check_two_pass<kvcache::f16>(isa, dt, g, dk, dv, len, per_query_head);
                break;
              case DType::kBF16:
                check_two_pass<kvcache::bf16>(isa, dt, g, dk, dv, len, per_query_head);
                break;
              case DType::kI8:
                check_two_pass<kvcache::i8>(isa, dt, g, dk, dv, len, per_query_head);
                break;
            }
          }
}

// int8 rows on AVX-512 with the VNNI path turned off: the FMA kernel's i8 loads at the widest op set, at f32's bounds.
TEST_P(DecodeTest, Int8WithoutVnni) {
  kvcache::set_vnni_for_testing(false);
  for (auto [nq, nkv] : {std::pair{4, 2}, std::pair{6, 2}, std::pair{16, 2}, std::pair{24, 3}})
    for (std::int64_t len : {1, 17, 1000}) check_decode({{nq, nkv, 72, 40}, len, DType::kI8});
  check_decode({{8, 2, 64, 64}, 4099, DType::kI8, 3, true, true});
  kvcache::set_vnni_for_testing(std::nullopt);
}

// Paged heads (blocks of 16 to 256 rows from a BlockPool): the kernels walk each tile block by block, so every block
// size must give the dense answer, at lengths that end inside a block, on a block boundary and across many blocks;
// with splits (whose boundaries are whole tiles), the export, int8 scales, the latent layout, and after removals
// that returned blocks to the pool.
TEST_P(DecodeTest, PagedHeadsMatchTheReference) {
  for (int rows : {16, 32, 64, 256})
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
      for (int g : {1, 2, 3, 8})
        for (std::int64_t len : {1, 15, 16, 17, 100, 1000}) {
          const AttentionShape shape{2 * g, 2, 72, 40};
          kvcache::BlockPool pool(shape, dt, rows, 2 * (len / rows + 2));
          LayerSlots kv(shape, len + 8, dt, pool);
          kvtest::fill_random(kv, len, 5u + std::uint32_t(len));
          check_decode({shape, len, dt}, kvcache::SerialExecutor{}, &kv);
          if (len == 1000) {
            check_decode({shape, len, dt, 3}, kvcache::SerialExecutor{}, &kv);
            check_decode({shape, len, dt, 1, true, /*per_query_head=*/true}, kvcache::SerialExecutor{}, &kv);
            // Drop 600 rows of head 0: its blocks past 400 rows go back in the same call.
            std::vector<std::int32_t> drop;
            for (std::int32_t j = 0; j < 1000; j += 5) drop.push_back(j);
            for (std::int32_t j = 1; j < 1000 && drop.size() < 600; j += 5) drop.push_back(j);
            for (std::int32_t j = 2; j < 1000 && drop.size() < 600; j += 5) drop.push_back(j);
            const std::int64_t free_before = pool.blocks_free();
            kv.remove(0, drop);
            EXPECT_EQ(kv.block_ids(0).size(), std::size_t((400 + rows - 1) / rows));
            EXPECT_EQ(pool.blocks_free() - free_before, (1000 + rows - 1) / rows - (400 + rows - 1) / rows);
            check_decode({shape, len, dt}, kvcache::SerialExecutor{}, &kv);
          }
        }
  for (int rows : {16, 64}) {
    const AttentionShape latent{8, 1, 80, 64, /*values_in_keys=*/true};
    kvcache::BlockPool pool(latent, DType::kBF16, rows, 200);
    LayerSlots kv(latent, 1200, DType::kBF16, pool);
    kvtest::fill_random(kv, 1100, 8u);
    check_decode({latent, 1100, DType::kBF16}, kvcache::SerialExecutor{}, &kv);
  }
}

INSTANTIATE_TEST_SUITE_P(Isa, DecodeTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

TEST(DecodeErrorsTest, BadShapesAreClearErrors) {
  AttentionShape shape{4, 2, 16, 16};
  LayerSlots kv(shape, 8, DType::kF32);
  kvtest::fill_random(kv, 3, 1);
  kvcache::DecodeWorkspace ws(shape, 8);
  std::vector<float> q(5 * 17), out(5 * 17), probs(100);
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 3, 16),
                                  TensorView<float, 2>(out.data(), 3, 16), ws);
      },
      "3 query heads are not a multiple of the 2 KV heads");
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 4, 17),
                                  TensorView<float, 2>(out.data(), 4, 16), ws);
      },
      "queries have width 17");
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 4, 16),
                                  TensorView<float, 2>(out.data(), 4, 15), ws);
      },
      "output is [4, 15]");
  kvcache::DecodeOptions opt;
  opt.probabilities = probs.data();
  opt.probabilities_stride = 8;
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 4, 16),
                                  TensorView<float, 2>(out.data(), 4, 16), ws, opt);
      },
      "workspace was made without");
  kvcache::DecodeWorkspace other({8, 2, 16, 16}, 8);
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 4, 16),
                                  TensorView<float, 2>(out.data(), 4, 16), other);
      },
      "group 4");
  opt.probabilities_stride = 2;
  kvcache::DecodeWorkspace wsp(shape, 8, 1, true);
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 4, 16),
                                  TensorView<float, 2>(out.data(), 4, 16), wsp, opt);
      },
      "probabilities_stride 2");
  kvcache::DecodeOptions max_alone;
  max_alone.probabilities_max = probs.data();
  expect_error_mentioning(
      [&] {
        kvcache::decode_attention(kv, ConstTensorView<float, 2>(q.data(), 4, 16),
                                  TensorView<float, 2>(out.data(), 4, 16), ws, max_alone);
      },
      "probabilities_per_query_head");
}

}  // namespace
