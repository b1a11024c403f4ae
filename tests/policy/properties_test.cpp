// Properties every policy must have, over random inputs, through KVCache<Policy>:
//   sinks and the recent window are never evicted; a head never exceeds budget + slack after a step; the kept rows
//   are exactly the rows of the kept positions (K, V and position move together); a budget at or above the
//   sequence length gives the same attention output as Full, bit for bit; the kept set is the same for every ISA.
// Plus: heads of one layer with different budgets hold different numbers of rows and the byte accounting shows it;
// reset() leaves nothing behind; bad configurations are clear errors; NaN scores rank lowest.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <utility>
#include <vector>

#include "kvcache/storage/block_pool.hpp"
#include "policy_test_util.hpp"

namespace {

using kvtest::expect_error_mentioning;

using kvcache::CacheConfig;
using kvcache::ConstTensorView;
using kvcache::Count;
using kvcache::DType;
using kvcache::KVCache;
using kvcache::KVCacheOptions;
using kvcache::Position;
using kvcache::TensorView;

constexpr int kKv = 2, kQ = 4, kD = 16;

// A random sequence: the prompt and the decode steps' rows, identical for every cache it is fed to.
struct Sequence {
  std::int64_t prompt = 0, steps = 0;
  std::vector<float> k, v, q;  // per token: k, v [kKv, kD]; q [kQ, kD]
  explicit Sequence(std::int64_t prompt_, std::int64_t steps_, std::uint32_t seed) : prompt(prompt_), steps(steps_) {
    const std::int64_t n = prompt + steps;
    k = kvtest::random_vector(std::size_t(n * kKv * kD), seed);
    v = kvtest::random_vector(std::size_t(n * kKv * kD), seed + 1);
    q = kvtest::random_vector(std::size_t(n * kQ * kD), seed + 2, 2.0f);
  }
  const float* k_at(std::int64_t t, int h) const { return k.data() + (t * kKv + h) * kD; }
};

// Feeds seq to cache; calls check(step) after the prefill (step -1) and each decode step; returns every output.
template <class Cache, class Check>
std::vector<float> run(Cache& cache, const Sequence& seq, int layers, Check&& check) {
  std::vector<float> outputs;
  const std::int64_t L = seq.prompt;
  std::vector<float> pk(std::size_t(kKv * L * kD)), pv(pk.size()), out(std::size_t(L * kQ * kD));
  for (int h = 0; h < kKv; ++h)
    for (std::int64_t t = 0; t < L; ++t)
      for (int c = 0; c < kD; ++c) {
        pk[std::size_t((h * L + t) * kD + c)] = seq.k[std::size_t((t * kKv + h) * kD + c)];
        pv[std::size_t((h * L + t) * kD + c)] = seq.v[std::size_t((t * kKv + h) * kD + c)];
      }
  std::vector<Position> pos(static_cast<std::size_t>(L));
  for (std::int64_t t = 0; t < L; ++t) pos[std::size_t(t)] = Position(t);
  for (int l = 0; l < layers; ++l) {
    cache.prefill(l, ConstTensorView<float, 3>(pk.data(), kKv, L, kD), ConstTensorView<float, 3>(pv.data(), kKv, L, kD),
                  pos, ConstTensorView<float, 3>(seq.q.data(), L, kQ, kD), TensorView<float, 3>(out.data(), L, kQ, kD));
    outputs.insert(outputs.end(), out.begin(), out.end());
  }
  check(-1);
  std::vector<float> o(std::size_t(kQ * kD));
  for (std::int64_t s = 0; s < seq.steps; ++s) {
    const std::int64_t t = L + s;
    for (int l = 0; l < layers; ++l) {
      cache.decode(l, ConstTensorView<float, 2>(seq.k.data() + t * kKv * kD, kKv, kD),
                   ConstTensorView<float, 2>(seq.v.data() + t * kKv * kD, kKv, kD), Position(t),
                   ConstTensorView<float, 2>(seq.q.data() + t * kQ * kD, kQ, kD),
                   TensorView<float, 2>(o.data(), kQ, kD));
      outputs.insert(outputs.end(), o.begin(), o.end());
    }
    check(s);
  }
  return outputs;
}

CacheConfig config(std::int64_t capacity, DType dt = DType::kF32, int layers = 2) {
  return CacheConfig{layers, {kQ, kKv, kD, kD}, capacity, dt};
}

// The score policies with GqaReduce::kMax (scores kept per query head); as derived types they rank through rank().
struct H2OMax : kvcache::H2O {
  H2OMax(Count heavy_, Count recent_) : H2O(heavy_, recent_, kvcache::GqaReduce::kMax) {}
};
struct VATPMax : kvcache::VATP {
  VATPMax(Count heavy_, Count recent_, std::int64_t sinks_) : VATP(heavy_, recent_, sinks_, kvcache::GqaReduce::kMax) {}
};
struct SnapKVMax : kvcache::SnapKV {
  SnapKVMax(Count capacity_, std::int64_t window_, int kernel_)
      : SnapKV(capacity_, window_, kernel_, Pooling::kAvg, kvcache::GqaReduce::kMax) {}
};

template <class P>
struct Factory;
template <>
struct Factory<kvcache::H2O> {
  static kvcache::H2O tight() { return {Count::of(6), Count::of(5)}; }
  static kvcache::H2O huge() { return {Count::of(500), Count::of(500)}; }
};
template <>
struct Factory<kvcache::VATP> {
  static kvcache::VATP tight() { return {Count::of(6), Count::of(5), 3}; }
  static kvcache::VATP huge() { return {Count::of(500), Count::of(500), 3}; }
};
template <>
struct Factory<kvcache::L2Norm> {
  static kvcache::L2Norm tight() { return {Count::of(12), {0}, kvcache::L2Norm::Mode::kEveryStep, 2, 4}; }
  static kvcache::L2Norm huge() { return {Count::of(1000), {}, kvcache::L2Norm::Mode::kEveryStep, 2, 4}; }
};
template <>
struct Factory<kvcache::SnapKV> {
  static kvcache::SnapKV tight() { return {Count::of(12), 4, 3}; }
  static kvcache::SnapKV huge() { return {Count::of(1000), 4, 3}; }
};
template <>
struct Factory<kvcache::StreamingLLM> {
  static kvcache::StreamingLLM tight() { return {3, 8, kvcache::StreamingLLM::Positions::kOriginal}; }
  static kvcache::StreamingLLM huge() { return {3, 1000, kvcache::StreamingLLM::Positions::kOriginal}; }
};
template <>
struct Factory<H2OMax> {
  static H2OMax tight() { return {Count::of(6), Count::of(5)}; }
  static H2OMax huge() { return {Count::of(500), Count::of(500)}; }
};
template <>
struct Factory<VATPMax> {
  static VATPMax tight() { return {Count::of(6), Count::of(5), 3}; }
  static VATPMax huge() { return {Count::of(500), Count::of(500), 3}; }
};
template <>
struct Factory<SnapKVMax> {
  static SnapKVMax tight() { return {Count::of(12), 4, 3}; }
  static SnapKVMax huge() { return {Count::of(1000), 4, 3}; }
};
template <>
struct Factory<kvcache::Full> {
  static kvcache::Full tight() { return {}; }
  static kvcache::Full huge() { return {}; }
};

template <class P>
class PolicyPropertyTest : public testing::Test {};
using AllPolicies = testing::Types<kvcache::H2O, kvcache::VATP, kvcache::L2Norm, kvcache::SnapKV, kvcache::StreamingLLM,
                                   kvcache::Full, H2OMax, VATPMax, SnapKVMax>;
TYPED_TEST_SUITE(PolicyPropertyTest, AllPolicies);

TYPED_TEST(PolicyPropertyTest, ProtectedRowsStayAndBudgetHolds) {
  for (std::int64_t slack : {0, 3}) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kI8}) {
      KVCacheOptions opt;
      opt.eviction_slack = slack;
      KVCache<TypeParam> cache(config(80, dt), Factory<TypeParam>::tight(), opt);
      Sequence seq(30, 25, 7);
      run(cache, seq, 2, [&](std::int64_t step) {
        for (int l = 0; l < 2; ++l)
          for (int h = 0; h < kKv; ++h) {
            const auto b = cache.budget(l, h);
            const auto n = cache.length(l, h);
            auto pos = cache.layer(l).positions(h);
            const Position newest = Position(seq.prompt + step);
            if (!b.unlimited() && cache.policy().needs().evict_during_decode) {
              ASSERT_LE(n, b.total + (step < 0 ? 0 : slack)) << "layer " << l << " head " << h << " step " << step;
            }
            if (!b.unlimited() && step < 0) {
              ASSERT_LE(n, b.total);
            }
            std::set<Position> have(pos.begin(), pos.end());
            ASSERT_EQ(have.size(), pos.size()) << "a position is stored twice";
            for (Position p = 0; p < b.sinks && p <= newest; ++p) ASSERT_TRUE(have.count(p)) << "sink " << p;
            for (std::int64_t r = 0; r < b.recent && newest - r >= 0; ++r)
              ASSERT_TRUE(have.count(Position(newest - r))) << "recent " << newest - r;
            // K, V and position moved together: each stored key row is the key given for its position (i8: that
            // key quantized, with its scale).
            if (dt == DType::kI8) {
              std::vector<kvcache::i8> q(kD);
              for (std::size_t s = 0; s < pos.size(); ++s) {
                const float sc = kvcache::quantize_row_i8(seq.k_at(pos[s], h), kD, q.data());
                ASSERT_EQ(cache.layer(l).k_scales(h)[s], sc) << "slot " << s << " position " << pos[s];
                for (int c = 0; c < kD; ++c)
                  ASSERT_EQ(cache.layer(l).template k_rows<kvcache::i8>(h)[s * kD + c], q[c]) << "slot " << s;
              }
              continue;
            }
            for (std::size_t s = 0; s < pos.size(); ++s)
              for (int c = 0; c < kD; ++c) {
                const float given = seq.k_at(pos[s], h)[c];
                const float stored =
                    dt == DType::kF32 ? cache.layer(l).template k<float>(h)(Eigen::Index(s), c)
                                      : kvcache::to_f32(cache.layer(l).template k<kvcache::f16>(h)(Eigen::Index(s), c));
                const float expect =
                    dt == DType::kF32 ? given : kvcache::to_f32(kvcache::from_f32<kvcache::f16>(given));
                ASSERT_EQ(stored, expect) << "slot " << s << " position " << pos[s];
              }
          }
      });
    }
  }
}

TYPED_TEST(PolicyPropertyTest, BudgetAboveTheSequenceIsFullBitForBit) {
  Sequence seq(40, 20, 11);
  KVCache<TypeParam> cache(config(100), Factory<TypeParam>::huge());
  KVCache<kvcache::Full> full(config(100));
  const auto a = run(cache, seq, 2, [](std::int64_t) {});
  const auto b = run(full, seq, 2, [](std::int64_t) {});
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TYPED_TEST(PolicyPropertyTest, SameKeptSetOnEveryIsa) {
  Sequence seq(30, 15, 13);
  std::vector<std::set<Position>> first;
  for (kvcache::Isa isa : kvcache::available_isas()) {
    kvtest::ScopedIsa scoped(isa);
    KVCache<TypeParam> cache(config(80), Factory<TypeParam>::tight());
    run(cache, seq, 2, [](std::int64_t) {});
    std::vector<std::set<Position>> sets;
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < kKv; ++h) {
        auto pos = cache.layer(l).positions(h);
        sets.emplace_back(pos.begin(), pos.end());
      }
    if (first.empty())
      first = sets;
    else
      EXPECT_EQ(sets, first) << kvcache::isa_name(isa);
  }
}

// An executor whose thread count can change after the cache is made (as OpenMP's can): made with one, run with kKv.
struct GrowingExecutor {
  std::shared_ptr<int> threads = std::make_shared<int>(1);
  [[nodiscard]] int concurrency() const noexcept { return *threads; }
  template <class F>
  void parallel_for(int n, F&& f) const noexcept {
    kvtest::ThreadExecutor{*threads}.parallel_for(n, std::forward<F>(f));
  }
};

// Decode evicts each head in the task that finished its attention (DecodeOptions::head_done); with threads, heads
// evict at once. The outputs and the kept rows must be those of the serial cache, bit for bit (one split per head, so
// the arithmetic is the same); also when the executor gained threads after the cache was made (it then evicts after
// the step, as its scratch was sized for one task).
TYPED_TEST(PolicyPropertyTest, ThreadsKeepWhatSerialKeeps) {
  Sequence seq(30, 25, 23);
  for (std::int64_t slack : {0, 3}) {
    KVCacheOptions opt;
    opt.eviction_slack = slack;
    KVCache<TypeParam> serial(config(80, DType::kF16), Factory<TypeParam>::tight(), opt);
    KVCache<TypeParam, kvtest::ThreadExecutor> threaded(config(80, DType::kF16), Factory<TypeParam>::tight(), opt,
                                                        kvtest::ThreadExecutor{kKv});
    GrowingExecutor growing;
    KVCache<TypeParam, GrowingExecutor> grown(config(80, DType::kF16), Factory<TypeParam>::tight(), opt, growing);
    *growing.threads = kKv;
    const auto a = run(serial, seq, 2, [](std::int64_t) {});
    const auto b = run(threaded, seq, 2, [](std::int64_t) {});
    const auto c = run(grown, seq, 2, [](std::int64_t) {});
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(a.size(), c.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "slack " << slack;
    EXPECT_EQ(std::memcmp(a.data(), c.data(), a.size() * sizeof(float)), 0) << "slack " << slack << " (grown)";
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < kKv; ++h) {
        auto p = serial.layer(l).positions(h), q = threaded.layer(l).positions(h), r = grown.layer(l).positions(h);
        EXPECT_EQ(std::vector<Position>(p.begin(), p.end()), std::vector<Position>(q.begin(), q.end()))
            << "layer " << l << " head " << h << " slack " << slack;
        EXPECT_EQ(std::vector<Position>(p.begin(), p.end()), std::vector<Position>(r.begin(), r.end()))
            << "layer " << l << " head " << h << " slack " << slack << " (grown)";
      }
  }
}

TYPED_TEST(PolicyPropertyTest, ResetLeavesNothingBehind) {
  Sequence s1(30, 10, 17), s2(25, 12, 19);
  KVCache<TypeParam> reused(config(80), Factory<TypeParam>::tight());
  run(reused, s1, 2, [](std::int64_t) {});
  reused.reset();
  const auto a = run(reused, s2, 2, [](std::int64_t) {});
  KVCache<TypeParam> fresh(config(80), Factory<TypeParam>::tight());
  const auto b = run(fresh, s2, 2, [](std::int64_t) {});
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// One decode step of token t of seq (any position) in every layer; returns the outputs.
template <class Cache>
std::vector<float> decode_token(Cache& cache, const Sequence& seq, std::int64_t t, Position position, int layers) {
  std::vector<float> o(std::size_t(kQ * kD)), all;
  for (int l = 0; l < layers; ++l) {
    cache.decode(l, ConstTensorView<float, 2>(seq.k.data() + t * kKv * kD, kKv, kD),
                 ConstTensorView<float, 2>(seq.v.data() + t * kKv * kD, kKv, kD), position,
                 ConstTensorView<float, 2>(seq.q.data() + t * kQ * kD, kQ, kD), TensorView<float, 2>(o.data(), kQ, kD));
    all.insert(all.end(), o.begin(), o.end());
  }
  return all;
}

// The pool's free count against a brute-force count of the distinct blocks the caches hold, and each block's
// reference count against the heads that hold it.
template <class... Caches>
void expect_pool_accounting(const kvcache::BlockPool& pool, const Caches&... caches) {
  std::vector<int> holders(std::size_t(pool.blocks_total()), 0);
  auto count = [&](const auto& cache) {
    for (int l = 0; l < cache.config().n_layers; ++l)
      for (int h = 0; h < kKv; ++h) {
        const auto ids = cache.layer(l).block_ids(h);
        ASSERT_EQ(std::int64_t(ids.size()), (cache.length(l, h) + pool.block_rows() - 1) / pool.block_rows());
        for (std::int32_t b : ids) ++holders[std::size_t(b)];
      }
  };
  (count(caches), ...);
  std::int64_t live = 0;
  for (std::int32_t b = 0; b < pool.blocks_total(); ++b) {
    ASSERT_EQ(pool.refs(b), holders[std::size_t(b)]) << "block " << b;
    live += holders[std::size_t(b)] > 0;
  }
  ASSERT_EQ(pool.blocks_free(), pool.blocks_total() - live);
}

template <class Cache>
std::vector<std::vector<Position>> kept_positions(const Cache& cache) {
  std::vector<std::vector<Position>> all;
  for (int l = 0; l < cache.config().n_layers; ++l)
    for (int h = 0; h < kKv; ++h) {
      const auto pos = cache.layer(l).positions(h);
      all.emplace_back(pos.begin(), pos.end());
    }
  return all;
}

// Paged storage is the dense cache's result: the same rows kept after every step (the exported scores do not depend
// on how rows are laid out), outputs bit for bit with blocks of a whole tile (64 rows) and within rounding with
// blocks of 16 (each tile's P.V then runs block by block; int8 on VNNI within its own 16-bit weights), and the pool's
// free count rising in the step a policy evicts.
TYPED_TEST(PolicyPropertyTest, PagedStorageKeepsWhatDenseKeeps) {
  for (int rows : {16, 64})
    for (DType dt : {DType::kF16, DType::kI8}) {
      Sequence seq(30, 25, 31);
      kvcache::BlockPool pool(config(80).shape, dt, rows, 2 * kKv * (80 / rows + 1));
      KVCache<TypeParam> dense(config(80, dt), Factory<TypeParam>::tight());
      KVCache<TypeParam> paged(config(80, dt), pool, Factory<TypeParam>::tight());
      EXPECT_TRUE(paged.paged());
      EXPECT_FALSE(dense.paged());
      std::vector<std::vector<std::vector<Position>>> kept;
      std::vector<std::size_t> bytes;
      const auto a = run(dense, seq, 2, [&](std::int64_t) {
        kept.push_back(kept_positions(dense));
        bytes.push_back(dense.kv_bytes());
      });
      std::size_t step = 0;
      const auto b = run(paged, seq, 2, [&](std::int64_t s) {
        ASSERT_EQ(kept_positions(paged), kept[step++]) << "step " << s;
        EXPECT_EQ(paged.kv_bytes(), bytes[step - 1]);
        expect_pool_accounting(pool, paged);
      });
      ASSERT_EQ(a.size(), b.size());
      if (rows == 64)
        EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
      else  // i8 on VNNI rounds each run's P.V weights to 16 bits with the run's own scale (kernels/vnni.hpp)
        EXPECT_LE(kvtest::max_abs_diff(a, b), dt == DType::kI8 ? 1e-3 : 1e-5) << kvcache::dtype_name(dt);
      paged.reset();
      EXPECT_EQ(pool.blocks_free(), pool.blocks_total());
    }
}

// fork(): the child shares the parent's blocks; decoding other tokens in the child (and evicting there) leaves the
// parent's rows, positions and later outputs exactly those of a twin that was never forked.
TYPED_TEST(PolicyPropertyTest, ForkThenDivergeLeavesTheParent) {
  Sequence seq(30, 10, 37), other(0, 30, 41);
  kvcache::BlockPool pool(config(80).shape, DType::kF16, 16, 3 * 2 * kKv * 6);
  KVCache<TypeParam> parent(config(80, DType::kF16), pool, Factory<TypeParam>::tight());
  kvcache::BlockPool twin_pool(config(80).shape, DType::kF16, 16, 2 * kKv * 6);  // same blocks, same arithmetic
  KVCache<TypeParam> twin(config(80, DType::kF16), twin_pool, Factory<TypeParam>::tight());
  run(parent, seq, 2, [](std::int64_t) {});
  run(twin, seq, 2, [](std::int64_t) {});
  const std::int64_t free_before = pool.blocks_free();
  {
    auto child = parent.fork();
    EXPECT_EQ(pool.blocks_free(), free_before);  // one prompt's blocks serve both
    EXPECT_EQ(kept_positions(child), kept_positions(parent));
    expect_pool_accounting(pool, parent, child);
    for (std::int64_t t = 0; t < 20; ++t) {
      decode_token(child, other, t, Position(40 + t), 2);
      expect_pool_accounting(pool, parent, child);
    }
    EXPECT_EQ(kept_positions(parent), kept_positions(twin));
    // The parent goes on as its twin does, while the child still holds blocks.
    for (std::int64_t t = 20; t < 25; ++t)
      EXPECT_EQ(decode_token(parent, other, t, Position(40 + t - 20), 2),
                decode_token(twin, other, t, Position(40 + t - 20), 2));
    EXPECT_EQ(kept_positions(parent), kept_positions(twin));
    expect_pool_accounting(pool, parent, child);
  }
  expect_pool_accounting(pool, parent);  // the child's own blocks came back when it went
}

// truncate(n): the rows of the newest n positions go, in every layer and head, with their blocks; the other rows stay
// as they were; decoding then continues from the first removed position.
TYPED_TEST(PolicyPropertyTest, TruncateTakesBackTheNewestTokens) {
  for (bool paged : {false, true}) {
    Sequence seq(30, 20, 43);
    kvcache::BlockPool pool(config(80).shape, DType::kF32, 16, 2 * kKv * 6);
    auto cache = paged ? KVCache<TypeParam>(config(80), pool, Factory<TypeParam>::tight())
                       : KVCache<TypeParam>(config(80), Factory<TypeParam>::tight());
    run(cache, seq, 2, [](std::int64_t) {});  // positions 0 .. 49
    std::vector<std::map<Position, std::vector<float>>> before;
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < kKv; ++h) {
        std::map<Position, std::vector<float>> rows;
        const auto pos = cache.layer(l).positions(h);
        for (std::size_t j = 0; j < pos.size(); ++j) {
          const float* k = cache.layer(l).template k_row<float>(h, std::int64_t(j));
          rows[pos[j]] = std::vector<float>(k, k + kD);
        }
        before.push_back(rows);
      }
    cache.truncate(6);  // positions 44 .. 49
    std::size_t i = 0;
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < kKv; ++h, ++i) {
        std::map<Position, std::vector<float>> want;
        for (const auto& [p, k] : before[i])
          if (p < 44) want[p] = k;
        std::map<Position, std::vector<float>> have;
        const auto pos = cache.layer(l).positions(h);
        for (std::size_t j = 0; j < pos.size(); ++j) {
          const float* k = cache.layer(l).template k_row<float>(h, std::int64_t(j));
          have[pos[j]] = std::vector<float>(k, k + kD);
        }
        EXPECT_EQ(have, want) << "layer " << l << " head " << h;
      }
    if (paged) expect_pool_accounting(pool, cache);
    expect_error_mentioning([&] { cache.truncate(45); }, "past the start of the sequence");
    expect_error_mentioning([&] { cache.truncate(-1); }, "n_tokens must be >= 0");
    decode_token(cache, seq, 44, 44, 2);  // the first removed position is free again
    expect_error_mentioning([&] { decode_token(cache, seq, 44, 44, 2); }, "increase strictly");
    if (paged) expect_pool_accounting(pool, cache);
  }
}

TEST(PagedCacheTest, BadUsesAreClearErrors) {
  KVCache<kvcache::H2O> dense(config(80), kvcache::H2O{Count::of(6), Count::of(5)});
  expect_error_mentioning([&] { (void)dense.fork(); }, "on no block pool");
  kvcache::BlockPool pool(config(80).shape, DType::kF16, 16, 4);
  expect_error_mentioning([&] { KVCache<kvcache::Full>(config(80, DType::kF32), pool); }, "the block pool holds f16");
  // An exhausted pool fails the prefill before anything is appended.
  KVCache<kvcache::Full> cache(config(80, DType::kF16), pool);
  Sequence seq(40, 0, 3);  // layer 0 needs 2 heads x 3 blocks; the pool has 4
  expect_error_mentioning([&] { run(cache, seq, 2, [](std::int64_t) {}); },
                          "block pool exhausted: 6 more blocks of 16 rows asked, 4 of 4 free");
  EXPECT_EQ(cache.length(0, 0), 0);
  EXPECT_EQ(pool.blocks_free(), 4);
}

TEST(PerHeadBudgetTest, HeadsKeepDifferentLengthsAndBytesShrink) {
  KVCacheOptions opt;
  opt.budget_override = [](int, int h, kvcache::ResolvedBudget b) {
    b.total = h == 0 ? 8 : 20;
    return b;
  };
  KVCache<kvcache::H2O> cache(config(80, DType::kF16), kvcache::H2O(Count::of(4), Count::of(4)), opt);
  Sequence seq(40, 10, 23);
  run(cache, seq, 2, [](std::int64_t) {});
  EXPECT_EQ(cache.length(0, 0), 8);
  EXPECT_EQ(cache.length(0, 1), 20);
  const std::size_t row = 2 * kD * 2;  // K + V, f16
  EXPECT_EQ(cache.kv_bytes(0, 0), 8 * row);
  EXPECT_EQ(cache.kv_bytes(0, 1), 20 * row);
  EXPECT_EQ(cache.kv_bytes(), 2 * (8 + 20) * row);  // against 2 * 2 * 50 rows for Full
}

TEST(PolicyConfigTest, BadConfigurationsAreClearErrors) {
  Sequence seq(30, 2, 29);
  // Budget below sinks + recent (VATP: heavy 1 + recent 2 = 3 rows, 5 sinks).
  expect_error_mentioning(
      [&] {
        KVCache<kvcache::VATP> cache(config(80), kvcache::VATP(Count::of(1), Count::of(2), 5));
        run(cache, seq, 1, [](std::int64_t) {});
      },
      "smaller than its 5 sinks + 2 recent rows");
  // SnapKV window longer than the prompt.
  expect_error_mentioning(
      [&] {
        KVCache<kvcache::SnapKV> cache(config(80), kvcache::SnapKV(Count::of(70), 64, 7));
        run(cache, seq, 1, [](std::int64_t) {});
      },
      "observes the last 64 prompt queries, but the last chunk has 30 tokens");
  expect_error_mentioning([] { kvcache::SnapKV(Count::of(40), 8, 4); }, "must be odd");
  expect_error_mentioning([] { KVCache<kvcache::StreamingLLM> c(config(80), kvcache::StreamingLLM(4, 8)); },
                          "needs KVCacheOptions::rope");
  expect_error_mentioning(
      [&] {
        KVCacheOptions opt;
        opt.eviction_slack = -1;
        KVCache<kvcache::H2O> c(config(80), kvcache::H2O(), opt);
      },
      "eviction_slack must be >= 0");
  // A budget the capacity cannot hold overflows at the append that reaches the capacity, with a clear error.
  expect_error_mentioning(
      [&] {
        KVCacheOptions opt;
        opt.eviction_slack = 60;
        KVCache<kvcache::H2O> cache(config(40), kvcache::H2O(Count::of(10), Count::of(10)), opt);
        Sequence longer(30, 25, 3);
        run(cache, longer, 1, [](std::int64_t) {});
      },
      "exceed the capacity of 40");
}

// A policy whose scores are NaN for even positions: those rank lowest and go first; protected rows never do.
struct NanScores : kvcache::H2O {
  static constexpr std::string_view kName = "nan_scores";
  using H2O::H2O;
  void rank(const kvcache::RankInput& in, std::span<float> priority) const noexcept {
    for (std::size_t j = 0; j < priority.size(); ++j)
      priority[j] = in.positions[j] % 2 == 0 ? std::numeric_limits<float>::quiet_NaN() : in.scores[j];
  }
};

TEST(PolicyConfigTest, NanScoresRankLowest) {
  KVCache<NanScores> cache(config(80), NanScores(Count::of(10), Count::of(4)));
  Sequence seq(30, 0, 31);
  run(cache, seq, 1, [](std::int64_t) {});
  for (int h = 0; h < kKv; ++h) {
    std::set<Position> have(cache.layer(0).positions(h).begin(), cache.layer(0).positions(h).end());
    EXPECT_EQ(have.size(), 14u);
    for (Position p = 26; p < 30; ++p) EXPECT_TRUE(have.count(p)) << "recent " << p;  // protected, NaN or not
    for (Position p : have) EXPECT_TRUE(p >= 26 || p % 2 == 1) << "NaN-scored " << p << " kept over finite scores";
  }
}

}  // namespace

namespace {

// Layer 0 of cache gets seq's prompt in chunks [cuts[i], cuts[i + 1]); the last is the last chunk. after(i) runs
// after chunk i.
template <class Cache, class After>
void prefill_in_chunks(Cache& cache, const Sequence& seq, const std::vector<std::int64_t>& cuts, After&& after) {
  for (std::size_t c = 0; c + 1 < cuts.size(); ++c) {
    const std::int64_t a = cuts[c], m = cuts[c + 1] - a;
    std::vector<float> k(std::size_t(kKv * m * kD)), v(k.size()), out(std::size_t(m * kQ * kD));
    for (int h = 0; h < kKv; ++h)
      for (std::int64_t t = 0; t < m; ++t)
        for (int x = 0; x < kD; ++x) {
          k[std::size_t((h * m + t) * kD + x)] = seq.k[std::size_t(((a + t) * kKv + h) * kD + x)];
          v[std::size_t((h * m + t) * kD + x)] = seq.v[std::size_t(((a + t) * kKv + h) * kD + x)];
        }
    std::vector<Position> pos;
    for (std::int64_t t = 0; t < m; ++t) pos.push_back(Position(a + t));
    cache.prefill(0, ConstTensorView<float, 3>(k.data(), kKv, m, kD), ConstTensorView<float, 3>(v.data(), kKv, m, kD),
                  pos, ConstTensorView<float, 3>(seq.q.data() + a * kQ * kD, m, kQ, kD),
                  TensorView<float, 3>(out.data(), m, kQ, kD), /*last_chunk=*/c + 2 == cuts.size());
    after(c);
  }
}

std::vector<std::int64_t> chunk_cuts(std::int64_t prompt, std::int64_t chunk) {
  std::vector<std::int64_t> cuts;
  for (std::int64_t a = 0; a < prompt; a += chunk) cuts.push_back(a);
  cuts.push_back(prompt);
  return cuts;
}

// Chunked prefill: the prompt in three chunks scores and keeps exactly what one chunk does (H2O's column sums of the
// later chunks' queries cover the earlier chunks' rows).
// With either GQA reduction (kMax keeps a column-sum row per query head across the chunks).
TEST(ChunkedPrefillTest, ThreeChunksKeepWhatOneChunkKeeps) {
  for (auto reduce : {kvcache::GqaReduce::kSum, kvcache::GqaReduce::kMax}) {
    Sequence seq(60, 0, 37);
    auto make = [reduce] {
      return KVCache<kvcache::H2O>(config(80, DType::kF32, 1), kvcache::H2O(Count::of(10), Count::of(6), reduce));
    };
    auto one = make(), chunked = make();
    run(one, seq, 1, [](std::int64_t) {});
    const std::vector<std::int64_t> cuts = {0, 17, 41, 60};
    prefill_in_chunks(chunked, seq, cuts, [&](std::size_t c) {
      if (c < 2) {
        EXPECT_EQ(chunked.length(0, 0), cuts[c + 1]) << "no eviction before the last chunk";
      }
    });
    EXPECT_EQ(chunked.prompt_length(0), 60);
    for (int h = 0; h < kKv; ++h) {
      auto p1 = one.layer(0).positions(h), p2 = chunked.layer(0).positions(h);
      EXPECT_EQ(std::set<Position>(p1.begin(), p1.end()), std::set<Position>(p2.begin(), p2.end())) << "head " << h;
    }
  }
}

// compress_each_chunk: a 200-token prompt in chunks of 30 fits a capacity of budget + 30 for every policy that can
// compress chunk by chunk; after every chunk no head holds more than its budget; decode continues. Without the
// option the same capacity cannot take the prompt.
template <class P>
void expect_bounded_peak(P policy, std::int64_t budget) {
  constexpr std::int64_t kChunk = 30;
  const Sequence seq(200, 8, 71);
  KVCacheOptions opt;
  opt.compress_each_chunk = true;
  KVCache<P> cache(config(budget + kChunk, DType::kF32, 1), policy, opt);
  prefill_in_chunks(cache, seq, chunk_cuts(seq.prompt, kChunk), [&](std::size_t c) {
    for (int h = 0; h < kKv; ++h)
      EXPECT_LE(cache.length(0, h), budget) << P::kName << " head " << h << " after chunk " << c;
  });
  EXPECT_EQ(cache.prompt_length(0), seq.prompt);
  std::vector<float> o(std::size_t(kQ * kD));
  for (std::int64_t t = seq.prompt; t < seq.prompt + seq.steps; ++t)
    cache.decode(0, ConstTensorView<float, 2>(seq.k.data() + t * kKv * kD, kKv, kD),
                 ConstTensorView<float, 2>(seq.v.data() + t * kKv * kD, kKv, kD), Position(t),
                 ConstTensorView<float, 2>(seq.q.data() + t * kQ * kD, kQ, kD), TensorView<float, 2>(o.data(), kQ, kD));
  KVCache<P> once(config(budget + kChunk, DType::kF32, 1), policy);
  expect_error_mentioning([&] { prefill_in_chunks(once, seq, chunk_cuts(seq.prompt, kChunk), [](std::size_t) {}); },
                          "capacity");
}

TEST(ChunkedPrefillTest, CompressEachChunkBoundsThePeak) {
  using kvcache::StreamingLLM;
  expect_bounded_peak(StreamingLLM(4, 36, StreamingLLM::Positions::kOriginal), 40);
  expect_bounded_peak(kvcache::H2O(Count::of(20), Count::of(20)), 40);
  expect_bounded_peak(kvcache::VATP(Count::of(20), Count::of(20), 4), 40);
  expect_bounded_peak(kvcache::L2Norm(Count::of(40), {}), 40);
  expect_bounded_peak(kvcache::SnapKV(Count::of(40), 16, 7), 40);
  expect_bounded_peak(H2OMax(Count::of(20), Count::of(20)), 40);
}

// H2O compressed after each chunk keeps what a brute-force model of the same procedure keeps: each chunk's queries
// attend (causally, softmax over the rows kept so far and the chunk's own) and add their probabilities, summed over
// the group, to every row's score; then the `recent` newest positions and the best-scored others are kept. The
// scores the cache holds are the model's.
TEST(ChunkedPrefillTest, H2OEachChunkMatchesABruteForceModel) {
  constexpr std::int64_t kHeavy = 7, kRecent = 5, kChunk = 9;
  const Sequence seq(60, 0, 83);
  KVCacheOptions opt;
  opt.compress_each_chunk = true;
  KVCache<kvcache::H2O> cache(config(kHeavy + kRecent + kChunk, DType::kF32, 1),
                              kvcache::H2O(Count::of(kHeavy), Count::of(kRecent)), opt);
  const int g = kQ / kKv;
  std::vector<std::map<Position, double>> model(kKv);  // per KV head: kept position -> score
  const auto cuts = chunk_cuts(seq.prompt, kChunk);
  prefill_in_chunks(cache, seq, cuts, [&](std::size_t c) {
    const std::int64_t a = cuts[c], b = cuts[c + 1];
    for (int h = 0; h < kKv; ++h) {
      auto& rows = model[std::size_t(h)];
      for (std::int64_t t = a; t < b; ++t) rows[Position(t)] += 0.0;
      for (std::int64_t t = a; t < b; ++t)
        for (int qh = h * g; qh < (h + 1) * g; ++qh) {
          const float* q = seq.q.data() + (t * kQ + qh) * kD;
          std::map<Position, double> logit;
          double mx = -1e300, sum = 0;
          for (const auto& [p, sc] : rows) {
            if (p > t) continue;
            const float* k = seq.k_at(p, h);
            double dot = 0;
            for (int x = 0; x < kD; ++x) dot += double(q[x]) * double(k[x]);
            logit[p] = dot / std::sqrt(double(kD));
            mx = std::max(mx, logit[p]);
          }
          for (auto& [p, z] : logit) sum += std::exp(z - mx);
          for (auto& [p, z] : logit) rows[p] += std::exp(z - mx) / sum;
        }
      if (std::int64_t(rows.size()) > kHeavy + kRecent) {
        const Position newest = Position(b - 1);
        std::vector<std::pair<double, Position>> others;
        for (const auto& [p, sc] : rows)
          if (newest - p >= kRecent) others.emplace_back(sc, p);
        std::sort(others.begin(), others.end(), std::greater<>());
        for (std::size_t i = std::size_t(kHeavy); i < others.size(); ++i) rows.erase(others[i].second);
      }
      const auto pos = cache.layer(0).positions(h);
      const auto scores = cache.scores(0, h);
      std::set<Position> got(pos.begin(), pos.end()), want;
      for (const auto& [p, sc] : rows) want.insert(p);
      ASSERT_EQ(got, want) << "head " << h << " after chunk " << c;
      for (std::size_t j = 0; j < pos.size(); ++j) EXPECT_NEAR(scores[j], rows[pos[j]], 1e-4) << "position " << pos[j];
    }
  });
}

// StreamingLLM keeps the same rows chunk by chunk as once at the end (its selection reads positions alone); SnapKV
// skips the selection after a chunk shorter than its window and votes with each longer chunk's last window queries.
TEST(ChunkedPrefillTest, StreamingLLMAndSnapKVChunkByChunk) {
  const Sequence seq(100, 0, 91);
  KVCacheOptions opt;
  opt.compress_each_chunk = true;
  using kvcache::StreamingLLM;
  const StreamingLLM sl(4, 12, StreamingLLM::Positions::kOriginal);
  KVCache<StreamingLLM> once(config(100, DType::kF32, 1), sl), chunked(config(40, DType::kF32, 1), sl, opt);
  run(once, Sequence(100, 0, 91), 1, [](std::int64_t) {});
  prefill_in_chunks(chunked, seq, chunk_cuts(seq.prompt, 20), [](std::size_t) {});
  for (int h = 0; h < kKv; ++h) {
    auto a = once.layer(0).positions(h), b = chunked.layer(0).positions(h);
    EXPECT_EQ(std::set<Position>(a.begin(), a.end()), std::set<Position>(b.begin(), b.end()));
  }
  // SnapKV: window 16, chunks of 30, 10 (shorter than the window: no selection), 30, 30.
  KVCache<kvcache::SnapKV> snap(config(80, DType::kF32, 1), kvcache::SnapKV(Count::of(24), 16, 7), opt);
  const std::vector<std::int64_t> cuts = {0, 30, 40, 70, 100};
  const std::int64_t after[] = {24, 34, 24, 24};
  prefill_in_chunks(snap, seq, cuts, [&](std::size_t c) {
    for (int h = 0; h < kKv; ++h) EXPECT_EQ(snap.length(0, h), after[c]) << "chunk " << c;
  });
  // The last chunk's window (positions 84 - 99) is kept whole.
  for (int h = 0; h < kKv; ++h) {
    const auto pos = snap.layer(0).positions(h);
    for (Position p = 84; p < 100; ++p) EXPECT_TRUE(std::find(pos.begin(), pos.end(), p) != pos.end()) << p;
  }
}

}  // namespace

namespace {

// A step with badly shaped queries or output is rejected before anything is appended: lengths, positions and the
// following steps are as if it never happened.
TEST(RejectedStepTest, ChangesNothing) {
  Sequence seq(20, 3, 41);
  KVCache<kvcache::H2O> cache(config(80, DType::kF32, 1), kvcache::H2O(Count::of(6), Count::of(5)));
  KVCache<kvcache::H2O> clean(config(80, DType::kF32, 1), kvcache::H2O(Count::of(6), Count::of(5)));
  run(cache, seq, 1, [](std::int64_t) {});
  run(clean, seq, 1, [](std::int64_t) {});
  std::vector<float> k(kKv * kD), q(kQ * kD), out(kQ * kD), wide(kQ * (kD + 1));
  kvtest::expect_error_mentioning(
      [&] {
        cache.decode(0, ConstTensorView<float, 2>(k.data(), kKv, kD), ConstTensorView<float, 2>(k.data(), kKv, kD), 99,
                     ConstTensorView<float, 2>(wide.data(), kQ, kD + 1), TensorView<float, 2>(out.data(), kQ, kD));
      },
      "queries are [1, 4, 17], expected [1, 4, 16]");
  kvtest::expect_error_mentioning(
      [&] {
        cache.decode(0, ConstTensorView<float, 2>(k.data(), kKv, kD), ConstTensorView<float, 2>(k.data(), kKv, kD), 99,
                     ConstTensorView<float, 2>(q.data(), kQ, kD), TensorView<float, 2>(wide.data(), kQ, kD + 1));
      },
      "the output is [1, 4, 17], expected [1, 4, 16]");
  const std::vector<Position> p2 = {100, 101};
  std::vector<float> k2(kKv * 2 * kD), q2(2 * kQ * kD);
  kvtest::expect_error_mentioning(
      [&] {
        cache.prefill(0, ConstTensorView<float, 3>(k2.data(), kKv, 2, kD),
                      ConstTensorView<float, 3>(k2.data(), kKv, 2, kD), p2,
                      ConstTensorView<float, 3>(q2.data(), 1, kQ, kD), TensorView<float, 3>(q2.data(), 1, kQ, kD));
      },
      "queries are [1, 4, 16], expected [2, 4, 16]");
  for (int h = 0; h < kKv; ++h) {
    auto a = cache.layer(0).positions(h), b = clean.layer(0).positions(h);
    ASSERT_EQ(std::vector<Position>(a.begin(), a.end()), std::vector<Position>(b.begin(), b.end())) << "head " << h;
  }
}

}  // namespace
