// Dense slot storage: append, compaction on remove, per-head lengths, byte accounting, errors.

#include "kvcache/storage/slot_storage.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using kvtest::expect_error_mentioning;

using kvcache::ConstTensorView;
using kvcache::DType;
using kvcache::LayerSlots;
using kvcache::Position;

// Rows whose every element encodes their position, so any row can be checked against the position it carries.
void append_tagged(LayerSlots& kv, int h, std::int32_t first, std::int64_t n) {
  const int dk = kv.head_dim_k(), dv = kv.head_dim_v();
  std::vector<float> k(static_cast<std::size_t>(n * dk)), v(static_cast<std::size_t>(n * dv));
  std::vector<Position> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    pos[i] = first + static_cast<std::int32_t>(i);
    for (int c = 0; c < dk; ++c) k[i * dk + c] = static_cast<float>(pos[i]) + 0.25f * static_cast<float>(c % 4);
    for (int c = 0; c < dv; ++c) v[i * dv + c] = -static_cast<float>(pos[i]);
  }
  kv.append(h, ConstTensorView<float, 2>(k.data(), n, dk), ConstTensorView<float, 2>(v.data(), n, dv), pos);
}

void expect_rows_match_positions(const LayerSlots& kv, int h) {
  auto k = kv.k<float>(h);
  auto v = kv.v<float>(h);
  auto pos = kv.positions(h);
  for (std::int64_t i = 0; i < kv.length(h); ++i) {
    for (int c = 0; c < kv.head_dim_k(); ++c)
      ASSERT_EQ(k(i, c), static_cast<float>(pos[i]) + 0.25f * static_cast<float>(c % 4)) << "slot " << i;
    for (int c = 0; c < kv.head_dim_v(); ++c) ASSERT_EQ(v(i, c), -static_cast<float>(pos[i])) << "slot " << i;
  }
}

TEST(SlotStorageTest, AppendThenViewWithoutCopy) {
  LayerSlots kv({4, 2, 8, 6}, 32, DType::kF32);
  append_tagged(kv, 0, 0, 5);
  append_tagged(kv, 1, 100, 3);
  EXPECT_EQ(kv.length(0), 5);
  EXPECT_EQ(kv.length(1), 3);
  EXPECT_EQ(kv.max_length(), 5);
  EXPECT_EQ(kv.k<float>(0).data(), kv.k_rows<float>(0));  // a view, not a copy
  EXPECT_EQ(kv.k<float>(1).dimension(0), 3);
  EXPECT_EQ(kv.v<float>(1).dimension(1), 6);
  expect_rows_match_positions(kv, 0);
  expect_rows_match_positions(kv, 1);
}

TEST(SlotStorageTest, AppendConvertsToStorageType) {
  for (DType dt : {DType::kF16, DType::kBF16}) {
    LayerSlots kv({1, 1, 5, 5}, 4, dt);
    std::vector<float> k = {1.0f, 1.00048828125f, 3.14159f, -2.5e-8f, 70000.0f};
    std::vector<Position> pos = {7};
    kv.append(0, ConstTensorView<float, 2>(k.data(), 1, 5), ConstTensorView<float, 2>(k.data(), 1, 5), pos);
    for (int c = 0; c < 5; ++c) {
      const float expect = dt == DType::kF16 ? kvcache::to_f32(kvcache::from_f32<kvcache::f16>(k[c]))
                                             : kvcache::to_f32(kvcache::from_f32<kvcache::bf16>(k[c]));
      const float got = dt == DType::kF16 ? kvcache::to_f32(kv.k<kvcache::f16>(0)(0, c))
                                          : kvcache::to_f32(kv.k<kvcache::bf16>(0)(0, c));
      EXPECT_EQ(got, expect) << c;
    }
  }
}

// i8 rows are quantized on append with one scale per row (keys and values apart); the scales move with their rows on
// removal and are rewritten by overwrite; bytes count one byte per element plus the two scales.
TEST(SlotStorageTest, I8RowsCarryTheirScales) {
  const int dk = 24, dv = 10;
  LayerSlots kv({2, 1, dk, dv}, 64, DType::kI8);
  EXPECT_EQ(kv.row_bytes(), std::size_t(dk + dv + 8));
  append_tagged(kv, 0, 100, 40);
  ASSERT_NE(kv.k_scales(0), nullptr);
  ASSERT_NE(kv.v_scales(0), nullptr);
  auto check = [&] {
    const kvcache::i8* k = kv.k_rows<kvcache::i8>(0);
    const kvcache::i8* v = kv.v_rows<kvcache::i8>(0);
    for (std::int64_t i = 0; i < kv.length(0); ++i) {
      const float p = static_cast<float>(kv.positions(0)[i]);
      const float ks = kv.k_scales(0)[i], vs = kv.v_scales(0)[i];
      EXPECT_FLOAT_EQ(ks, (p + 0.75f) / 127.0f);
      EXPECT_FLOAT_EQ(vs, p / 127.0f);
      for (int c = 0; c < dk; ++c)
        ASSERT_LE(std::fabs(k[i * dk + c] * ks - (p + 0.25f * static_cast<float>(c % 4))), 0.5f * ks * 1.0001f);
      for (int c = 0; c < dv; ++c) ASSERT_EQ(v[i * dv + c], -127) << "slot " << i;
    }
  };
  check();
  kv.remove(0, std::vector<std::int32_t>{0, 5, 17, 39});
  EXPECT_EQ(kv.length(0), 36);
  check();
  std::vector<float> k(dk, 3.0f), v(dv, -6.0f);
  kv.overwrite(0, 2, k.data(), v.data(), 7);
  EXPECT_FLOAT_EQ(kv.k_scales(0)[2], 3.0f / 127.0f);
  EXPECT_FLOAT_EQ(kv.v_scales(0)[2], 6.0f / 127.0f);
  EXPECT_EQ(kv.k_rows<kvcache::i8>(0)[2 * dk], 127);
  EXPECT_EQ(kv.v_rows<kvcache::i8>(0)[2 * dv], -127);
  // The latent layout: one scale per row, shared by the value part.
  LayerSlots latent({4, 1, 16, 8, true}, 8, DType::kI8);
  EXPECT_EQ(latent.row_bytes(), std::size_t(16 + 4));
  std::vector<float> lk(3 * 16, 2.0f);
  const Position lp[3] = {0, 1, 2};
  latent.append(0, ConstTensorView<float, 2>(lk.data(), 3, 16), ConstTensorView<float, 2>(nullptr, 0, 0), lp);
  EXPECT_FLOAT_EQ(latent.k_scales(0)[2], 2.0f / 127.0f);
  EXPECT_EQ(latent.v_scales(0), latent.k_scales(0));
  LayerSlots f(kvcache::AttentionShape{2, 1, dk, dv}, 8, DType::kF16);
  EXPECT_EQ(f.k_scales(0), nullptr);
  expect_error_mentioning([&] { (void)kv.k_rows<float>(0); }, "stored as i8");
}

TEST(SlotStorageTest, RemoveCompactsAndKeepsRowsWithTheirPositions) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    LayerSlots kv({2, 1, 16, 16}, 128, DType::kF32);
    const int n = 1 + static_cast<int>(rng() % 128);
    append_tagged(kv, 0, 1000, n);
    std::vector<std::int32_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    const int r = static_cast<int>(rng() % (n + 1));
    std::vector<std::int32_t> gone(all.begin(), all.begin() + r);
    std::set<Position> expect;
    for (int i = 0; i < n; ++i)
      if (std::find(gone.begin(), gone.end(), i) == gone.end()) expect.insert(1000 + i);
    std::vector<Position> before(kv.positions(0).begin(), kv.positions(0).end());

    kv.remove(0, gone);

    ASSERT_EQ(kv.length(0), n - r);
    std::set<Position> got(kv.positions(0).begin(), kv.positions(0).end());
    ASSERT_EQ(got, expect);
    expect_rows_match_positions(kv, 0);
    // Each survivor moved at most once, and only into a hole: at most r slots changed, and every slot that did
    // change was one of the removed ones.
    int moved = 0;
    for (std::int64_t i = 0; i < kv.length(0); ++i) {
      if (kv.positions(0)[i] != before[i]) {
        ++moved;
        ASSERT_NE(std::find(gone.begin(), gone.end(), static_cast<std::int32_t>(i)), gone.end());
      }
    }
    ASSERT_LE(moved, r);
  }
}

TEST(SlotStorageTest, PerHeadLengthsAndExactBytes) {
  kvcache::AttentionShape shape{8, 4, 64, 32};
  LayerSlots kv(shape, 100, DType::kBF16);
  for (int h = 0; h < 4; ++h) append_tagged(kv, h, 0, 100);
  const std::size_t row = (64 + 32) * 2;
  EXPECT_EQ(kv.row_bytes(), row);
  EXPECT_EQ(kv.kv_bytes(), 4 * 100 * row);
  std::vector<std::int32_t> drop(60);
  std::iota(drop.begin(), drop.end(), 10);
  kv.remove(2, drop);
  kv.remove(3, std::vector<std::int32_t>{0, 99});
  EXPECT_EQ(kv.length(0), 100);
  EXPECT_EQ(kv.length(2), 40);
  EXPECT_EQ(kv.length(3), 98);
  EXPECT_EQ(kv.kv_bytes(2), 40 * row);
  EXPECT_EQ(kv.kv_bytes(), (100 + 100 + 40 + 98) * row);
  EXPECT_EQ(kv.position_bytes(), (100 + 100 + 40 + 98) * sizeof(Position));
  // K 100 x 64 bf16 and V 100 x 32 bf16 per head (whole cache lines), positions 400 bytes padded to 448, a removal
  // mark per slot, a length per head; the block bookkeeping per head (its one block's free-list entry and reference
  // count, its table entry: id, address, count).
  EXPECT_EQ(kv.bytes_reserved(), 4 * (12800 + 6400 + 448 + 100 + sizeof(std::int64_t) + 4 + 4 + 4 + sizeof(void*) + 4));
  kv.clear(2);
  EXPECT_EQ(kv.kv_bytes(2), 0u);
  kv.clear();
  EXPECT_EQ(kv.kv_bytes(), 0u);
}

TEST(SlotStorageTest, BadInputIsAClearError) {
  LayerSlots kv({4, 2, 8, 8}, 4, DType::kF32);
  append_tagged(kv, 0, 0, 3);
  expect_error_mentioning([&] { append_tagged(kv, 0, 3, 2); }, "exceed the capacity of 4");
  EXPECT_EQ(kv.length(0), 3);  // the failed append changed nothing
  expect_error_mentioning([&] { kv.remove(0, std::vector<std::int32_t>{3}); }, "slot 3 does not exist");
  expect_error_mentioning([&] { kv.remove(0, std::vector<std::int32_t>{-1}); }, "slot -1 does not exist");
  expect_error_mentioning([&] { kv.remove(0, std::vector<std::int32_t>{1, 1}); }, "listed twice");
  EXPECT_EQ(kv.length(0), 3);  // failed removes changed nothing ...
  kv.remove(0, std::vector<std::int32_t>{1});
  EXPECT_EQ(kv.length(0), 2);  // ... and left no stale marks behind
  expect_error_mentioning([&] { append_tagged(kv, 2, 0, 1); }, "KV head 2 does not exist");
  std::vector<float> k(2 * 7);
  std::vector<Position> pos(2);
  expect_error_mentioning(
      [&] { kv.append(1, ConstTensorView<float, 2>(k.data(), 2, 7), ConstTensorView<float, 2>(k.data(), 2, 7), pos); },
      "keys have width 7");
  expect_error_mentioning([&] { (void)kv.k<kvcache::f16>(0); }, "stored as f32");
  expect_error_mentioning([] { LayerSlots bad({6, 4, 8, 8}, 4, DType::kF32); }, "does not divide");
  expect_error_mentioning([] { LayerSlots bad({4, 0, 8, 8}, 4, DType::kF32); }, "n_kv_heads must be positive");
  expect_error_mentioning([] { LayerSlots bad({4, 2, 8, 8}, 0, DType::kF32); }, "capacity");
}

TEST(SlotStorageTest, WholeCacheStorage) {
  kvcache::CacheConfig cfg{3, {4, 2, 16, 16}, 10, DType::kF16};
  kvcache::SlotStorage s(cfg);
  EXPECT_EQ(s.n_layers(), 3);
  kvtest::fill_random(s.layer(1), 4, 1);
  EXPECT_EQ(s.kv_bytes(), 2 * 4 * 32 * 2u);
  EXPECT_THROW((void)s.layer(3), kvcache::Error);
  EXPECT_THROW(kvcache::SlotStorage({0, {4, 2, 16, 16}, 10, DType::kF16}), kvcache::Error);
}

}  // namespace
