#pragma once

// KVCache<Policy>: the engine-facing cache of one sequence across all layers.
//
// Per layer and step the engine calls prefill() (once per prompt chunk) or decode() with the step's projected,
// already-rotated (RoPE at the token's original position) keys, values and queries. The cache runs
//   append -> policy hooks -> attention (exporting the scores the policy needs) -> policy hooks -> rank -> select
//   -> compact
// (prefill compresses after the prompt's last chunk, or after each chunk with KVCacheOptions::compress_each_chunk;
// decode after a step that leaves a head over budget + slack).
// Everything a paper does beyond ranking lives in its policy header, behind the hooks of policy/policy.hpp; per-slot
// state lives in one table of columns (policy/slot_columns.hpp) that moves with the rows.
//
// Shapes: prefill k, v: [n_kv_heads, m, head_dim]; q, out: [m, n_q_heads, head_dim]; positions: [m].
//         decode  k, v: [n_kv_heads, head_dim];    q, out: [n_q_heads, head_dim];    one position.
// MLA (AttentionShape::values_in_keys, attention/mla.hpp): k rows are [latent | RoPE key], v is empty, q the absorbed
// queries and out the latent sums; set KVCacheOptions::softmax_scale. YOCO: one cache layer read by several model
// layers (KVCacheOptions::readers, read_prefill, read_decode; cache/shared_reads.hpp).
// Storage is dense (capacity rows per head, allocated by the constructor) or paged on a BlockPool shared with other
// sequences (heads take blocks as they grow and return them as the policy evicts; fork() shares them copy-on-write;
// truncate() takes back the newest tokens; docs/integration.md).
// Capacity (CacheConfig::capacity) must hold the whole prompt (it is compressed after its last chunk; with
// compress_each_chunk, budget + the longest chunk) and, during
// decode, budget + slack + 1 rows for the policy to evict before it is full (a budget above that is allowed: a cache
// sized for short sequences never reaches it; the decode step that finds a head full is an error).
// Positions are >= 0 and increase strictly within a sequence (reset() starts a new one). Every entry point checks
// layer and head indices, shapes, positions and budgets first: a kvcache::Error leaves the cache as it was.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "kvcache/attention/decode.hpp"
#include "kvcache/attention/prefill.hpp"
#include "kvcache/cache/detail/steps.hpp"
#include "kvcache/cache/eviction.hpp"
#include "kvcache/cache/options.hpp"
#include "kvcache/cache/shared_reads.hpp"
#include "kvcache/cache/workspaces.hpp"
#include "kvcache/core/budget.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/executor.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/policy/select.hpp"
#include "kvcache/storage/block_pool.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

template <class P, class Exec = SerialExecutor>
class KVCache {
  static_assert(Policy<P>,
                "kvcache: KVCache<P> needs a policy: a copyable type with `static constexpr std::string_view kName`, "
                "`PolicyNeeds needs() const`, `ResolvedBudget budget(int layer, int kv_head, std::int64_t prompt) "
                "const` and a rank() (see policy/policy.hpp)");
  static_assert(Executor<Exec>, "kvcache: the executor needs `int concurrency() const` and `parallel_for(n, f)`");
  using State = PolicyState<P>;
  using Ctx = PolicyContext<State>;

 public:
  /// Dense storage: config.capacity rows per (layer, KV head), allocated now.
  KVCache(const CacheConfig& config, P policy = P{}, KVCacheOptions options = {}, Exec exec = Exec{})
      : KVCache(config, nullptr, std::move(policy), std::move(options), std::move(exec)) {}

  /// Paged storage on `pool` (storage/block_pool.hpp), which must outlive the cache and hold rows of config's head
  /// dims, layout and dtype: heads take blocks as they grow and give them back as the policy evicts.
  /// config.capacity bounds a head's rows (it sizes the block tables, positions, per-slot columns and workspaces:
  /// about 16 bytes per slot and head, not the rows themselves).
  KVCache(const CacheConfig& config, BlockPool& pool, P policy = P{}, KVCacheOptions options = {}, Exec exec = Exec{})
      : KVCache(config, &pool, std::move(policy), std::move(options), std::move(exec)) {}

  /// Movable (a cache can live in a container of sequences); fork() is the copy.
  KVCache(KVCache&&) noexcept = default;
  KVCache(const KVCache&) = delete;
  KVCache& operator=(const KVCache&) = delete;

  /// A new sequence that continues this one: the same rows (sharing its blocks copy-on-write: a block is copied on
  /// the first write or eviction that touches it in either cache), scores, policy state and budgets. n samples of one
  /// prompt then hold the prompt's blocks once. Needs paged storage.
  [[nodiscard]] KVCache fork() const {
    KVCACHE_REQUIRE(storage_.paged(), "fork: the cache is on no block pool (build it with KVCache(config, pool, ...))");
    for (int l = 0; l < config_.n_layers; ++l) reads_.require_done(l, "fork");
    return KVCache(*this, ForkTag{});
  }

  /// Removes the newest n_tokens positions of the sequence: every row whose position is in (newest - n_tokens,
  /// newest] (with consecutive positions, the last n_tokens tokens: a speculative step's rejected drafts), in every
  /// layer, with their per-slot state; a paged head gives back the blocks it no longer needs. The next token may then
  /// take position newest - n_tokens + 1. Scores the remaining rows received from the removed tokens' queries stay
  /// (attention is not undone). Not for policies that merge tokens into rows (DMC). Throws before any change for
  /// n_tokens < 0 or past the start of the sequence.
  void truncate(std::int64_t n_tokens) {
    KVCACHE_REQUIRE(!AppendsTokens<P>, "truncate: policy '", P::kName,
                    "' merges tokens into its rows; a merged token cannot be taken back out");
    KVCACHE_REQUIRE(n_tokens >= 0, "truncate: n_tokens must be >= 0, got ", n_tokens);
    for (int l = 0; l < config_.n_layers; ++l) {
      reads_.require_done(l, "truncate");
      const Position newest = layers_[std::size_t(l)].newest;
      KVCACHE_REQUIRE(n_tokens <= std::int64_t(newest) + 1, "truncate: ", n_tokens,
                      " tokens is past the start of the sequence (layer ", l, " holds positions up to ", newest, ")");
    }
    if (n_tokens == 0) return;
    // The slots of (l, h) to drop, into that head's removal scratch.
    auto doomed = [&](int l, int h) {
      const Position from = static_cast<Position>(std::int64_t(layers_[std::size_t(l)].newest) + 1 - n_tokens);
      const auto pos = storage_.layer(l).positions(h);
      std::int32_t* drop = ws_.slice(h, config_.capacity).removals;
      std::size_t n = 0;
      for (std::size_t j = 0; j < pos.size(); ++j)
        if (pos[j] >= from) drop[n++] = static_cast<std::int32_t>(j);
      return std::span<const std::int32_t>(drop, n);
    };
    if (storage_.paged()) {
      // A fork's removal copies the shared blocks it writes into: all of them must be there before anything goes.
      std::int64_t copies = 0;
      for (int l = 0; l < config_.n_layers; ++l)
        for (int h = 0; h < config_.shape.n_kv_heads; ++h)
          copies += storage_.layer(l).removal_copies(
              h, doomed(l, h), std::span<std::int32_t>(ws_.slice(h, config_.capacity).scratch, config_.capacity));
      const BlockPool& pool = *storage_.pool();
      KVCACHE_REQUIRE(copies <= pool.blocks_free(), "block pool exhausted: truncating ", n_tokens, " tokens needs ",
                      copies, " copies of shared blocks, and ", pool.blocks_free(), " of ", pool.blocks_total(),
                      " blocks are free");
    }
    for (int l = 0; l < config_.n_layers; ++l) {
      Layer& st = layers_[std::size_t(l)];
      const Position from = static_cast<Position>(std::int64_t(st.newest) + 1 - n_tokens);
      for (int h = 0; h < config_.shape.n_kv_heads; ++h) {
        const auto drop = doomed(l, h);
        Ctx c = context(l);
        c.kv.remove(h, drop, [&](std::int64_t a, std::int64_t b) noexcept {
          c.columns.move(h, a, b);
          if constexpr (policy_hooks::kHasOnMove<P>) policy_.on_move(c, h, a, b);
        });
      }
      st.newest = from - 1;
    }
  }

  /// Whether the rows live in a BlockPool (paged), and that pool.
  [[nodiscard]] bool paged() const noexcept { return storage_.paged(); }
  [[nodiscard]] BlockPool* pool() const noexcept { return storage_.pool(); }
  /// Blocks the cache's heads hold (shared blocks count in every cache that holds them).
  [[nodiscard]] std::int64_t blocks_held() const noexcept { return storage_.blocks_held(); }

 private:
  struct ForkTag {};
  KVCache(const CacheConfig& config, BlockPool* pool, P policy, KVCacheOptions options, Exec exec)
      : config_((config.validate(), config)),
        policy_(std::move(policy)),
        needs_(policy_.needs()),
        options_(std::move(options)),
        exec_(std::move(exec)),
        settings_{config, options_.rope, options_.softmax_scale, options_.readers},
        state_(policy_hooks::make_state(policy_, settings_)),
        storage_(pool != nullptr ? SlotStorage(config, *pool) : SlotStorage(config)),
        reads_(config.n_layers, options_.readers),
        // Eviction scratch: one region, or one per KV head when an executor may evict heads at once.
        ws_(config, options_.max_threads > 0 ? options_.max_threads : exec_.concurrency(),
            exec_.concurrency() > 1 ? std::size_t(config.shape.n_kv_heads) : 1, !RanksInPlace<P>, needs_.decode_scores,
            AppendsTokens<P>),
        first_(std::size_t(config.shape.n_kv_heads), 0) {
    KVCACHE_REQUIRE(options_.eviction_slack >= 0, "eviction_slack must be >= 0, got ", options_.eviction_slack);
    KVCACHE_REQUIRE(options_.max_threads >= 0, "max_threads must be >= 0 (0 = the executor's concurrency), got ",
                    options_.max_threads);
    KVCACHE_REQUIRE(std::isfinite(options_.softmax_scale) && options_.softmax_scale >= 0.0f,
                    "softmax_scale must be finite and >= 0 (0 = 1 / sqrt(head_dim_k)), got ", options_.softmax_scale);
    const bool scores = needs_.prefill_scores || needs_.prefill_window > 0 || needs_.decode_scores;
    layers_.resize(std::size_t(config.n_layers));
    for (Layer& l : layers_) {
      l.columns = SlotColumns(config.shape.n_kv_heads, config.capacity);
      if (scores) l.columns.template add<Scores>(score_rows());
      if (scores && score_rows() > 1) l.columns.template add<ScoreMax>();
      policy_hooks::add_columns(policy_, l.columns);
      l.budgets.assign(std::size_t(config.shape.n_kv_heads), ResolvedBudget{});
    }
  }

  // fork(): the parent's state, its rows shared, workspaces of its own.
  KVCache(const KVCache& parent, ForkTag)
      : config_(parent.config_),
        policy_(parent.policy_),
        needs_(parent.needs_),
        options_(parent.options_),
        exec_(parent.exec_),
        settings_{config_, options_.rope, options_.softmax_scale, options_.readers},
        state_(parent.state_),
        storage_(LayerSlots::Share{}, parent.storage_),
        reads_(parent.reads_),
        ws_(config_, options_.max_threads > 0 ? options_.max_threads : exec_.concurrency(),
            exec_.concurrency() > 1 ? std::size_t(config_.shape.n_kv_heads) : 1, !RanksInPlace<P>, needs_.decode_scores,
            AppendsTokens<P>),
        layers_(parent.layers_),
        first_(parent.first_) {}

 public:
  [[nodiscard]] const CacheConfig& config() const noexcept { return config_; }
  [[nodiscard]] P const& policy() const noexcept { return policy_; }
  /// The policy's own state (for example FastGen's choice per head).
  [[nodiscard]] const State& policy_state() const noexcept { return state_; }
  [[nodiscard]] const LayerSlots& layer(int l) const { return storage_.layer((check_layer(l), l)); }
  /// Layer l's per-slot columns (the exported scores and the policy's own).
  [[nodiscard]] const SlotColumns& columns(int l) const { return at(l).columns; }
  [[nodiscard]] std::int64_t length(int l, int kv_head) const { return layer(l).length(check_head(kv_head)); }
  [[nodiscard]] std::size_t kv_bytes() const noexcept { return storage_.kv_bytes(); }
  [[nodiscard]] std::size_t kv_bytes(int l) const { return layer(l).kv_bytes(); }
  [[nodiscard]] std::size_t kv_bytes(int l, int kv_head) const { return layer(l).kv_bytes(check_head(kv_head)); }
  /// Bytes the cache holds beside the K/V storage, all allocated by the constructor and fixed after it: the per-slot
  /// columns, the policy's state and the workspaces.
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    std::size_t n = ws_.bytes() + state_.bytes() + first_.size() * sizeof(std::int64_t);
    for (const Layer& l : layers_) n += l.columns.bytes() + l.budgets.size() * sizeof(ResolvedBudget);
    return n;
  }
  /// The budget in force for (layer, KV head): resolved after the layer's prompt (or first decode step).
  [[nodiscard]] ResolvedBudget budget(int l, int kv_head) const {
    return at(l).budgets[std::size_t(check_head(kv_head))];
  }
  /// Accumulated scores of (layer, KV head), per slot, summed over the group's query heads (empty for policies that
  /// need none). A policy with GqaReduce::kMax keeps them per query head: read query_head_scores() instead.
  [[nodiscard]] std::span<const float> scores(int l, int kv_head) const {
    KVCACHE_REQUIRE(score_rows() == 1, "scores: policy '", P::kName,
                    "' keeps its scores per query head (GqaReduce::kMax); read query_head_scores(layer, query_head)");
    return at(l).columns.template slots<Scores>(check_head(kv_head), length(l, kv_head));
  }
  /// Accumulated scores of one query head of layer l, per slot of its KV head, for a policy with GqaReduce::kMax
  /// (empty otherwise).
  [[nodiscard]] std::span<const float> query_head_scores(int l, int q_head) const {
    check_layer(l);
    KVCACHE_REQUIRE(q_head >= 0 && q_head < config_.shape.n_q_heads, "query head ", q_head, " does not exist (",
                    config_.shape.n_q_heads, " query heads)");
    if (score_rows() == 1) return {};
    const int g = config_.shape.group_size();
    return at(l).columns.template slots<Scores>(q_head / g, length(l, q_head / g), q_head % g);
  }
  [[nodiscard]] std::int64_t prompt_length(int l) const { return at(l).prompt_length; }

  /// Forgets the sequence; the next prefill starts a new one. Nothing carries over (scores, budgets, positions).
  void reset() noexcept {
    storage_.clear();
    for (Layer& l : layers_) {
      l.columns.reset();
      std::fill(l.budgets.begin(), l.budgets.end(), ResolvedBudget{});
      l.prompt_length = 0;
      l.newest = -1;
      l.resolved = false;
    }
    reads_.reset();
    state_.reset();
  }

  /// One chunk of the prompt for one layer. last_chunk: the prompt is complete, so the policy compresses now (with
  /// KVCacheOptions::compress_each_chunk a policy that can compresses after every chunk).
  void prefill(int l, ConstTensorView<float, 3> k, ConstTensorView<float, 3> v, std::span<const Position> positions,
               ConstTensorView<float, 3> q, TensorView<float, 3> out, bool last_chunk = true) {
    Layer& st = at(l);
    const std::int64_t m = k.dimension(1), window = needs_.prefill_window;
    reads_.require_done(l, "prefill");
    KVCACHE_REQUIRE(!(last_chunk && window > 0) || window <= m, "prefill: policy '", P::kName, "' observes the last ",
                    window, " prompt queries, but the last chunk has ", m, " tokens");
    // Whether this chunk ends in a selection: the last one, or every one long enough to hold the observation window.
    const bool compresses = last_chunk || (options_.compress_each_chunk && needs_.compress_each_chunk &&
                                           needs_.compress_after_prefill && window <= m && !AppendsTokens<P>);
    check_step(q.dimension(0), q.dimension(1), q.dimension(2), out.dimension(0), out.dimension(1), out.dimension(2), m);
    storage_.layer(l).check_append(k, v, positions);
    detail::check_positions(positions, st.newest);
    if (options_.check_finite) {
      detail::check_finite(k.data(), std::size_t(k.size()), "prefill: the keys");
      detail::check_finite(v.data(), std::size_t(v.size()), "prefill: the values");
      detail::check_finite(q.data(), std::size_t(q.size()), "prefill: the queries");
    }
    if (compresses) detail::check_budgets(policy_, options_, l, config_.shape.n_kv_heads, st.prompt_length + m);
    Ctx c = context(l);
    if constexpr (AppendsTokens<P>) {
      prefill_tokens(c, k, v, positions, q, out);
    } else {
      policy_hooks::before_prefill(policy_, c, m, last_chunk);
      append_rows(l, k, v, positions);
      if (compresses && window > 0 && !needs_.prefill_scores) clear_scores(l, m);
      prefill_attention(c.kv, q, out, ws_.prefill, prefill_options(l, m, compresses), exec_);
      st.prompt_length += m;
      policy_hooks::after_prefill_attention(policy_, c, q, last_chunk);
      if (reads_.start_prefill(l, m, compresses)) finish_prefill(l);
    }
  }

  /// A further read of the prompt chunk that prefill(l, ...) just appended, by the next model layer that reads cache
  /// layer l (KVCacheOptions::readers > 1). q, out: [m, n_q_heads, head_dim]. After the last reader of the last
  /// chunk (or of every chunk, KVCacheOptions::compress_each_chunk) the policy compresses.
  void read_prefill(int l, ConstTensorView<float, 3> q, TensorView<float, 3> out) {
    check_layer(l);
    const std::int64_t m = reads_.pending_prefill(l);
    check_step(q.dimension(0), q.dimension(1), q.dimension(2), out.dimension(0), out.dimension(1), out.dimension(2), m);
    if (options_.check_finite) detail::check_finite(q.data(), std::size_t(q.size()), "read_prefill: the queries");
    prefill_attention(storage_.layer(l), q, out, ws_.prefill, prefill_options(l, m, reads_.compresses(l)), exec_);
    if (reads_.read(l)) finish_prefill(l);
  }

  /// One decode step for one layer: the new token's k, v at `position`, then attention for q.
  void decode(int l, ConstTensorView<float, 2> k, ConstTensorView<float, 2> v, Position position,
              ConstTensorView<float, 2> q, TensorView<float, 2> out) {
    Layer& st = at(l);
    const int n_kv = config_.shape.n_kv_heads;
    KVCACHE_REQUIRE(k.dimension(0) == n_kv && (v.dimension(0) == n_kv || v.size() == 0),
                    "decode: keys and values need one row per KV head (", n_kv, ")");
    reads_.require_done(l, "decode");
    check_step(1, q.dimension(0), q.dimension(1), 1, out.dimension(0), out.dimension(1), 1);
    const Position pos[1] = {position};
    if constexpr (AppendsTokens<P>) {
      // The policy decides whether the token takes a new row (its own capacity check); the shapes are checked here,
      // and on a pool the blocks a new row in every head would take (a merge into a shared block copies it: as many).
      const ConstTensorView<float, 3> k3(k.data(), k.dimension(0), 1, k.dimension(1)),
          v3(v.data(), v.dimension(0), 1, v.dimension(1));
      if (storage_.paged())
        storage_.layer(l).check_append(k3, v3, pos);
      else
        storage_.layer(l).check_shapes(k3, v3, pos);
    } else {
      KVCACHE_REQUIRE(storage_.layer(l).max_length() < config_.capacity, "decode: layer ", l,
                      " is full: 1 more row would exceed the capacity of ", config_.capacity,
                      "; a policy evicts only past its budget + eviction_slack, so the capacity must hold those + 1 "
                      "rows (policy '",
                      P::kName, "')");
      storage_.layer(l).check_append(ConstTensorView<float, 3>(k.data(), k.dimension(0), 1, k.dimension(1)),
                                     ConstTensorView<float, 3>(v.data(), v.dimension(0), 1, v.dimension(1)), pos);
    }
    detail::check_positions(pos, st.newest);
    if (options_.check_finite) {
      detail::check_finite(k.data(), std::size_t(k.size()), "decode: the keys");
      detail::check_finite(v.data(), std::size_t(v.size()), "decode: the values");
      detail::check_finite(q.data(), std::size_t(q.size()), "decode: the queries");
    }
    if (!st.resolved) resolve_budgets(l);
    Ctx c = context(l);
    if constexpr (AppendsTokens<P>) {
      decode_token(c, k.data(), v.data(), position, q.data(), out.data());
    } else {
      append_rows(l, ConstTensorView<float, 3>(k.data(), k.dimension(0), 1, k.dimension(1)),
                  ConstTensorView<float, 3>(v.data(), v.dimension(0), 1, v.dimension(1)), pos);
      policy_hooks::before_decode_attention(policy_, c, position);
      attend(l, q, out, /*last_read=*/reads_.start_decode(l));
    }
  }

  /// A further read of the token that decode(l, ...) just appended, by the next model layer that reads cache layer l
  /// (KVCacheOptions::readers > 1). q: [n_q_heads, head_dim_k], out: [n_q_heads, head_dim_v]. After the last reader
  /// the policy evicts.
  void read_decode(int l, ConstTensorView<float, 2> q, TensorView<float, 2> out) {
    check_layer(l);
    reads_.require_pending_decode(l);
    check_step(1, q.dimension(0), q.dimension(1), 1, out.dimension(0), out.dimension(1), 1);
    if (options_.check_finite) detail::check_finite(q.data(), std::size_t(q.size()), "read_decode: the queries");
    attend(l, q, out, /*last_read=*/reads_.next_is_last(l));
    reads_.read(l);
  }

 private:
  struct Layer {
    SlotColumns columns;
    std::vector<ResolvedBudget> budgets;
    std::int64_t prompt_length = 0;
    Position newest = -1;  // the newest position appended (RankInput::newest)
    bool resolved = false;
  };

  // Score rows per KV head: the group's query heads apart (GqaReduce::kMax), or their sum in one row.
  [[nodiscard]] int score_rows() const noexcept {
    return needs_.gqa_reduce == GqaReduce::kMax ? config_.shape.group_size() : 1;
  }
  void check_layer(int l) const {
    KVCACHE_REQUIRE(l >= 0 && l < config_.n_layers, "layer ", l, " does not exist (the cache has ", config_.n_layers,
                    ")");
  }
  int check_head(int h) const {
    KVCACHE_REQUIRE(h >= 0 && h < config_.shape.n_kv_heads, "KV head ", h, " does not exist (the cache has ",
                    config_.shape.n_kv_heads, ")");
    return h;
  }
  const Layer& at(int l) const { return layers_[std::size_t((check_layer(l), l))]; }
  Layer& at(int l) { return layers_[std::size_t((check_layer(l), l))]; }
  Ctx context(int l) {
    return Ctx{l, storage_.layer(l), layers_[std::size_t(l)].columns, state_, settings_, active_isa()};
  }

  void check_step(std::int64_t qt, std::int64_t qh, std::int64_t qd, std::int64_t ot, std::int64_t oh, std::int64_t od,
                  std::int64_t tokens) const {
    detail::check_step(config_.shape, qt, qh, qd, ot, oh, od, tokens);
  }
  PrefillOptions prefill_options(int l, std::int64_t m, bool compresses) {
    return detail::prefill_options(needs_, layers_[std::size_t(l)].columns, options_.softmax_scale, m, compresses);
  }
  DecodeOptions decode_options(int l) {
    return detail::decode_options(needs_, layers_[std::size_t(l)].columns, options_.softmax_scale);
  }
  void append_rows(int l, ConstTensorView<float, 3> k, ConstTensorView<float, 3> v, std::span<const Position> pos) {
    Ctx c = context(l);
    detail::append_rows(policy_, c, k, v, pos, first_, layers_[std::size_t(l)].newest);
  }
  void resolve_budgets(int l) {
    Layer& st = layers_[std::size_t(l)];
    detail::resolve_budgets(policy_, options_, l, st.prompt_length, st.budgets);
    st.resolved = true;
  }
  // A window-only policy (SnapKV) scores each selection afresh: the window sums of the chunk it compresses after
  // start from zero for the rows an earlier chunk or prompt left, as they do for the new ones.
  void clear_scores(int l, std::int64_t m) {
    SlotColumns& cols = layers_[std::size_t(l)].columns;
    const int rows = cols.template rows<Scores>();
    for (int h = 0; h < config_.shape.n_kv_heads; ++h) {
      const std::int64_t old = storage_.layer(l).length(h) - m;
      for (int r = 0; r < rows; ++r) std::fill_n(cols.template data<Scores>(h, r), old, 0.0f);
      if (float* mx = cols.template data<ScoreMax>(h); mx != nullptr) std::fill_n(mx, old, 0.0f);
    }
  }

  // A policy that stores its own rows (append_token) sees the prompt one token at a time, as its decode.
  void prefill_tokens(Ctx& c, ConstTensorView<float, 3> k, ConstTensorView<float, 3> v,
                      std::span<const Position> positions, ConstTensorView<float, 3> q, TensorView<float, 3> out) {
    const std::int64_t m = k.dimension(1);
    const int n_kv = c.kv.n_kv_heads(), dk = c.kv.head_dim_k(), dv = c.kv.head_dim_v();
    KVCACHE_REQUIRE(k.dimension(0) == n_kv && v.dimension(0) == n_kv && k.dimension(2) == dk && v.dimension(2) == dv &&
                        v.dimension(1) == m,
                    "prefill: keys are [", k.dimension(0), ", ", m, ", ", k.dimension(2), "] and values [",
                    v.dimension(0), ", ", v.dimension(1), ", ", v.dimension(2), "], expected [", n_kv, ", n, ", dk,
                    "] and [", n_kv, ", n, ", dv, "]");
    KVCACHE_REQUIRE(std::int64_t(positions.size()) == m, "prefill: ", positions.size(), " positions for ", m,
                    " tokens");
    KVCACHE_REQUIRE(c.kv.max_length() + m <= config_.capacity, "prefill: ", m,
                    " more tokens would exceed the capacity ", config_.capacity, " (a head holds ", c.kv.max_length(),
                    ")");
    if (c.kv.paged()) c.kv.check_append(k, v, positions);  // the blocks m new rows per head would take
    for (std::int64_t i = 0; i < m; ++i) {
      for (int h = 0; h < n_kv; ++h) {
        std::copy_n(&k(h, i, 0), dk, ws_.token_k.data() + std::size_t(h) * std::size_t(dk));
        std::copy_n(&v(h, i, 0), dv, ws_.token_v.data() + std::size_t(h) * std::size_t(dv));
      }
      decode_token(c, ws_.token_k.data(), ws_.token_v.data(), positions[std::size_t(i)], &q(i, 0, 0), &out(i, 0, 0));
    }
    Layer& st = layers_[std::size_t(c.layer)];
    st.prompt_length += m;
    if (!st.resolved) resolve_budgets(c.layer);
  }
  void decode_token(Ctx& c, const float* k, const float* v, Position position, const float* q, float* out) {
    if constexpr (AppendsTokens<P>) {
      const float* qa = policy_.append_token(c, k, v, position, q);
      Layer& st = layers_[std::size_t(c.layer)];
      st.newest = std::max(st.newest, position);
      const auto& sh = config_.shape;
      decode_attention(c.kv, ConstTensorView<float, 2>(qa, sh.n_q_heads, sh.head_dim_k),
                       TensorView<float, 2>(out, sh.n_q_heads, sh.dim_v()), ws_.decode, decode_options(c.layer), exec_);
    }
  }

  void finish_prefill(int l) {
    if (!reads_.compresses(l)) return;
    resolve_budgets(l);
    if (needs_.compress_after_prefill) evict(l, /*slack=*/0, /*after_prefill=*/true);
  }

  // A decode step's attention over layer l; after the step's last read, the eviction. Each head is evicted in the
  // attention task that finished it (DecodeOptions::head_done), while the scores the step just added are still in
  // that core's cache; the result is that of evicting every head after the step. That needs a scratch region per
  // head once tasks run at once; an executor whose concurrency grew past 1 after the cache was made (OpenMP's thread
  // count can change) gets the eviction after the step instead.
  void attend(int l, ConstTensorView<float, 2> q, TensorView<float, 2> out, bool last_read) {
    DecodeOptions opt = decode_options(l);
    const bool evicts = last_read && needs_.evict_during_decode;
    const bool in_tasks = ws_.regions > 1 || exec_.concurrency() <= 1;
    struct Hook {
      KVCache* self;
      int layer;
    } hook{this, l};
    if (evicts && in_tasks) {
      opt.head_done = [](void* c, int h) noexcept {
        auto* e = static_cast<Hook*>(c);
        e->self->evict_head(e->layer, h, e->self->options_.eviction_slack, /*after_prefill=*/false);
      };
      opt.head_done_context = &hook;
    }
    decode_attention(storage_.layer(l), q, out, ws_.decode, opt, exec_);
    if (evicts && !in_tasks) evict(l, options_.eviction_slack, /*after_prefill=*/false);
  }

  void evict(int l, std::int64_t slack, bool after_prefill) {
    for (int h = 0; h < config_.shape.n_kv_heads; ++h) evict_head(l, h, slack, after_prefill);
  }
  // Ranks, selects and compacts head h of layer l (cache/eviction.hpp). Different heads may be evicted at once.
  void evict_head(int l, int h, std::int64_t slack, bool after_prefill) {
    Layer& st = layers_[std::size_t(l)];
    RankInput in;
    in.layer = l;
    in.kv_head = h;
    in.prompt_length = st.prompt_length;
    in.newest = st.newest;
    in.after_prefill = after_prefill;
    const bool refresh_max = after_prefill || !needs_.decode_scores;
    Ctx c{l, storage_.layer(l), st.columns, state_, settings_, active_isa()};
    evict_rows(policy_, c, in, st.budgets[std::size_t(h)], slack, refresh_max, ws_.slice(h, config_.capacity));
  }

  CacheConfig config_;
  P policy_;
  PolicyNeeds needs_;
  KVCacheOptions options_;
  Exec exec_;
  CacheSettings settings_;
  State state_;
  SlotStorage storage_;
  SharedReads reads_;
  CacheWorkspaces ws_;
  std::vector<Layer> layers_;
  std::vector<std::int64_t> first_;  // append_rows: each head's length before the append
};

}  // namespace kvcache
