// BlockPool and paged LayerSlots: blocks taken as heads grow and returned as they shrink, in the same call; the
// engine's own memory; copy-on-write sharing between forks; all-or-nothing errors; the pool's free count always equal
// to a brute-force count of the blocks some head holds.

#include "kvcache/storage/block_pool.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>
#include <thread>
#include <vector>

#include "kvcache/storage/slot_storage.hpp"
#include "test_util.hpp"

namespace {

using kvtest::expect_error_mentioning;

using kvcache::AttentionShape;
using kvcache::BlockPool;
using kvcache::ConstTensorView;
using kvcache::DType;
using kvcache::LayerSlots;
using kvcache::Position;

const AttentionShape kShape{4, 2, 24, 8};

// n rows at positions first.. in head h, every element encoding its position.
void append_tagged(LayerSlots& kv, int h, std::int32_t first, std::int64_t n) {
  const int dk = kv.head_dim_k(), dv = kv.head_dim_v();
  std::vector<float> k(std::size_t(n * dk)), v(std::size_t(n * dv));
  std::vector<Position> pos(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    pos[i] = first + std::int32_t(i);
    for (int c = 0; c < dk; ++c) k[i * dk + c] = float(pos[i]) + 0.25f * float(c % 4);
    for (int c = 0; c < dv; ++c) v[i * dv + c] = -float(pos[i]);
  }
  kv.append(h, ConstTensorView<float, 2>(k.data(), n, dk), ConstTensorView<float, 2>(v.data(), n, dv), pos);
}

// Every live row of head h holds what append_tagged wrote for its position (f32 and f16 hold these exactly).
template <class T>
void expect_rows_match_positions(const LayerSlots& kv, int h) {
  const auto pos = kv.positions(h);
  for (std::int64_t j = 0; j < kv.length(h); ++j) {
    const T* k = kv.k_row<T>(h, j);
    const T* v = kv.v_row<T>(h, j);
    for (int c = 0; c < kv.head_dim_k(); ++c)
      ASSERT_EQ(kvcache::to_f32(k[c]), float(pos[j]) + 0.25f * float(c % 4)) << "head " << h << " slot " << j;
    for (int c = 0; c < kv.head_dim_v(); ++c) ASSERT_EQ(kvcache::to_f32(v[c]), -float(pos[j]));
  }
}

// The pool's free count is what a brute-force count of the distinct blocks the layers hold says, and each block's
// reference count is the number of heads that hold it.
void expect_accounting(const BlockPool& pool, const std::vector<const LayerSlots*>& layers) {
  std::vector<int> holders(std::size_t(pool.blocks_total()), 0);
  for (const LayerSlots* l : layers)
    for (int h = 0; h < l->n_kv_heads(); ++h) {
      EXPECT_EQ(std::int64_t(l->block_ids(h).size()), (l->length(h) + pool.block_rows() - 1) / pool.block_rows());
      for (std::int32_t b : l->block_ids(h)) ++holders[std::size_t(b)];
    }
  std::int64_t live = 0;
  for (std::int32_t b = 0; b < pool.blocks_total(); ++b) {
    EXPECT_EQ(pool.refs(b), holders[std::size_t(b)]) << "block " << b;
    live += holders[std::size_t(b)] > 0;
  }
  EXPECT_EQ(pool.blocks_free(), pool.blocks_total() - live);
}

TEST(BlockPoolTest, BlockSizeAndMemoryAreChecked) {
  for (int rows : {0, 8, 24, 100, 512})
    expect_error_mentioning([&] { BlockPool(kShape, DType::kF16, rows, 4); }, "power of two in [16, 256]");
  expect_error_mentioning([&] { BlockPool(kShape, DType::kF16, 16, 0); }, "blocks");
  std::vector<std::byte> small(100);
  expect_error_mentioning([&] { BlockPool(kShape, DType::kF16, 16, small.data(), small.size()); }, "holds no block");
}

TEST(BlockPoolTest, LayoutAndEngineMemory) {
  // f16, 16 rows: keys 16 x 24 x 2 = 768 bytes, values 16 x 8 x 2 = 256; i8 adds two 64-byte scale lines.
  EXPECT_EQ(BlockPool::block_bytes(kShape, DType::kF16, 16), 768u + 256u);
  EXPECT_EQ(BlockPool::block_bytes(kShape, DType::kI8, 16), 384u + 128u + 64u + 64u);
  const std::size_t bb = BlockPool::block_bytes(kShape, DType::kF16, 16);
  std::vector<std::byte> mem(10 * bb + 100);
  BlockPool pool(kShape, DType::kF16, 16, mem.data() + 1, mem.size() - 1);  // a start off the cache line
  EXPECT_EQ(pool.blocks_total(), 10);
  EXPECT_EQ(pool.blocks_free(), 10);
  for (std::int32_t b = 0; b < 10; ++b) {
    EXPECT_GE(pool.block(b), mem.data() + 1);
    EXPECT_LE(pool.block(b) + bb, mem.data() + mem.size());
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(pool.block(b)) % 64, 0u);
  }
  LayerSlots kv(kShape, 200, DType::kF16, pool);
  append_tagged(kv, 0, 0, 33);
  EXPECT_EQ(pool.blocks_free(), 7);
  expect_rows_match_positions<kvcache::f16>(kv, 0);
  // The peak of blocks in use follows acquisitions, not releases, until reset_peak().
  EXPECT_EQ(pool.blocks_used_peak(), 3);
  std::vector<std::int32_t> more(4);
  pool.acquire(more);
  EXPECT_EQ(pool.blocks_used_peak(), 7);
  pool.release(more);
  EXPECT_EQ(pool.blocks_used_peak(), 7);
  pool.reset_peak();
  EXPECT_EQ(pool.blocks_used_peak(), 3);
}

TEST(BlockPoolTest, HeadsGrowAndShrinkInBlocks) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kI8}) {
    BlockPool pool(kShape, dt, 16, 64);
    LayerSlots kv(kShape, 500, dt, pool);
    EXPECT_TRUE(kv.paged());
    EXPECT_EQ(pool.blocks_free(), 64);
    append_tagged(kv, 0, 0, 1);
    EXPECT_EQ(pool.blocks_free(), 63);
    append_tagged(kv, 0, 1, 15);  // fills the block
    EXPECT_EQ(pool.blocks_free(), 63);
    append_tagged(kv, 0, 16, 1);
    EXPECT_EQ(pool.blocks_free(), 62);
    append_tagged(kv, 1, 0, 100);  // 7 blocks
    EXPECT_EQ(pool.blocks_free(), 55);
    expect_accounting(pool, {&kv});
    if (dt == DType::kF32) expect_rows_match_positions<float>(kv, 0);
    if (dt == DType::kF16) expect_rows_match_positions<kvcache::f16>(kv, 0);
    // Removing 60 of head 1's 100 rows leaves 40: 3 blocks; 4 come back in the same call.
    std::vector<std::int32_t> drop;
    for (std::int32_t j = 0; j < 100; j += 5) drop.push_back(j);
    for (std::int32_t j = 1; j < 100 && drop.size() < 60; j += 2) drop.push_back(j);
    drop.erase(std::unique(drop.begin(), drop.end()), drop.end());
    std::set<std::int32_t> uniq(drop.begin(), drop.end());
    drop.assign(uniq.begin(), uniq.end());
    const std::int64_t left = 100 - std::int64_t(drop.size());
    kv.remove(1, drop);
    EXPECT_EQ(kv.length(1), left);
    EXPECT_EQ(pool.blocks_free(), 64 - 2 - (left + 15) / 16);
    expect_accounting(pool, {&kv});
    if (dt == DType::kF32) expect_rows_match_positions<float>(kv, 1);
    if (dt == DType::kF16) expect_rows_match_positions<kvcache::f16>(kv, 1);
    if (dt == DType::kI8) {
      // The scales moved with their rows: each row dequantizes to its position's values (within int8's step).
      const auto pos = kv.positions(1);
      for (std::int64_t j = 0; j < kv.length(1); ++j) {
        const float want = float(pos[j]) + 0.75f, got = float(kv.k_row<kvcache::i8>(1, j)[3]) * kv.k_scale(1, j);
        EXPECT_NEAR(got, want, want / 127.0f) << j;
      }
    }
    kv.clear(0);
    EXPECT_EQ(pool.blocks_free(), 64 - (left + 15) / 16);
    kv.clear();
    EXPECT_EQ(pool.blocks_free(), 64);
  }
}

TEST(BlockPoolTest, ExhaustedPoolIsAnErrorThatChangesNothing) {
  BlockPool pool(kShape, DType::kF16, 32, 5);
  LayerSlots kv(kShape, 1000, DType::kF16, pool);
  append_tagged(kv, 0, 0, 100);  // 4 blocks
  expect_error_mentioning([&] { append_tagged(kv, 1, 0, 40); }, "block pool exhausted: 2 more blocks of 32 rows");
  EXPECT_EQ(kv.length(1), 0);
  EXPECT_EQ(pool.blocks_free(), 1);
  // The whole-layer append checks every head first.
  std::vector<float> k(2 * 40 * 24), v(2 * 40 * 8);
  std::vector<Position> pos(40);
  std::iota(pos.begin(), pos.end(), 100);
  const ConstTensorView<float, 3> kt(k.data(), 2, 40, 24), vt(v.data(), 2, 40, 8);
  expect_error_mentioning([&] { kv.check_append(kt, vt, pos); }, "of 5 free");
  expect_error_mentioning([&] { kv.append(kt, vt, pos); }, "block pool exhausted");
  EXPECT_EQ(kv.length(0), 100);
  EXPECT_EQ(kv.length(1), 0);
  EXPECT_EQ(pool.blocks_free(), 1);
  expect_accounting(pool, {&kv});
}

TEST(BlockPoolTest, PoolMustMatchTheCache) {
  BlockPool pool(kShape, DType::kF16, 16, 4);
  expect_error_mentioning([&] { LayerSlots(kShape, 100, DType::kBF16, pool); }, "the block pool holds f16 rows");
  expect_error_mentioning([&] { LayerSlots(AttentionShape{4, 2, 32, 8}, 100, DType::kF16, pool); }, "head_dim_k 24");
  expect_error_mentioning([&] { LayerSlots(AttentionShape{4, 2, 24, 8, true}, 100, DType::kF16, pool); }, "latent");
  LayerSlots dense(kShape, 100, DType::kF16);
  expect_error_mentioning([&] { LayerSlots(LayerSlots::Share{}, dense); }, "on no block pool");
  EXPECT_FALSE(dense.paged());
  expect_error_mentioning(
      [&] {
        LayerSlots paged(kShape, 100, DType::kF16, pool);
        (void)paged.k_data(0);
      },
      "not contiguous");
}

// A fork shares every block; whichever side writes a shared block (append into it, a removal's moves, an overwrite)
// copies it first, and the other side keeps its rows.
TEST(BlockPoolTest, ForkSharesBlocksCopyOnWrite) {
  BlockPool pool(kShape, DType::kF32, 16, 40);
  LayerSlots parent(kShape, 300, DType::kF32, pool);
  append_tagged(parent, 0, 0, 40);  // 3 blocks, the last one half full
  append_tagged(parent, 1, 0, 32);  // 2 full blocks
  EXPECT_EQ(pool.blocks_free(), 35);
  LayerSlots child(LayerSlots::Share{}, parent);
  EXPECT_EQ(pool.blocks_free(), 35);  // a fork costs no block
  expect_accounting(pool, {&parent, &child});
  EXPECT_EQ(pool.refs(parent.block_ids(0)[0]), 2);

  // Appending into the shared half-full block copies it; the full ones stay shared.
  append_tagged(child, 0, 40, 1);
  EXPECT_EQ(pool.blocks_free(), 34);
  EXPECT_NE(child.block_ids(0)[2], parent.block_ids(0)[2]);
  EXPECT_EQ(child.block_ids(0)[0], parent.block_ids(0)[0]);
  // Appending to a head whose last block is full takes a new block and copies nothing.
  append_tagged(child, 1, 32, 1);
  EXPECT_EQ(pool.blocks_free(), 33);
  EXPECT_EQ(child.block_ids(1)[1], parent.block_ids(1)[1]);
  expect_accounting(pool, {&parent, &child});

  // Evict in the child: rows move into holes of shared blocks, which are copied first.
  child.remove(0, std::vector<std::int32_t>{0, 17, 20});
  expect_accounting(pool, {&parent, &child});
  expect_rows_match_positions<float>(child, 0);
  expect_rows_match_positions<float>(parent, 0);
  EXPECT_EQ(parent.length(0), 40);
  for (std::int64_t j = 0; j < 40; ++j) EXPECT_EQ(parent.positions(0)[j], j);  // the parent is unchanged
  // Overwrite in the parent: its own copy.
  std::vector<float> krow(24, 7.0f), vrow(8, 7.0f);
  parent.overwrite(1, 3, krow.data(), vrow.data(), 3);
  EXPECT_EQ(child.k_row<float>(1, 3)[0], 3.0f);
  EXPECT_EQ(parent.k_row<float>(1, 3)[0], 7.0f);
  expect_accounting(pool, {&parent, &child});

  // Removing rows only from the shared tail of a head drops references without copying.
  const std::int64_t before = pool.blocks_free();
  std::vector<std::int32_t> tail(16);
  std::iota(tail.begin(), tail.end(), 16);
  child.remove(1, tail);  // child's head 1: 33 -> 17 rows
  expect_accounting(pool, {&parent, &child});
  EXPECT_GE(pool.blocks_free(), before);

  // A pool too small for the copy a removal needs: an error, and nothing changes.
  {
    BlockPool tiny(kShape, DType::kF32, 16, 2);
    LayerSlots a(kShape, 100, DType::kF32, tiny);
    append_tagged(a, 0, 0, 32);
    LayerSlots b(LayerSlots::Share{}, a);
    expect_error_mentioning([&] { b.remove(0, std::vector<std::int32_t>{0}); }, "block pool exhausted");
    EXPECT_EQ(b.length(0), 32);
    expect_rows_match_positions<float>(b, 0);
    expect_accounting(tiny, {&a, &b});
    b.remove(0, std::vector<std::int32_t>{31});  // the last row: no move, no copy
    EXPECT_EQ(b.length(0), 31);
  }

  // Destroying a fork returns what only it held.
  {
    LayerSlots grandchild(LayerSlots::Share{}, child);
    append_tagged(grandchild, 0, 100, 30);
  }
  expect_accounting(pool, {&parent, &child});
}

// Two sequences on one pool from two threads (run under TSan by the sanitizer workflow).
TEST(BlockPoolTest, TwoSequencesOnTwoThreads) {
  BlockPool pool(kShape, DType::kF16, 16, 2 * 2 * 40);
  LayerSlots a(kShape, 700, DType::kF16, pool), b(kShape, 700, DType::kF16, pool);
  auto work = [&](LayerSlots& kv, int seed) {
    for (int round = 0; round < 20; ++round) {  // positions below 512: exact in f16 with their quarters
      for (int h = 0; h < 2; ++h) append_tagged(kv, h, round * 16, 16);
      std::vector<std::int32_t> drop;
      for (std::int32_t j = (round + seed) % 3; j < kv.length(0) && drop.size() < 8; j += 3) drop.push_back(j);
      kv.remove(0, drop);
    }
  };
  std::thread t1(work, std::ref(a), 0), t2(work, std::ref(b), 1);
  t1.join();
  t2.join();
  expect_accounting(pool, {&a, &b});
  expect_rows_match_positions<kvcache::f16>(a, 0);
  expect_rows_match_positions<kvcache::f16>(b, 1);
}

}  // namespace
