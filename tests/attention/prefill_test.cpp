// Causal prefill attention against the Eigen reference, for every ISA, storage type, awkward sizes and group
// sizes, earlier rows in the cache (chunked prefill), column sums of all or the last W tokens, and threads.
//
// Tolerances as for decode: outputs 3e-5 max abs (fp32 accumulation over up to ~1000 keys, exp to ~2 ulp),
// column sums 1e-5 max abs relative to their size (a column sum is at most tokens x group).

#include <gtest/gtest.h>

#include <optional>
#include <string>
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

struct PrefillCase {
  AttentionShape shape;
  std::int64_t n_old;  // rows already cached before the new tokens
  std::int64_t n_new;
  DType dtype;
  std::int64_t sums_begin = 0, sums_end = -1;  // column-sum tokens; begin < 0: none
  bool per_query_head = false;                 // column sums one row per query head (GqaReduce::kMax)
  int block_rows = 0;                          // > 0: paged heads, blocks of this many rows
};

template <class Exec = kvcache::SerialExecutor>
void check_prefill(const PrefillCase& c, const Exec& ex = Exec{}, int workers = 1) {
  const int n_q = c.shape.n_q_heads, dk = c.shape.head_dim_k, dv = c.shape.dim_v(), n_kv = c.shape.n_kv_heads;
  const std::int64_t cap = c.n_old + c.n_new + 5;
  std::optional<kvcache::BlockPool> pool;
  if (c.block_rows > 0) pool.emplace(c.shape, c.dtype, c.block_rows, n_kv * (cap / c.block_rows + 1));
  LayerSlots kv = pool ? LayerSlots(c.shape, cap, c.dtype, *pool) : LayerSlots(c.shape, cap, c.dtype);
  if (c.n_old > 0) kvtest::fill_random(kv, c.n_old, 21);
  kvtest::fill_random(kv, c.n_new, 22, static_cast<std::int32_t>(c.n_old));
  const auto q = kvtest::random_vector(static_cast<std::size_t>(c.n_new * n_q * dk), 23, 1.5f);
  std::vector<float> out(static_cast<std::size_t>(c.n_new * n_q * dv), 77.0f), ref(out.size());
  const std::int64_t stride = kv.capacity();
  std::vector<float> sums(static_cast<std::size_t>((c.per_query_head ? n_q : n_kv) * stride), 0.25f), ref_sums(sums);
  const bool with_sums = c.sums_begin >= 0;

  kvcache::reference::prefill_attention(
      kv, ConstTensorView<float, 3>(q.data(), c.n_new, n_q, dk), TensorView<float, 3>(ref.data(), c.n_new, n_q, dv),
      0.0f, with_sums ? ref_sums.data() : nullptr, stride, c.sums_begin, c.sums_end, c.per_query_head);
  kvcache::PrefillWorkspace ws(c.shape, workers);
  kvcache::PrefillOptions opt;
  if (with_sums) {
    opt.column_sums = sums.data();
    opt.column_sums_stride = stride;
    opt.column_sums_begin = c.sums_begin;
    opt.column_sums_end = c.sums_end;
    opt.column_sums_per_query_head = c.per_query_head;
  }
  kvcache::prefill_attention(kv, ConstTensorView<float, 3>(q.data(), c.n_new, n_q, dk),
                             TensorView<float, 3>(out.data(), c.n_new, n_q, dv), ws, opt, ex);
  const std::string what = "n_q " + std::to_string(n_q) + " n_kv " + std::to_string(n_kv) + " dk " +
                           std::to_string(dk) + " old " + std::to_string(c.n_old) + " new " + std::to_string(c.n_new) +
                           " " + std::string(kvcache::dtype_name(c.dtype)) +
                           (c.per_query_head ? " per query head" : "") + " blocks " + std::to_string(c.block_rows);
  EXPECT_LE(kvtest::max_abs_diff(out, ref), 3e-5) << what;
  if (with_sums) {
    const std::int64_t end = c.sums_end < 0 ? c.n_new : c.sums_end;
    const double scale =
        std::max<double>(1.0, static_cast<double>((end - c.sums_begin) * (c.per_query_head ? 1 : n_q / n_kv)));
    EXPECT_LE(kvtest::max_abs_diff(sums, ref_sums), 1e-5 * scale) << what;
  }
}

class PrefillTest : public testing::TestWithParam<kvcache::Isa> {
 protected:
  kvtest::ScopedIsa isa_{GetParam()};
};

TEST_P(PrefillTest, AwkwardLengthsAndGroupSizes) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int g : {1, 2, 3, 8})
      for (std::int64_t n : {1, 7, 15, 17, 130}) check_prefill({{2 * g, 2, 64, 64}, 0, n, dt});
}

TEST_P(PrefillTest, LongPromptWithColumnSumsOfAllTokens) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    check_prefill({{8, 2, 64, 64}, 0, 1000, dt, 0, -1});
}

TEST_P(PrefillTest, ChunkedPrefillSeesEarlierRows) {
  for (std::int64_t old : {1, 17, 100})
    for (std::int64_t n : {1, 15, 65}) check_prefill({{6, 2, 64, 64}, old, n, DType::kF16, 0, -1});
}

TEST_P(PrefillTest, ColumnSumsOfTheLastWindow) {
  check_prefill({{8, 2, 64, 64}, 0, 300, DType::kF16, 292, 300});  // SnapKV's last W = 8
  check_prefill({{8, 2, 64, 64}, 40, 50, DType::kBF16, 49, 50});   // the last token only
  check_prefill({{8, 2, 64, 64}, 0, 50, DType::kF32, 10, 10});     // an empty range adds nothing
}

// GqaReduce::kMax: column sums kept per query head, for all tokens or the last window, groups 1, 2, 3, 8, chunked
// prefill, and a group wider than a block (two chunks of heads, each writing its own rows).
TEST_P(PrefillTest, ColumnSumsPerQueryHead) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
    for (int g : {1, 2, 3, 8}) {
      check_prefill({{2 * g, 2, 64, 64}, 0, 17, dt, 0, -1, true});
      check_prefill({{2 * g, 2, 64, 64}, 5, 130, dt, 122, 130, true});
    }
  check_prefill({{100, 1, 16, 16}, 3, 9, DType::kF16, 0, -1, true});
  check_prefill({{8, 2, 64, 64}, 0, 300, DType::kF16, 0, -1, true}, kvtest::ThreadExecutor{2}, 2);
}

TEST_P(PrefillTest, HeadDimsAndOddWidths) {
  for (DType dt : {DType::kF16, DType::kBF16})
    for (int d : {64, 80, 96, 128, 256}) check_prefill({{8, 2, d, d}, 3, 70, dt, 0, -1});
  check_prefill({{3, 1, 72, 40}, 5, 33, DType::kF32, 0, -1});
  check_prefill({{3, 1, 72, 40}, 5, 33, DType::kBF16, 0, -1});
  check_prefill({{2, 1, 40, 72}, 64, 64, DType::kBF16, 0, -1});  // whole tiles of keys, dk a half chunk
  check_prefill({{4, 2, 5, 3}, 0, 20, DType::kBF16, 0, -1});
  check_prefill({{3, 1, 72, 40}, 5, 33, DType::kI8, 0, -1});
  check_prefill({{4, 2, 5, 3}, 0, 20, DType::kI8, 0, -1});
}

TEST_P(PrefillTest, LargestGroupAndMha) {
  check_prefill({{16, 1, 64, 64}, 0, 40, DType::kF16, 0, -1});
  check_prefill({{100, 1, 16, 16}, 3, 9, DType::kF16, 0, -1});  // wider than a block's 96 rows: two chunks of heads
  check_prefill({{200, 2, 8, 8}, 0, 5, DType::kF32, -1});
  check_prefill({{8, 8, 64, 64}, 0, 40, DType::kF16, 0, -1});
}

TEST_P(PrefillTest, LatentLayout) {
  check_prefill({{128, 1, 576, 512, true}, 2, 5, DType::kBF16, 0, -1});  // DeepSeek-V2: 128 heads in two chunks
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8}) {
    check_prefill({{4, 1, 112, 96, true}, 0, 130, dt, 0, -1});  // tinylm-mla
    check_prefill({{3, 1, 45, 37, true}, 9, 20, dt, 15, -1});   // odd widths, chunked
  }
}

TEST_P(PrefillTest, ThreadsGiveTheSameAnswer) {
  check_prefill({{8, 2, 64, 64}, 10, 400, DType::kF16, -1}, kvtest::ThreadExecutor{2}, 2);
  check_prefill({{8, 2, 64, 64}, 10, 400, DType::kF16, 0, -1}, kvtest::ThreadExecutor{2}, 2);
  check_prefill({{4, 4, 64, 64}, 0, 200, DType::kF32, 190, -1}, kvtest::ThreadExecutor{3}, 3);
}

// Paged heads: the key and value tiles are packed block by block (blocks of 16 to 256 rows), with earlier chunks'
// rows, column sums, int8 scales and the latent layout.
TEST_P(PrefillTest, PagedHeadsMatchTheReference) {
  for (int rows : {16, 32, 64, 256})
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16, DType::kI8})
      for (int g : {1, 3, 8}) {
        check_prefill({{2 * g, 2, 64, 64}, 0, 83, dt, 0, -1, false, rows});
        check_prefill({{2 * g, 2, 72, 40}, 37, 300, dt, 250, -1, false, rows});
      }
  check_prefill({{8, 1, 80, 64, true}, 100, 200, DType::kBF16, 0, -1, false, 16});
}

INSTANTIATE_TEST_SUITE_P(Isa, PrefillTest, testing::ValuesIn(kvcache::available_isas()), kvtest::isa_param_name);

TEST(PrefillErrorsTest, BadShapesAreClearErrors) {
  AttentionShape shape{4, 2, 16, 16};
  LayerSlots kv(shape, 16, DType::kF32);
  kvtest::fill_random(kv, 5, 1);
  kvcache::PrefillWorkspace ws(shape);
  std::vector<float> q(10 * 4 * 17), out(10 * 4 * 17), sums(64);
  auto run = [&](std::int64_t n, int nq, int dk, int dv, const kvcache::PrefillOptions& o = {}) {
    kvcache::prefill_attention(kv, ConstTensorView<float, 3>(q.data(), n, nq, dk),
                               TensorView<float, 3>(out.data(), n, nq, dv), ws, o);
  };
  expect_error_mentioning([&] { run(6, 4, 16, 16); }, "KV head 0 holds only 5 rows");
  expect_error_mentioning([&] { run(3, 3, 16, 16); }, "3 query heads are not a multiple of the 2 KV heads");
  expect_error_mentioning([&] { run(3, 4, 17, 16); }, "queries have width 17");
  expect_error_mentioning([&] { run(3, 4, 16, 15); }, "output is [3, 4, 15]");
  kvcache::PrefillOptions o;
  o.column_sums = sums.data();
  o.column_sums_stride = 16;
  o.column_sums_begin = 2;
  o.column_sums_end = 4;
  expect_error_mentioning([&] { run(3, 4, 16, 16, o); }, "column-sum tokens [2, 4)");
  o.column_sums_end = 3;
  o.column_sums_stride = 4;
  expect_error_mentioning([&] { run(3, 4, 16, 16, o); }, "column_sums_stride 4");
  kvcache::PrefillWorkspace other({4, 2, 32, 32});
  expect_error_mentioning(
      [&] {
        kvcache::prefill_attention(kv, ConstTensorView<float, 3>(q.data(), 2, 4, 16),
                                   TensorView<float, 3>(out.data(), 2, 4, 16), other);
      },
      "made for head dims 32/32");
}

}  // namespace
