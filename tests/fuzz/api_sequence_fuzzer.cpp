// libFuzzer target: the engine-facing API driven by a program decoded from the input.
//
// The input picks a policy (every paper's, with random parameters), a dtype, an ISA, a cache shape and options, then
// a sequence of calls: prefill chunks, decode steps, the further reads of a shared layer (YOCO), reset, truncate, the
// lookups and, on paged storage (a small BlockPool, so that it runs out), fork: a sibling sequence that shares the
// cache's blocks and decodes tokens of its own, with valid and invalid layers, heads, shapes, positions and non-finite
// values. After every call it checks:
//   - a call that throws kvcache::Error leaves everything observable as it was (lengths, positions, scores, budgets,
//     prompt lengths, kv_bytes), and a call whose input breaks the contract does throw;
//   - after a call that succeeds: length <= capacity; each head's positions are distinct; K and V rows are the
//     rows appended at those positions (a shadow model of plain maps, rounded to the storage dtype), so rows and
//     positions moved together; the budget's sinks and recent window (positions) are still there, but for rows an
//     earlier call evicted; a decode-evicting policy is within budget + slack; scores are finite and >= 0; outputs are
//     finite;
//   - KVCache<Full>'s outputs equal the Eigen reference (kvcache/testing/reference.hpp) on the rows it holds;
//   - paged: each head holds ceil(length / block rows) blocks, each block's reference count is the number of heads
//     (of the cache and its sibling) that hold it, and the pool's free count is the total less the blocks held; a
//     sibling's calls leave the cache exactly as it was (copy-on-write).
// A failed check traps, so libFuzzer records the input.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "byte_reader.hpp"
#include "kvcache/kvcache.hpp"
#include "kvcache/testing/isa.hpp"
#include "kvcache/testing/reference.hpp"

namespace {

using namespace kvcache;
using kvfuzz::ByteReader;
using kvfuzz::Values;

[[noreturn]] void fail(const char* what, long a = 0, long b = 0) {
  std::fprintf(stderr, "api_sequence_fuzzer: check failed: %s (%ld, %ld)\n", what, a, b);
  std::abort();
}
#define FUZZ_CHECK(cond, ...)                            \
  do {                                                   \
    if (!(cond)) fail(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

enum class Kind { kFull, kStreaming, kStreamingInCache, kH2O, kVATP, kL2, kSnapKV, kFastGen, kDMC, kCount };

// What the checks may assume of a policy.
struct Traits {
  bool rows_exact = true;       // stored K and V are the appended rows (no re-rotation or merging)
  bool keys_exact = true;       // the keys too (StreamingLLM in-cache re-rotates its sink keys)
  bool protects = false;        // the budget's sinks and recent window are never evicted
  bool decode_bounded = false;  // after a decode step: length <= budget.total + slack
};

Traits traits(Kind k) {
  Traits t;
  switch (k) {
    case Kind::kStreamingInCache:
      t.keys_exact = false;
      [[fallthrough]];
    case Kind::kStreaming:
    case Kind::kH2O:
    case Kind::kVATP:
      t.protects = t.decode_bounded = true;
      break;
    case Kind::kL2:
    case Kind::kSnapKV:
      t.protects = true;
      break;
    case Kind::kDMC:
      t.rows_exact = t.keys_exact = false;
      break;
    default:
      break;
  }
  return t;
}

Count random_count(ByteReader& in) {
  if (in.chance(2)) return Count::fraction(in.in(0, 100) / 100.0, in.chance(2) ? Rounding::kCeil : Rounding::kFloor);
  return Count::of(in.in(-1, 40));
}

// The scores a policy exports for (layer, KV head), whichever way it keeps them.
template <class Cache>
std::vector<float> all_scores(const Cache& c, int l, int h) {
  try {
    auto s = c.scores(l, h);
    return {s.begin(), s.end()};
  } catch (const Error&) {
    std::vector<float> out;
    const int g = c.config().shape.group_size();
    for (int i = 0; i < g; ++i) {
      auto s = c.query_head_scores(l, h * g + i);
      out.insert(out.end(), s.begin(), s.end());
    }
    return out;
  }
}

struct Snapshot {
  std::vector<std::int64_t> ints;
  std::vector<Position> positions;
  std::vector<float> scores;
  bool operator==(const Snapshot& o) const {
    if (ints != o.ints || positions != o.positions || scores.size() != o.scores.size()) return false;
    for (std::size_t i = 0; i < scores.size(); ++i)  // bitwise, so that a NaN equals itself
      if (std::memcmp(&scores[i], &o.scores[i], sizeof(float)) != 0) return false;
    return true;
  }
};

template <class Cache>
Snapshot snapshot(const Cache& c) {
  Snapshot s;
  const CacheConfig& cfg = c.config();
  s.ints.push_back(std::int64_t(c.kv_bytes()));
  for (int l = 0; l < cfg.n_layers; ++l) {
    s.ints.push_back(c.prompt_length(l));
    for (int h = 0; h < cfg.shape.n_kv_heads; ++h) {
      const ResolvedBudget b = c.budget(l, h);
      s.ints.insert(s.ints.end(), {c.length(l, h), b.total, b.recent, b.sinks});
      auto p = c.layer(l).positions(h);
      s.positions.insert(s.positions.end(), p.begin(), p.end());
      auto sc = all_scores(c, l, h);
      s.scores.insert(s.scores.end(), sc.begin(), sc.end());
    }
  }
  return s;
}

// A row of n elements as the storage dtype keeps it, in double: rounded (f16, bf16), or quantized with its row scale
// (i8), as reference::detail::head_rows reads it back.
std::vector<double> stored_row(DType t, const float* x, int n);

// Rounds x as the storage dtype does.
float stored(DType t, float x) {
  switch (t) {
    case DType::kF16:
      return f16_bits_to_f32(f32_to_f16_bits(x));
    case DType::kBF16:
      return bf16_bits_to_f32(f32_to_bf16_bits(x));
    default:
      return x;
  }
}

std::vector<double> stored_row(DType t, const float* x, int n) {
  std::vector<double> out(static_cast<std::size_t>(n));
  if (t == DType::kI8) {
    std::vector<kvcache::i8> q(static_cast<std::size_t>(n));
    const float sc = kvcache::quantize_row_i8(x, std::size_t(n), q.data());
    for (int e = 0; e < n; ++e) out[std::size_t(e)] = double(q[std::size_t(e)]) * double(sc);
  } else {
    for (int e = 0; e < n; ++e) out[std::size_t(e)] = double(stored(t, x[e]));
  }
  return out;
}

template <class P>
class Program {
 public:
  // block_rows > 0: paged storage on a pool of n_blocks blocks.
  Program(ByteReader& in, const CacheConfig& cfg, P policy, const KVCacheOptions& opt, Kind kind, int block_rows,
          int n_blocks)
      : in_(in),
        cfg_(cfg),
        opt_(opt),
        t_(traits(kind)),
        full_(kind == Kind::kFull),
        merges_(kind == Kind::kDMC),
        pool_(block_rows > 0 ? std::make_unique<BlockPool>(cfg.shape, cfg.dtype, block_rows, n_blocks) : nullptr),
        cache_(pool_ ? KVCache<P>(cfg, *pool_, policy, opt) : KVCache<P>(cfg, policy, opt)),
        values_(in.u32()),
        shadow_(std::size_t(cfg.n_layers)),
        gone_(std::size_t(cfg.n_layers) * std::size_t(cfg.shape.n_kv_heads)) {}

  void run() {
    for (int step = 0; step < 48 && !in_.empty(); ++step) {
      const int op = in_.in(0, 11);
      const Snapshot before = snapshot(cache_);
      bool threw = false, must_throw = false;
      try {
        switch (op) {
          case 0:
          case 1:
          case 2:
            must_throw = prefill();
            break;
          case 3:
          case 4:
          case 5:
            must_throw = decode();
            break;
          case 6:
            read_prefill();
            break;
          case 7:
            read_decode();
            break;
          case 8:
            if (in_.chance(4)) {
              cache_.reset();
              for (auto& m : shadow_) m.clear();
              std::fill(truncated_to_.begin(), truncated_to_.end(), Position(-1));
              for (auto& g : gone_) g.clear();
              decoded_.clear();
            }
            break;
          case 9:
            must_throw = truncate();
            break;
          case 10:
            sibling();
            break;
          default:
            lookups();
            break;
        }
      } catch (const Error& e) {
        threw = true;
        if (std::getenv("KVFUZZ_VERBOSE") != nullptr)
          std::fprintf(stderr, "%s, op %d: %s\n", std::string(P::kName).c_str(), op, e.what());
      }
      if (threw) {
        FUZZ_CHECK(snapshot(cache_) == before, op);
      } else {
        FUZZ_CHECK(!must_throw, op);
        check_state();
      }
    }
  }

 private:
  struct Row {
    std::vector<float> k, v;  // [n_kv_heads, d]
  };

  int dk() const { return cfg_.shape.head_dim_k; }
  int dv() const { return cfg_.shape.dim_v(); }
  int n_kv() const { return cfg_.shape.n_kv_heads; }
  int n_q() const { return cfg_.shape.n_q_heads; }
  int pick_layer() { return in_.chance(16) ? in_.in(-1, cfg_.n_layers) : in_.in(0, cfg_.n_layers - 1); }
  bool layer_ok(int l) const { return l >= 0 && l < cfg_.n_layers; }
  // The newest position appended to layer l since the last reset (-1: none, or no such layer).
  // After truncate(n) the cache's newest is newest - n, whether or not a row sits there (positions may skip).
  Position newest(int l) const {
    if (!layer_ok(l)) return -1;
    const Position held = shadow_[std::size_t(l)].empty() ? -1 : shadow_[std::size_t(l)].rbegin()->first;
    return std::max(held, truncated_to_[std::size_t(l)]);
  }
  // A dimension that is usually right.
  int dim(int right) { return in_.chance(24) ? std::max(0, right + in_.in(-1, 1)) : right; }

  std::vector<float> fill(std::size_t n, bool& poisoned) {
    std::vector<float> x(n);
    for (float& e : x) e = values_.next();
    if (opt_.check_finite && n > 0 && in_.chance(24)) {
      x[in_.u16() % n] = in_.chance(2) ? NAN : INFINITY;
      poisoned = true;
    }
    return x;
  }

  std::vector<Position> positions(int l, std::int64_t m, bool& bad) {
    std::vector<Position> p(static_cast<std::size_t>(m));
    const Position before = newest(l);
    Position next = before + 1;
    for (auto& e : p) {
      next += in_.chance(4) ? in_.in(0, 3) : 0;
      e = next++;
    }
    if (m > 0 && in_.chance(16)) p[in_.u16() % std::size_t(m)] = in_.in(-3, 8);
    for (std::size_t i = 0; i < p.size(); ++i)
      if (p[i] < 0 || p[i] <= (i == 0 ? before : p[i - 1])) bad = true;
    return p;
  }

  // Returns whether the call's input breaks the contract (so it must throw).
  bool prefill() {
    const int l = pick_layer();
    const std::int64_t m = in_.in(0, 12);
    const bool last = !in_.chance(4);
    bool bad = !layer_ok(l);
    const int kh = dim(n_kv()), kd = dim(dk()), qh = dim(n_q()), qd = dim(dk()), od = dim(dv());
    if (kh != n_kv() || kd != dk() || qh != n_q() || qd != dk() || od != dv()) bad = true;
    std::vector<float> k = fill(std::size_t(kh) * m * kd, bad), v = fill(std::size_t(kh) * m * dv(), bad),
                       q = fill(std::size_t(m) * qh * qd, bad), out(std::size_t(m) * qh * od, NAN);
    const auto pos = positions(l, m, bad);
    cache_.prefill(l, ConstTensorView<float, 3>(k.data(), kh, m, kd), ConstTensorView<float, 3>(v.data(), kh, m, dv()),
                   pos, ConstTensorView<float, 3>(q.data(), m, qh, qd), TensorView<float, 3>(out.data(), m, qh, od),
                   last);
    if (bad) return true;
    for (std::int64_t t = 0; t < m; ++t) {
      Row r{std::vector<float>(std::size_t(n_kv() * dk())), std::vector<float>(std::size_t(n_kv() * dv()))};
      for (int h = 0; h < n_kv(); ++h) {
        for (int e = 0; e < dk(); ++e) r.k[std::size_t(h * dk() + e)] = k[std::size_t((h * m + t) * dk() + e)];
        for (int e = 0; e < dv(); ++e) r.v[std::size_t(h * dv() + e)] = v[std::size_t((h * m + t) * dv() + e)];
      }
      appended(l, pos[std::size_t(t)], std::move(r));
    }
    check_finite_out(out);
    if (full_) compare_prefill(l, q, out, m);
    decoded_[l] = false;
    return false;
  }

  bool decode() {
    const int l = pick_layer();
    bool bad = !layer_ok(l);
    const int kh = dim(n_kv()), kd = dim(dk()), qh = dim(n_q()), qd = dim(dk()), od = dim(dv());
    if (kh != n_kv() || kd != dk() || qh != n_q() || qd != dk() || od != dv()) bad = true;
    std::vector<float> k = fill(std::size_t(kh) * kd, bad), v = fill(std::size_t(kh) * dv(), bad),
                       q = fill(std::size_t(qh) * qd, bad), out(std::size_t(qh) * od, NAN);
    const auto pos = positions(l, 1, bad);
    cache_.decode(l, ConstTensorView<float, 2>(k.data(), kh, kd), ConstTensorView<float, 2>(v.data(), kh, dv()), pos[0],
                  ConstTensorView<float, 2>(q.data(), qh, qd), TensorView<float, 2>(out.data(), qh, od));
    if (bad) return true;
    appended(l, pos[0], Row{k, v});
    check_finite_out(out);
    if (full_) compare_decode(l, q, out);
    decoded_[l] = true;
    return false;
  }

  void read_prefill() {
    const int l = pick_layer();
    const std::int64_t m = in_.in(0, 12);
    bool bad = false;
    std::vector<float> q = fill(std::size_t(m) * n_q() * dk(), bad), out(std::size_t(m) * n_q() * dv(), NAN);
    cache_.read_prefill(l, ConstTensorView<float, 3>(q.data(), m, n_q(), dk()),
                        TensorView<float, 3>(out.data(), m, n_q(), dv()));
    FUZZ_CHECK(!bad);
    check_finite_out(out);
    if (full_) compare_prefill(l, q, out, m);
  }

  void read_decode() {
    const int l = pick_layer();
    bool bad = false;
    std::vector<float> q = fill(std::size_t(n_q()) * dk(), bad), out(std::size_t(n_q()) * dv(), NAN);
    cache_.read_decode(l, ConstTensorView<float, 2>(q.data(), n_q(), dk()),
                       TensorView<float, 2>(out.data(), n_q(), dv()));
    FUZZ_CHECK(!bad);
    check_finite_out(out);
    if (full_) compare_decode(l, q, out);
    decoded_[l] = true;
  }

  // Every lookup answers for valid indices and throws for invalid ones.
  void lookups() {
    const int l = in_.in(-1, cfg_.n_layers), h = in_.in(-1, n_kv()), qh = in_.in(-1, n_q());
    const bool ok = layer_ok(l) && h >= 0 && h < n_kv();
    int thrown = 0, which = 0, bit = 1;
    auto probe = [&](auto f) {
      try {
        f();
      } catch (const Error&) {
        ++thrown;
        which |= bit;
      }
      bit <<= 1;
    };
    probe([&] { (void)cache_.length(l, h); });
    probe([&] { (void)cache_.budget(l, h); });
    probe([&] { (void)cache_.kv_bytes(l, h); });
    probe([&] { (void)all_scores(cache_, l, h); });
    FUZZ_CHECK(thrown == (ok ? 0 : 4), which, l * 100 + h);
    thrown = 0;
    probe([&] { (void)cache_.prompt_length(l); });
    probe([&] { (void)cache_.layer(l); });
    probe([&] { (void)cache_.columns(l); });
    probe([&] { (void)cache_.kv_bytes(l); });
    FUZZ_CHECK(thrown == (layer_ok(l) ? 0 : 4), thrown, l);
    thrown = 0;
    probe([&] { (void)cache_.query_head_scores(layer_ok(l) ? l : 0, qh); });
    FUZZ_CHECK(thrown == (qh >= 0 && qh < n_q() ? 0 : 1), thrown, qh);
  }

  void appended(int l, Position p, Row r) { shadow_[std::size_t(l)][p] = std::move(r); }

  // truncate(n): the newest n positions of every layer go (the shadow and the evicted sets forget them).
  bool truncate() {
    const std::int64_t n = in_.in(-1, 6);
    bool bad = n < 0 || (merges_ && n >= 0);
    for (int l = 0; l < cfg_.n_layers; ++l) bad = bad || n > std::int64_t(newest(l)) + 1;
    cache_.truncate(n);
    if (bad) return true;
    for (int l = 0; l < cfg_.n_layers && n > 0; ++l) {
      const Position from = Position(std::int64_t(newest(l)) + 1 - n);
      truncated_to_[std::size_t(l)] = from - 1;
      auto& shadow = shadow_[std::size_t(l)];
      shadow.erase(shadow.lower_bound(from), shadow.end());
      for (int h = 0; h < n_kv(); ++h) {
        auto& gone = gone_[std::size_t(l * n_kv() + h)];
        gone.erase(gone.lower_bound(from), gone.end());
      }
    }
    return false;
  }

  // fork(): a sibling that shares the cache's blocks; later calls decode tokens of its own in it (at positions far
  // above the cache's), truncate it or drop it. None of it may change the cache.
  void sibling() {
    if (!pool_) return;
    const Snapshot before = snapshot(cache_);
    try {
      if (!sibling_) {
        sibling_.emplace(cache_.fork());
        shared_ = true;
      } else if (in_.chance(6)) {
        sibling_.reset();
      } else if (in_.chance(5)) {
        sibling_->truncate(in_.in(0, 2));
      } else {
        bool poisoned = false;
        std::vector<float> k = fill(std::size_t(n_kv()) * dk(), poisoned),
                           v = fill(std::size_t(n_kv()) * dv(), poisoned),
                           q = fill(std::size_t(n_q()) * dk(), poisoned), out(std::size_t(n_q()) * dv());
        const int l = in_.in(0, cfg_.n_layers - 1);
        sibling_->decode(l, ConstTensorView<float, 2>(k.data(), n_kv(), dk()),
                         ConstTensorView<float, 2>(v.data(), n_kv(), dv()), sibling_next_++,
                         ConstTensorView<float, 2>(q.data(), n_q(), dk()),
                         TensorView<float, 2>(out.data(), n_q(), dv()));
      }
    } catch (const Error&) {
    }
    FUZZ_CHECK(snapshot(cache_) == before);
  }

  void check_pool() const {
    if (!pool_) return;
    std::vector<int> holders(std::size_t(pool_->blocks_total()), 0);
    auto count = [&](const KVCache<P>& c) {
      for (int l = 0; l < cfg_.n_layers; ++l)
        for (int h = 0; h < n_kv(); ++h) {
          const auto ids = c.layer(l).block_ids(h);
          FUZZ_CHECK(std::int64_t(ids.size()) == (c.length(l, h) + pool_->block_rows() - 1) / pool_->block_rows());
          for (std::int32_t b : ids) ++holders[std::size_t(b)];
        }
    };
    count(cache_);
    if (sibling_) count(*sibling_);
    std::int64_t live = 0;
    for (std::int32_t b = 0; b < pool_->blocks_total(); ++b) {
      FUZZ_CHECK(pool_->refs(b) == holders[std::size_t(b)], long(b));
      live += holders[std::size_t(b)] > 0;
    }
    FUZZ_CHECK(pool_->blocks_free() == pool_->blocks_total() - live);
  }

  void check_finite_out(const std::vector<float>& out) const {
    for (float x : out) FUZZ_CHECK(std::isfinite(x));
  }

  static double tolerance(double ref) { return 2e-3 + 2e-3 * std::abs(ref); }

  void compare_decode(int l, const std::vector<float>& q, const std::vector<float>& out) {
    std::vector<float> ref(out.size());
    reference::decode_attention(cache_.layer(l), ConstTensorView<float, 2>(q.data(), n_q(), dk()),
                                TensorView<float, 2>(ref.data(), n_q(), dv()), opt_.softmax_scale);
    for (std::size_t i = 0; i < ref.size(); ++i) FUZZ_CHECK(std::abs(out[i] - ref[i]) <= tolerance(ref[i]), long(i));
  }

  void compare_prefill(int l, const std::vector<float>& q, const std::vector<float>& out, std::int64_t m) {
    std::vector<float> ref(out.size());
    reference::prefill_attention(cache_.layer(l), ConstTensorView<float, 3>(q.data(), m, n_q(), dk()),
                                 TensorView<float, 3>(ref.data(), m, n_q(), dv()), opt_.softmax_scale);
    for (std::size_t i = 0; i < ref.size(); ++i) FUZZ_CHECK(std::abs(out[i] - ref[i]) <= tolerance(ref[i]), long(i));
  }

  void check_state() {
    check_pool();
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const LayerSlots& slots = cache_.layer(l);
      const auto& shadow = shadow_[std::size_t(l)];
      for (int h = 0; h < n_kv(); ++h) {
        const std::int64_t n = cache_.length(l, h);
        FUZZ_CHECK(n >= 0 && n <= cfg_.capacity, long(n));
        const auto pos = slots.positions(h);
        FUZZ_CHECK(std::int64_t(pos.size()) == n);
        // Compaction moves the last rows into the holes, so a head's positions are distinct but not sorted.
        std::vector<Position> sorted(pos.begin(), pos.end());
        std::sort(sorted.begin(), sorted.end());
        FUZZ_CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
        for (float s : all_scores(cache_, l, h)) FUZZ_CHECK(std::isfinite(s) && s >= 0.0f);
        if (t_.rows_exact) check_rows(slots, shadow, h, pos);
        const ResolvedBudget b = cache_.budget(l, h);
        auto& gone = gone_[std::size_t(l * n_kv() + h)];
        if (t_.protects && !b.unlimited() && b.total >= b.sinks + b.recent) check_protected(l, h, b, pos, gone);
        // What this call evicted joins what earlier calls did.
        for (const auto& [p, row] : shadow)
          if (std::find(pos.begin(), pos.end(), p) == pos.end()) gone.insert(p);
        // (A cache that shared blocks with a sibling may wait with an eviction when the pool has no block to copy.)
        if (t_.decode_bounded && decoded_[l] && !b.unlimited() && opt_.readers == 1 && !shared_)
          FUZZ_CHECK(n <= b.total + opt_.eviction_slack, long(n), long(b.total));
      }
    }
  }

  void check_rows(const LayerSlots& slots, const std::map<Position, Row>& shadow, int h,
                  std::span<const Position> pos) const {
    Eigen::MatrixXd k, v;
    reference::detail::head_rows(slots, h, k, v);
    for (std::size_t i = 0; i < pos.size(); ++i) {
      auto it = shadow.find(pos[i]);
      FUZZ_CHECK(it != shadow.end(), long(pos[i]));
      const Row& r = it->second;
      if (t_.keys_exact) {
        const auto want = stored_row(cfg_.dtype, r.k.data() + std::size_t(h * dk()), dk());
        for (int e = 0; e < dk(); ++e) FUZZ_CHECK(k(long(i), e) == want[std::size_t(e)], long(i), e);
      }
      // The latent layout's values are the head of the key row (quantized with it, for i8).
      if (slots.values_in_keys()) continue;
      const auto want = stored_row(cfg_.dtype, r.v.data() + std::size_t(h * dv()), dv());
      for (int e = 0; e < dv(); ++e) FUZZ_CHECK(v(long(i), e) == want[std::size_t(e)], long(i), e);
    }
  }

  // The rows the budget protects now are still there, unless an earlier call evicted them: a budget that grew (a
  // later prompt of a multi-turn sequence re-resolves a budget given as a fraction) protects positions already gone.
  void check_protected(int l, int h, const ResolvedBudget& b, std::span<const Position> pos,
                       const std::set<Position>& gone) const {
    const auto has = [&](Position p) { return gone.count(p) || std::find(pos.begin(), pos.end(), p) != pos.end(); };
    // The sinks are the positions below budget.sinks (policy/select.hpp), those of a sequence's first tokens.
    const auto& shadow = shadow_[std::size_t(l)];
    for (auto it = shadow.begin(); it != shadow.end() && it->first < b.sinks; ++it)
      FUZZ_CHECK(has(it->first), long(it->first), l * 100 + h);
    // The recent window is measured in positions: those within `recent` of the newest (fewer than `recent` rows when
    // the sequence skips positions).
    if (b.recent <= 0 || shadow.empty()) return;
    const std::int64_t from = std::int64_t{newest(l)} - b.recent + 1;
    for (auto it = shadow.rbegin(); it != shadow.rend() && it->first >= from; ++it)
      FUZZ_CHECK(has(it->first), long(it->first), l * 100 + h);
  }

  ByteReader& in_;
  CacheConfig cfg_;
  KVCacheOptions opt_;
  Traits t_;
  bool full_, merges_;
  std::unique_ptr<BlockPool> pool_;  // paged storage (declared first: the caches go before it)
  KVCache<P> cache_;
  std::optional<KVCache<P>> sibling_;                                  // a fork of cache_
  std::vector<Position> truncated_to_ = std::vector<Position>(2, -1);  // per layer: the newest after a truncate
  Position sibling_next_ = 1 << 20;  // the sibling's positions: above any the cache takes
  bool shared_ = false;              // cache_ has shared blocks with a sibling
  Values values_;
  std::vector<std::map<Position, Row>> shadow_;  // per layer: every row appended since the last reset
  std::vector<std::set<Position>> gone_;         // per (layer, KV head): the positions evicted since the last reset
  std::map<int, bool> decoded_;                  // per layer: the last call that appended was a decode step
};

template <class P>
void run(ByteReader& in, const CacheConfig& cfg, const KVCacheOptions& opt, Kind kind, P policy) {
  std::optional<Program<P>> program;
  const int block_rows = in.chance(2) ? (in.chance(2) ? 16 : 32) : 0;
  const int n_blocks = in.in(1, 24);
  try {
    program.emplace(in, cfg, std::move(policy), opt, kind, block_rows, n_blocks);
  } catch (const Error&) {
    return;  // a configuration the cache rejects
  }
  program->run();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  ByteReader in(data, size);
  const auto isas = available_isas();
  set_isa_for_testing(isas[in.byte() % isas.size()]);

  const Kind kind = static_cast<Kind>(in.byte() % int(Kind::kCount));
  CacheConfig cfg;
  cfg.n_layers = in.in(1, 2);
  cfg.shape.n_kv_heads = in.in(1, 3);
  cfg.shape.n_q_heads = cfg.shape.n_kv_heads * (in.chance(4) ? 8 : in.in(1, 3));
  static constexpr int kDims[] = {1, 2, 3, 8, 16, 17, 32};
  cfg.shape.head_dim_k = kDims[in.byte() % 7];
  cfg.capacity = in.in(0, 48);
  cfg.dtype = static_cast<DType>(in.byte() % 4);
  KVCacheOptions opt;
  opt.eviction_slack = in.in(0, 3);
  opt.check_finite = !in.chance(8);
  opt.readers = in.chance(4) ? 2 : 1;
  opt.max_threads = in.in(0, 2);
  if (in.chance(4)) opt.softmax_scale = float(in.in(1, 100)) / 50.0f;
  if (kind == Kind::kStreamingInCache || kind == Kind::kDMC || in.chance(2)) opt.rope = RopeConfig{};
  // Chosen by the input's length rather than a byte, so that the committed inputs keep decoding as they did.
  opt.compress_each_chunk = in.size() % 3 == 0;

  try {
    switch (kind) {
      case Kind::kFull:
        return run(in, cfg, opt, kind, Full{}), 0;
      case Kind::kStreaming:
      case Kind::kStreamingInCache: {
        const auto mode =
            kind == Kind::kStreaming ? StreamingLLM::Positions::kOriginal : StreamingLLM::Positions::kInCache;
        return run(in, cfg, opt, kind, StreamingLLM(in.in(-1, 6), in.in(0, 24), mode)), 0;
      }
      case Kind::kH2O:
        return run(in, cfg, opt, kind, H2O(random_count(in), random_count(in), GqaReduce(in.byte() % 3))), 0;
      case Kind::kVATP:
        return run(in, cfg, opt, kind, VATP(random_count(in), random_count(in), in.in(0, 4), GqaReduce(in.byte() % 3))),
               0;
      case Kind::kL2: {
        std::vector<int> skip;
        if (in.chance(3)) skip.push_back(in.in(0, 1));
        const auto mode = in.chance(2) ? L2Norm::Mode::kOnce : L2Norm::Mode::kEveryStep;
        return run(in, cfg, opt, kind, L2Norm(random_count(in), skip, mode, in.in(0, 4), in.in(0, 8))), 0;
      }
      case Kind::kSnapKV: {
        SnapKV p(random_count(in), in.in(0, 8), 2 * in.in(0, 4) + (in.chance(16) ? 0 : 1),
                 in.chance(2) ? SnapKV::Pooling::kMax : SnapKV::Pooling::kAvg, GqaReduce(in.byte() % 3));
        p.pool_each_query_head = in.chance(2);
        return run(in, cfg, opt, kind, p), 0;
      }
      case Kind::kFastGen: {
        const int period = in.in(1, 7);
        FastGen p(in.in(1, 100) / 100.0, [period](Position pos) {
          return pos % period == 0 ? TokenClass::kSpecial
                                   : (pos % 3 == 0 ? TokenClass::kPunctuation : TokenClass::kOther);
        });
        return run(in, cfg, opt, kind, p), 0;
      }
      case Kind::kDMC: {
        DMC p = in.chance(2) ? DMC::official() : DMC::paper();
        p.window = in.in(0, 6);
        p.key_offset = float(in.in(-4, 4)) / 4.0f;  // keys in [-1, 1): merges happen for some rows, not all
        return run(in, cfg, opt, kind, p), 0;
      }
      default:
        return 0;
    }
  } catch (const Error&) {
    return 0;  // a policy constructor rejected its parameters
  }
}
