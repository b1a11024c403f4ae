#pragma once

// KVCache<Policy>: the engine-facing cache of one sequence across all layers (design.md 3 and 4).
//
// Per layer and step the engine calls prefill() (once per prompt chunk) or decode() with the step's projected,
// already-rotated (RoPE at the token's original position) keys, values and queries; the cache appends the rows,
// runs attention with the library's kernels, feeds the policy what it declared it needs (scores exported by the
// kernels, value or key norms taken at append), and evicts down to the budget:
//   prefill: append -> prefill attention (column sums if needed) -> [last chunk] rank -> select -> compact
//   decode:  append -> decode attention (probabilities if needed) -> if over budget + slack: rank -> select -> compact
// Per-slot data (positions in storage; scores and norms here) moves with the rows when storage compacts.
//
// Shapes: prefill k, v: [n_kv_heads, m, head_dim]; q, out: [m, n_q_heads, head_dim]; positions: [m].
//         decode  k, v: [n_kv_heads, head_dim];    q, out: [n_q_heads, head_dim];    one position.
// MLA (AttentionShape::values_in_keys, attention/mla.hpp): k rows are [latent | RoPE key], v is empty, q the absorbed
// queries and out the latent sums; set KVCacheOptions::softmax_scale. YOCO: one cache layer read by several model
// layers (KVCacheOptions::readers, read_prefill, read_decode).
// Capacity (CacheConfig::capacity) must hold the whole prompt (it is compressed after its last chunk) and, during
// decode, budget + slack + 1 rows. Errors in shapes or budgets throw kvcache::Error before anything changes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "kvcache/attention/decode.hpp"
#include "kvcache/attention/dispatch.hpp"
#include "kvcache/attention/prefill.hpp"
#include "kvcache/attention/profile.hpp"
#include "kvcache/core/budget.hpp"
#include "kvcache/core/config.hpp"
#include "kvcache/core/executor.hpp"
#include "kvcache/core/rope.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/policy/select.hpp"
#include "kvcache/storage/slot_storage.hpp"

namespace kvcache {

struct KVCacheOptions {
  /// Batched eviction (design.md 3.6): during decode a head may grow to budget + slack before it is cut back to the
  /// budget. 0 evicts every step, as the papers do.
  std::int64_t eviction_slack = 0;
  /// The model's RoPE; needed only by policies with in-cache positions (StreamingLLM's default mode).
  std::optional<RopeConfig> rope;
  /// Optional per-(layer, KV head) override of the policy's budget, e.g. to give some layers more.
  std::function<ResolvedBudget(int layer, int kv_head, ResolvedBudget policy_budget)> budget_override;
  /// Threads the kernels may use (the executor's concurrency is capped by this when sizing workspaces).
  int max_threads = 1;
  /// Softmax scale of attention; 0 means 1 / sqrt(head_dim_k). MLA needs 1 / sqrt(qk_nope + qk_rope), which differs
  /// from the latent row's width (MlaShape::softmax_scale()).
  float softmax_scale = 0.0f;
  /// Attention calls per step on each cache layer: 1, or more for a cache that several model layers read (YOCO's
  /// global cache, read by every cross-decoder layer). prefill()/decode() make the first read; read_prefill()/
  /// read_decode() the others, in layer order; scores add up over all reads, and eviction waits for the last one.
  int readers = 1;
};

template <class P, class Exec = SerialExecutor>
class KVCache {
  static_assert(Policy<P>,
                "kvcache: KVCache<P> needs a policy: a copyable type with `static constexpr std::string_view kName`, "
                "`PolicyNeeds needs() const`, `ResolvedBudget budget(int layer, int kv_head, std::int64_t prompt) "
                "const` and `void rank(RankInput const&, std::span<float>) const` (see policy/policy.hpp)");
  static_assert(Executor<Exec>, "kvcache: the executor needs `int concurrency() const` and `parallel_for(n, f)`");

 public:
  KVCache(const CacheConfig& config, P policy = P{}, KVCacheOptions options = {}, Exec exec = Exec{})
      : config_((config.validate(), config)),
        policy_(std::move(policy)),
        needs_(policy_.needs()),
        options_(std::move(options)),
        exec_(std::move(exec)),
        storage_(config),
        prefill_ws_(config.shape, std::max(1, options_.max_threads)),
        decode_ws_(config.shape, config.capacity, std::max(1, options_.max_threads), needs_.decode_scores) {
    KVCACHE_REQUIRE(options_.eviction_slack >= 0, "eviction_slack must be >= 0, got ", options_.eviction_slack);
    KVCACHE_REQUIRE(!(config.shape.values_in_keys && needs_.merge_on_append), "policy '", P::kName,
                    "' merges pre-RoPE keys per KV head, which the latent layout (MLA) does not have");
    KVCACHE_REQUIRE(options_.readers >= 1, "readers must be >= 1, got ", options_.readers);
    KVCACHE_REQUIRE(options_.readers == 1 || !needs_.merge_on_append, "policy '", P::kName,
                    "' merges each new token into the step's attention, which needs one reader per cache layer; got ",
                    options_.readers);
    KVCACHE_REQUIRE(!needs_.in_cache_positions || options_.rope.has_value(), "policy '", P::kName,
                    "' keeps positions inside the cache and needs KVCacheOptions::rope (the model's RoPE)");
    // The latent layout (MLA) rotates only the RoPE key at the end of each row: [head_dim_v, head_dim_k).
    if (needs_.in_cache_positions) rope_ = Rope(*options_.rope, config.shape.head_dim_k - rope_offset());
    KVCACHE_REQUIRE(std::isfinite(options_.softmax_scale) && options_.softmax_scale >= 0.0f,
                    "softmax_scale must be finite and >= 0 (0 = 1 / sqrt(head_dim_k)), got ", options_.softmax_scale);
    KVCACHE_REQUIRE(!needs_.prefill_profile || ProfilingPolicy<P>, "policy '", P::kName,
                    "' asks for prefill_profile but has no profile_window() and profile() (see policy/policy.hpp)");
    KVCACHE_REQUIRE(!needs_.slot_tags || TaggingPolicy<P>, "policy '", P::kName,
                    "' asks for slot_tags but has no tag(Position) (see policy/policy.hpp)");
    KVCACHE_REQUIRE(!needs_.merge_on_append || MergingPolicy<P>, "policy '", P::kName,
                    "' asks for merge_on_append but is not a MergingPolicy (see policy/policy.hpp)");
    if constexpr (MergingPolicy<P>) {
      if (needs_.merge_on_append) {
        policy_.validate(config.shape.head_dim_k);
        if (options_.rope) rope_ = Rope(*options_.rope, config.shape.head_dim_k);
      }
    }
    const std::size_t n_kv = std::size_t(config.shape.n_kv_heads), cap = std::size_t(config.capacity);
    const bool scores = needs_.prefill_scores || needs_.prefill_window > 0 || needs_.decode_scores;
    layers_.resize(std::size_t(config.n_layers));
    for (auto& l : layers_) {
      if (scores) l.scores.assign(n_kv * std::size_t(score_rows()) * cap, 0.0f);
      if (scores && score_rows() > 1) l.score_max.assign(n_kv * cap, 0.0f);
      if (needs_.value_norms) l.value_norms.assign(n_kv * cap, 0.0f);
      if (needs_.key_norms) l.key_norms.assign(n_kv * cap, 0.0f);
      l.budgets.assign(n_kv, ResolvedBudget{});
      if (needs_.in_cache_positions) l.rotated_at.assign(n_kv * cap, 0);
      if (needs_.slot_tags) l.tags.assign(n_kv * cap, 0);
      if (needs_.prefill_profile) l.choices.assign(n_kv, -1);
      if (needs_.merge_on_append) {
        l.merge_count.assign(n_kv, 0);
        l.merge_start.assign(n_kv, 0);
        l.merge_sum.assign(n_kv * merge_stride(), 0.0);
        l.merge_ring.assign(n_kv * merge_stride() * std::size_t(std::max(1, merge_window())), 0.0f);
      }
    }
    if (needs_.merge_on_append) {
      const std::size_t nq = std::size_t(config.shape.n_q_heads), dk = std::size_t(config.shape.head_dim_k);
      merge_k_.assign(n_kv * dk, 0.0f);
      merge_q_.assign(nq * dk, 0.0f);
      merge_qz_.assign(nq * dk, 0.0f);
      merge_kstep_.assign(n_kv * dk, 0.0f);
      merge_vstep_.assign(n_kv * std::size_t(config.shape.dim_v()), 0.0f);
      merge_v_.assign(std::size_t(config.shape.dim_v()), 0.0f);
    }
    // Eviction scratch: one region, or one per KV head when an executor may evict heads at once (decode evicts
    // each head in the task that finished its attention).
    evict_regions_ = exec_.concurrency() > 1 ? std::size_t(config.shape.n_kv_heads) : 1;
    if constexpr (!RanksByAge<P>) priority_.assign(cap * evict_regions_, 0.0f);  // rank()'s output
    scratch_.assign(cap * evict_regions_, 0);
    removals_.assign(cap * evict_regions_, 0);
    row_.assign(std::size_t(std::max(config.shape.head_dim_k, config.shape.dim_v())), 0.0f);
  }

  [[nodiscard]] const CacheConfig& config() const noexcept { return config_; }
  [[nodiscard]] P const& policy() const noexcept { return policy_; }
  [[nodiscard]] const LayerSlots& layer(int l) const { return storage_.layer(l); }
  [[nodiscard]] std::int64_t length(int l, int kv_head) const { return storage_.layer(l).length(kv_head); }
  [[nodiscard]] std::size_t kv_bytes() const noexcept { return storage_.kv_bytes(); }
  [[nodiscard]] std::size_t kv_bytes(int l) const { return storage_.layer(l).kv_bytes(); }
  [[nodiscard]] std::size_t kv_bytes(int l, int kv_head) const { return storage_.layer(l).kv_bytes(kv_head); }
  /// Bytes the cache holds beside the K/V storage, all allocated by the constructor and fixed after it: the policy's
  /// per-slot state (accumulated scores, per query head under GqaReduce::kMax, and their maximum; norms; rotation
  /// positions; tags; merge sums) and the attention workspaces (decode keeps g x capacity floats per KV head of
  /// exported probabilities when the policy reads them).
  [[nodiscard]] std::size_t state_bytes() const noexcept {
    const auto b = [](const auto& v) { return v.size() * sizeof(v[0]); };
    std::size_t n = prefill_ws_.bytes() + decode_ws_.bytes() + b(priority_) + b(scratch_) + b(removals_) + b(row_) +
                    b(merge_k_) + b(merge_q_) + b(merge_qz_) + b(merge_kstep_) + b(merge_vstep_) + b(merge_v_) +
                    b(merge_sin_neg_) + b(first_) + b(rope_cos_) + b(rope_sin_);
    for (const LayerState& st : layers_) {
      n += b(st.scores) + b(st.score_max) + b(st.value_norms) + b(st.key_norms) + b(st.rotated_at) + b(st.budgets) +
           b(st.tags) + b(st.choices) + b(st.merge_ring) + b(st.merge_sum) + b(st.merge_count) + b(st.merge_start);
      for (const auto& v : st.sink_keys) n += b(v);
      for (const auto& v : st.sink_slots) n += b(v);
    }
    return n;
  }
  /// The budget in force for (layer, KV head): resolved after the layer's prompt (or first decode step).
  [[nodiscard]] ResolvedBudget budget(int l, int kv_head) const { return state(l).budgets[std::size_t(kv_head)]; }
  /// Accumulated scores of (layer, KV head), per slot, summed over the group's query heads (empty for policies that
  /// need none). A policy with GqaReduce::kMax keeps them per query head: read query_head_scores() instead.
  [[nodiscard]] std::span<const float> scores(int l, int kv_head) const {
    const auto& s = state(l).scores;
    if (s.empty()) return {};
    KVCACHE_REQUIRE(score_rows() == 1, "scores: policy '", P::kName,
                    "' keeps its scores per query head (GqaReduce::kMax); read query_head_scores(layer, query_head)");
    return {s.data() + std::size_t(kv_head) * std::size_t(config_.capacity), std::size_t(length(l, kv_head))};
  }
  /// Accumulated scores of one query head of layer l, per slot of its KV head (q_head / group), for a policy with
  /// GqaReduce::kMax (empty otherwise).
  [[nodiscard]] std::span<const float> query_head_scores(int l, int q_head) const {
    const auto& s = state(l).scores;
    KVCACHE_REQUIRE(q_head >= 0 && q_head < config_.shape.n_q_heads, "query head ", q_head, " does not exist (",
                    config_.shape.n_q_heads, " query heads)");
    if (s.empty() || score_rows() == 1) return {};
    return {s.data() + std::size_t(q_head) * std::size_t(config_.capacity),
            std::size_t(length(l, q_head / config_.shape.group_size()))};
  }
  [[nodiscard]] std::int64_t prompt_length(int l) const { return state(l).prompt_length; }
  /// What a profiling policy (FastGen) chose for (layer, KV head) from the prompt; -1 before profiling or for
  /// policies that do not profile. FastGen::choice_name() says what the number means.
  [[nodiscard]] int head_choice(int l, int kv_head) const {
    const auto& c = state(l).choices;
    return c.empty() ? -1 : c[std::size_t(kv_head)];
  }

  /// Forgets the sequence; the next prefill starts a new one. Nothing carries over (scores, budgets, positions).
  void reset() noexcept {
    storage_.clear();
    for (auto& l : layers_) {
      std::fill(l.scores.begin(), l.scores.end(), 0.0f);
      std::fill(l.score_max.begin(), l.score_max.end(), 0.0f);
      std::fill(l.value_norms.begin(), l.value_norms.end(), 0.0f);
      std::fill(l.key_norms.begin(), l.key_norms.end(), 0.0f);
      std::fill(l.rotated_at.begin(), l.rotated_at.end(), 0);
      std::fill(l.tags.begin(), l.tags.end(), std::uint8_t{0});
      std::fill(l.choices.begin(), l.choices.end(), -1);
      std::fill(l.merge_count.begin(), l.merge_count.end(), 0);
      std::fill(l.merge_start.begin(), l.merge_start.end(), 0);
      std::fill(l.budgets.begin(), l.budgets.end(), ResolvedBudget{});
      l.sink_keys.clear();
      l.sink_slots.clear();
      l.prompt_length = 0;
      l.newest = -1;
      l.resolved = false;
      l.pending_reads = 0;
      l.pending_prefill = false;
    }
  }

  /// One chunk of the prompt for one layer. last_chunk: the prompt is complete, so the policy compresses now.
  void prefill(int l, ConstTensorView<float, 3> k, ConstTensorView<float, 3> v, std::span<const Position> positions,
               ConstTensorView<float, 3> q, TensorView<float, 3> out, bool last_chunk = true) {
    LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    const std::int64_t m = k.dimension(1);
    const std::int64_t window = needs_.prefill_window;
    require_no_pending_reads(l, "prefill");
    KVCACHE_REQUIRE(!(last_chunk && window > 0) || window <= m, "prefill: policy '", P::kName, "' observes the last ",
                    window, " prompt queries, but the last chunk has ", m, " tokens");
    check_step(q.dimension(0), q.dimension(1), q.dimension(2), out.dimension(0), out.dimension(1), out.dimension(2), m);
    if constexpr (MergingPolicy<P>) {
      if (needs_.merge_on_append) {
        prefill_merging(l, k, v, positions, q, out);
        return;
      }
    }
    const bool profile = needs_.prefill_profile && st.choices[0] < 0 && kv.length(0) == 0;
    KVCACHE_REQUIRE(!needs_.prefill_profile || !profile || last_chunk, "prefill: policy '", P::kName,
                    "' profiles the whole prompt's attention, so the prompt must come in one prefill call "
                    "(last_chunk = true); later chunks are appended");
    append_rows(l, k, v, positions);
    const PrefillOptions opt = prefill_options(l, m, last_chunk);
    prefill_attention(kv, q, out, prefill_ws_, opt, exec_);
    st.prompt_length += m;
    if constexpr (ProfilingPolicy<P>)
      if (profile) profile_prompt(l, q);
    st.pending_reads = options_.readers - 1;
    st.pending_m = m;
    st.pending_last_chunk = last_chunk;
    st.pending_prefill = true;
    if (st.pending_reads == 0) finish_prefill(l);
  }

  /// A further read of the prompt chunk that prefill(l, ...) just appended, by the next model layer that reads cache
  /// layer l (KVCacheOptions::readers > 1). q, out: [m, n_q_heads, head_dim] for the chunk's m tokens. Its scores
  /// add to the first read's; after the last reader of the last chunk the policy compresses.
  void read_prefill(int l, ConstTensorView<float, 3> q, TensorView<float, 3> out) {
    LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    KVCACHE_REQUIRE(st.pending_prefill && st.pending_reads > 0, "read_prefill: layer ", l,
                    " has no prefill chunk waiting for readers (readers = ", options_.readers, ")");
    const std::int64_t m = st.pending_m;
    check_step(q.dimension(0), q.dimension(1), q.dimension(2), out.dimension(0), out.dimension(1), out.dimension(2), m);
    const PrefillOptions opt = prefill_options(l, m, st.pending_last_chunk);
    prefill_attention(kv, q, out, prefill_ws_, opt, exec_);
    if (--st.pending_reads == 0) finish_prefill(l);
  }

  /// One decode step for one layer: the new token's k, v at `position`, then attention for q.
  void decode(int l, ConstTensorView<float, 2> k, ConstTensorView<float, 2> v, Position position,
              ConstTensorView<float, 2> q, TensorView<float, 2> out) {
    LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    KVCACHE_REQUIRE(k.dimension(0) == kv.n_kv_heads() && (v.dimension(0) == kv.n_kv_heads() || v.size() == 0),
                    "decode: keys and values need one row per KV head (", kv.n_kv_heads(), ")");
    require_no_pending_reads(l, "decode");
    check_step(1, q.dimension(0), q.dimension(1), 1, out.dimension(0), out.dimension(1), 1);
    if (!st.resolved) resolve_budgets(l);
    if constexpr (MergingPolicy<P>) {
      if (needs_.merge_on_append) {
        decode_merging(l, k.data(), v.data(), position, q.data(), out.data());
        return;
      }
    }
    const Position pos[1] = {position};
    append_rows(l, ConstTensorView<float, 3>(k.data(), k.dimension(0), 1, k.dimension(1)),
                ConstTensorView<float, 3>(v.data(), v.dimension(0), 1, v.dimension(1)), pos);
    if (needs_.in_cache_positions) place_sinks(l, position);
    attend(l, q, out, /*last_read=*/options_.readers == 1);
    st.pending_reads = options_.readers - 1;
    st.pending_prefill = false;
  }

  /// A further read of the token that decode(l, ...) just appended, by the next model layer that reads cache layer l
  /// (KVCacheOptions::readers > 1). q: [n_q_heads, head_dim_k], out: [n_q_heads, head_dim_v]. After the last reader
  /// the policy evicts.
  void read_decode(int l, ConstTensorView<float, 2> q, TensorView<float, 2> out) {
    LayerState& st = layers_[std::size_t(l)];
    KVCACHE_REQUIRE(!st.pending_prefill && st.pending_reads > 0, "read_decode: layer ", l,
                    " has no decode step waiting for readers (readers = ", options_.readers, ")");
    check_step(1, q.dimension(0), q.dimension(1), 1, out.dimension(0), out.dimension(1), 1);
    attend(l, q, out, /*last_read=*/st.pending_reads == 1);
    --st.pending_reads;
  }

 private:
  struct LayerState {
    std::vector<float> scores, value_norms, key_norms;  // [n_kv, capacity] each, present when needed
    // GqaReduce::kMax: scores are [n_kv, group, capacity] (a row per query head) and score_max [n_kv, capacity] is
    // their maximum over the group, kept current by each decode step's export (and by evict after a prompt).
    std::vector<float> score_max;
    std::vector<double> rotated_at;                     // in-cache mode: position each stored key is rotated at
    std::vector<std::vector<float>> sink_keys;          // in-cache mode: [n_kv][sinks x dk] f32, at original rotation
    std::vector<std::vector<std::int64_t>> sink_slots;  // in-cache mode: [n_kv][sinks], the slot of each sink (or -1)
    std::vector<ResolvedBudget> budgets;
    std::vector<std::uint8_t> tags;  // [n_kv, capacity], the policy's tag of each row (slot_tags)
    std::vector<int> choices;        // [n_kv], profile()'s choice per head, -1 before (prefill_profile)
    // Merging (DMC), per head: the open group's weighted sums in double (merge_sum: [key (pre-RoPE), value, weight])
    // and, with a window, its newest members in a ring of merge_window() entries (to take the oldest back out), the
    // group's size and the ring's start.
    std::vector<float> merge_ring;
    std::vector<double> merge_sum;
    std::vector<int> merge_count, merge_start;
    std::int64_t prompt_length = 0;
    Position newest = -1;  // the newest position appended (what RankInput::newest reports)
    bool resolved = false;
    // Shared caches (readers > 1): reads still due for the current step, and what that step was.
    int pending_reads = 0;
    std::int64_t pending_m = 0;
    bool pending_prefill = false, pending_last_chunk = false;
  };

  // Score rows per KV head: the group's query heads apart (GqaReduce::kMax), or their sum in one row.
  [[nodiscard]] int score_rows() const noexcept {
    return needs_.gqa_reduce == GqaReduce::kMax ? config_.shape.group_size() : 1;
  }

  // Where a key row's rotated part starts: 0, or head_dim_v in the latent layout ([latent | RoPE key]).
  [[nodiscard]] int rope_offset() const noexcept { return config_.shape.values_in_keys ? config_.shape.dim_v() : 0; }

  void require_no_pending_reads(int l, const char* who) const {
    const int due = state(l).pending_reads;
    KVCACHE_REQUIRE(due == 0, who, ": layer ", l, " still waits for ", due, " read(s) of its previous step (",
                    options_.readers, " readers: call read_prefill / read_decode first)");
  }

  PrefillOptions prefill_options(int l, std::int64_t m, bool last_chunk) {
    LayerState& st = layers_[std::size_t(l)];
    PrefillOptions opt;
    opt.scale = options_.softmax_scale;
    const std::int64_t window = needs_.prefill_window;
    if (needs_.prefill_scores || (last_chunk && window > 0)) {
      opt.column_sums = st.scores.data();
      opt.column_sums_stride = config_.capacity;
      opt.column_sums_begin = needs_.prefill_scores ? 0 : m - window;
      opt.column_sums_per_query_head = score_rows() > 1;
    }
    return opt;
  }
  DecodeOptions decode_options(int l) {
    DecodeOptions opt;
    opt.scale = options_.softmax_scale;
    if (needs_.decode_scores) {
      opt.probabilities = layers_[std::size_t(l)].scores.data();
      opt.probabilities_stride = config_.capacity;
      opt.probabilities_per_query_head = score_rows() > 1;
      if (score_rows() > 1) opt.probabilities_max = layers_[std::size_t(l)].score_max.data();
    }
    return opt;
  }
  void finish_prefill(int l) {
    LayerState& st = layers_[std::size_t(l)];
    st.pending_prefill = false;
    if (!st.pending_last_chunk) return;
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
    const bool in_tasks = evict_regions_ > 1 || exec_.concurrency() <= 1;
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
    decode_attention(storage_.layer(l), q, out, decode_ws_, opt, exec_);
    if (evicts && !in_tasks) evict(l, options_.eviction_slack, /*after_prefill=*/false);
  }

  const LayerState& state(int l) const {
    KVCACHE_REQUIRE(l >= 0 && l < config_.n_layers, "layer ", l, " does not exist (the cache has ", config_.n_layers,
                    ")");
    return layers_[std::size_t(l)];
  }

  // Shapes of a step's queries ([tokens, n_q_heads, head_dim_k]) and output ([tokens, n_q_heads, head_dim_v]),
  // checked before anything is appended, so that a rejected call changes nothing. Keys, values and positions are
  // checked by the storage's append, which also changes nothing when it throws.
  void check_step(std::int64_t q_tokens, std::int64_t q_heads, std::int64_t q_dim, std::int64_t o_tokens,
                  std::int64_t o_heads, std::int64_t o_dim, std::int64_t tokens) const {
    const auto& sh = config_.shape;
    KVCACHE_REQUIRE(q_tokens == tokens && q_heads == sh.n_q_heads && q_dim == sh.head_dim_k, "queries are [", q_tokens,
                    ", ", q_heads, ", ", q_dim, "], expected [", tokens, ", ", sh.n_q_heads, ", ", sh.head_dim_k, "]");
    KVCACHE_REQUIRE(o_tokens == tokens && o_heads == sh.n_q_heads && o_dim == sh.dim_v(), "the output is [", o_tokens,
                    ", ", o_heads, ", ", o_dim, "], expected [", tokens, ", ", sh.n_q_heads, ", ", sh.dim_v(), "]");
  }

  void resolve_budgets(int l) {
    LayerState& st = layers_[std::size_t(l)];
    for (int h = 0; h < config_.shape.n_kv_heads; ++h) {
      ResolvedBudget b = policy_.budget(l, h, st.prompt_length);
      if (options_.budget_override) b = options_.budget_override(l, h, b);
      if (!b.unlimited()) {
        KVCACHE_REQUIRE(b.total >= 1, "policy '", P::kName, "': layer ", l, " head ", h, " has a budget of ", b.total,
                        " rows (prompt of ", st.prompt_length, " tokens)");
        KVCACHE_REQUIRE(b.sinks + b.recent <= b.total, "policy '", P::kName, "': layer ", l, " head ", h,
                        " has a budget of ", b.total, " rows, smaller than its ", b.sinks, " sinks + ", b.recent,
                        " recent rows");
      }
      st.budgets[std::size_t(h)] = b;
    }
    st.resolved = true;
  }

  template <class T>
  static float row_norm(T const* x, int d, bool l1) noexcept {
    double s = 0;
    for (int c = 0; c < d; ++c) {
      const double e = to_f32(x[c]);
      s += l1 ? std::abs(e) : e * e;
    }
    return static_cast<float>(l1 ? s : std::sqrt(s));
  }

  void append_rows(int l, ConstTensorView<float, 3> k, ConstTensorView<float, 3> v,
                   std::span<const Position> positions) {
    LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    const std::int64_t m = k.dimension(1);
    std::vector<std::int64_t>& first = first_;
    for (int h = 0; h < kv.n_kv_heads(); ++h) first[std::size_t(h)] = kv.length(h);
    kv.append(k, v, positions);  // validates shapes and capacity
    for (Position p : positions) st.newest = std::max(st.newest, p);
    const std::size_t cap = std::size_t(config_.capacity);
    const int dk = kv.head_dim_k(), dv = kv.head_dim_v();
    for (int h = 0; h < kv.n_kv_heads(); ++h) {
      for (std::int64_t i = 0; i < m; ++i) {
        const std::size_t slot = std::size_t(h) * cap + std::size_t(first[std::size_t(h)] + i);
        if (!st.scores.empty())
          for (int r = 0; r < score_rows(); ++r)
            st.scores[(std::size_t(h) * std::size_t(score_rows()) + std::size_t(r)) * cap +
                      std::size_t(first[std::size_t(h)] + i)] = 0.0f;
        if (!st.score_max.empty()) st.score_max[slot] = 0.0f;
        // Norms come from the values and keys as given (fp32), before any rounding to the storage type.
        const float* krow = k.data() + (std::int64_t(h) * m + i) * dk;
        // The latent layout's value is the head of the key row.
        const float* vrow = kv.values_in_keys() ? krow : v.data() + (std::int64_t(h) * m + i) * dv;
        if (needs_.value_norms) st.value_norms[slot] = row_norm(vrow, dv, true);
        if (needs_.key_norms) st.key_norms[slot] = row_norm(krow, dk, false);
        if constexpr (TaggingPolicy<P>)
          if (needs_.slot_tags) st.tags[slot] = policy_.tag(positions[std::size_t(i)]);
        if (needs_.in_cache_positions) {
          st.rotated_at[slot] = positions[std::size_t(i)];
          if (positions[std::size_t(i)] < sink_count()) {
            if (st.sink_keys.empty()) {
              st.sink_keys.resize(std::size_t(kv.n_kv_heads()));
              st.sink_slots.assign(std::size_t(kv.n_kv_heads()),
                                   std::vector<std::int64_t>(std::size_t(sink_count()), -1));
            }
            st.sink_slots[std::size_t(h)][std::size_t(positions[std::size_t(i)])] = first[std::size_t(h)] + i;
            auto& sk = st.sink_keys[std::size_t(h)];
            const std::size_t at = std::size_t(positions[std::size_t(i)]) * std::size_t(dk);
            if (sk.size() < at + std::size_t(dk)) sk.resize(at + std::size_t(dk), 0.0f);
            std::copy(krow, krow + dk, sk.begin() + std::ptrdiff_t(at));
          }
        }
      }
    }
  }

  [[nodiscard]] std::int64_t sink_count() const noexcept {
    if constexpr (requires(P const& p) { p.sinks; }) return policy_.sinks;
    return 0;
  }

  // In-cache positions: rotate each sink key so that its distance to the query (rotated at `query_position`) is the
  // paper's n - 1 - rank, from its f32 copy at the original rotation (no drift). Window keys keep their original
  // rotation: for a contiguous window ending at the query their distance already equals the in-cache one.
  void place_sinks(int l, Position query_position) {
    LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    if (st.sink_keys.empty()) return;
    const int dk = kv.head_dim_k();
    const std::size_t cap = std::size_t(config_.capacity);
    for (int h = 0; h < kv.n_kv_heads(); ++h) {
      const std::int64_t n = kv.length(h);
      const auto& slots = st.sink_slots[std::size_t(h)];
      for (std::size_t p = 0; p < slots.size(); ++p) {
        const std::int64_t s = slots[p];
        if (s < 0) continue;
        // Sinks are positions 0..S-1, all kept, so a sink's rank is its position.
        const double target = double(query_position) - double(n - 1 - std::int64_t(p));
        double& at = st.rotated_at[std::size_t(h) * cap + std::size_t(s)];
        if (target == at) continue;
        float* x = row_.data();
        const float* orig = st.sink_keys[std::size_t(h)].data() + p * std::size_t(dk);
        std::copy(orig, orig + dk, x);
        // Every sink of a head shifts by the same query_position - (n - 1); the sines and cosines are computed
        // once per distinct shift (usually once per step for the whole model), not per row.
        const double delta = target - double(p);
        if (!rope_cached_ || delta != rope_delta_) {
          rope_.angles(delta, rope_cos_, rope_sin_);
          rope_delta_ = delta;
          rope_cached_ = true;
        }
        rotate_rows(active_isa(), x + rope_offset(), x + rope_offset(), 1, dk - rope_offset(), rope_sin_);
        store_key_row(kv, h, s, x);
        at = target;
      }
    }
  }

  static void store_key_row(LayerSlots& kv, int h, std::int64_t slot, const float* x) {
    const int dk = kv.head_dim_k();
    const Isa isa = active_isa();
    switch (kv.dtype()) {
      case DType::kF32:
        convert(kv.k_rows_mut<float>(h) + slot * dk, x, std::size_t(dk), isa);
        break;
      case DType::kF16:
        convert(kv.k_rows_mut<f16>(h) + slot * dk, x, std::size_t(dk), isa);
        break;
      case DType::kBF16:
        convert(kv.k_rows_mut<bf16>(h) + slot * dk, x, std::size_t(dk), isa);
        break;
    }
  }

  [[nodiscard]] int merge_window() const noexcept {
    if constexpr (MergingPolicy<P>) return policy_.window;
    return 0;
  }
  [[nodiscard]] std::size_t merge_stride() const noexcept {
    return std::size_t(config_.shape.head_dim_k + config_.shape.dim_v() + 1);
  }

  // A merging policy's prompt runs token by token, as its decode (the official DMC inference; algorithms.md 8.8).
  void prefill_merging(int l, ConstTensorView<float, 3> k, ConstTensorView<float, 3> v,
                       std::span<const Position> positions, ConstTensorView<float, 3> q, TensorView<float, 3> out) {
    const LayerSlots& kv = storage_.layer(l);
    const std::int64_t m = k.dimension(1);
    const int n_kv = kv.n_kv_heads(), dk = kv.head_dim_k(), dv = kv.head_dim_v();
    KVCACHE_REQUIRE(k.dimension(0) == n_kv && v.dimension(0) == n_kv && k.dimension(2) == dk && v.dimension(2) == dv &&
                        v.dimension(1) == m,
                    "prefill: keys are [", k.dimension(0), ", ", m, ", ", k.dimension(2), "] and values [",
                    v.dimension(0), ", ", v.dimension(1), ", ", v.dimension(2), "], expected [", n_kv, ", n, ", dk,
                    "] and [", n_kv, ", n, ", dv, "]");
    KVCACHE_REQUIRE(std::int64_t(positions.size()) == m, "prefill: ", positions.size(), " positions for ", m,
                    " tokens");
    KVCACHE_REQUIRE(kv.max_length() + m <= config_.capacity, "prefill: ", m, " more tokens would exceed the capacity ",
                    config_.capacity, " (a head holds ", kv.max_length(), ")");
    LayerState& st = layers_[std::size_t(l)];
    for (std::int64_t i = 0; i < m; ++i) {
      for (int h = 0; h < n_kv; ++h) {
        std::copy_n(&k(h, i, 0), dk, merge_kstep_.data() + std::size_t(h) * std::size_t(dk));
        std::copy_n(&v(h, i, 0), dv, merge_vstep_.data() + std::size_t(h) * std::size_t(dv));
      }
      decode_merging(l, merge_kstep_.data(), merge_vstep_.data(), positions[std::size_t(i)], &q(i, 0, 0),
                     &out(i, 0, 0));
    }
    st.prompt_length += m;
    if (!st.resolved) resolve_budgets(l);
  }

  // One step of a merging policy (DMC; algorithms.md 8.3) for one layer. k: [n_kv, dk], v: [n_kv, dv], q, out:
  // [n_q, dk | dv], k and q rotated at `position` (when KVCacheOptions::rope is set). Per head: the pre-RoPE key and
  // the group's pre-RoPE queries go to the policy, which says merge or not and with what weight; the head's newest slot
  // (merge) or a new slot (otherwise; always for a head's first token) then holds the weighted mean of the group's
  // newest `window` members, its key rotated at `position`, the neuron zeroed (zero_neurons). The queries' neuron is
  // zeroed too, then attention runs over the heads' rows.
  void decode_merging(int l, const float* k, const float* v, Position position, const float* q, float* out) {
    if constexpr (MergingPolicy<P>) {
      LayerSlots& kv = storage_.layer(l);
      LayerState& st = layers_[std::size_t(l)];
      const int n_kv = kv.n_kv_heads(), dk = kv.head_dim_k(), dv = kv.head_dim_v();
      const int nq = config_.shape.n_q_heads, g = nq / n_kv;
      const int idx = policy_.neuron_index(dk), window = merge_window();
      const bool zero = policy_.zero_neurons, rotated = options_.rope.has_value();
      const Isa isa = active_isa();
      KVCACHE_REQUIRE(kv.max_length() < config_.capacity, "decode: the cache is full (capacity ", config_.capacity,
                      ")");
      const std::size_t udk = std::size_t(dk), udv = std::size_t(dv), stride = merge_stride();
      if (rotated) {  // back to pre-RoPE: rotate by -position (the angles are shared by every layer of a step)
        if (!merge_angles_ || position != merge_angles_at_) {
          rope_.angles(double(position), rope_cos_, rope_sin_);
          merge_sin_neg_.assign(rope_sin_.begin(), rope_sin_.end());
          for (double& x : merge_sin_neg_) x = -x;
          merge_angles_at_ = position;
          merge_angles_ = true;
        }
        rotate_rows(isa, merge_k_.data(), k, n_kv, dk, merge_sin_neg_);
        rotate_rows(isa, merge_q_.data(), q, nq, dk, merge_sin_neg_);
      } else {
        std::copy_n(k, n_kv * dk, merge_k_.data());
        std::copy_n(q, nq * dk, merge_q_.data());
      }
      float* krow = row_.data();
      float* vrow = merge_v_.data();
      for (int h = 0; h < n_kv; ++h) {
        const float* kp = merge_k_.data() + std::size_t(h) * udk;
        const float* vp = v + std::size_t(h) * udv;
        MergeStep s;
        s.layer = l;
        s.kv_head = h;
        s.position = position;
        s.key = {kp, udk};
        s.queries = {merge_q_.data() + std::size_t(h) * std::size_t(g) * udk, std::size_t(g) * udk};
        s.head_dim = dk;
        const bool merge = kv.length(h) > 0 && policy_.merges(s);
        const float w = policy_.importance(s);
        KVCACHE_REQUIRE(w > 0 && std::isfinite(w), "policy '", P::kName, "' gave layer ", l, " head ", h,
                        " an importance of ", w, " at position ", position, "; it must be positive and finite");
        int& count = st.merge_count[std::size_t(h)];
        int& start = st.merge_start[std::size_t(h)];
        double* sum = st.merge_sum.data() + std::size_t(h) * stride;
        if (!merge) count = 0, start = 0;
        // The group's sums in double: add the new member; with a window, the oldest leaves once the group is full.
        if (count == 0) std::fill_n(sum, stride, 0.0);
        const std::int64_t members = dk + dv;
        if (window > 0) {
          float* ring = st.merge_ring.data() + std::size_t(h) * stride * std::size_t(window);
          if (count == window) {
            const float* old = ring + std::size_t(start) * stride;
            const float wo = old[stride - 1];
            merge_sums(isa, sum, old, members, -wo);
            sum[stride - 1] -= double(wo);
            start = (start + 1) % window;
            --count;
          }
          float* e = ring + std::size_t((start + count) % window) * stride;
          std::copy_n(kp, dk, e);
          std::copy_n(vp, dv, e + dk);
          e[dk + dv] = w;
          merge_sums(isa, sum, e, members, w);  // the member's key and value, contiguous in its ring entry
        } else {
          merge_sums(isa, sum, kp, dk, w);
          merge_sums(isa, sum + dk, vp, dv, w);
        }
        sum[stride - 1] += double(w);
        ++count;
        if (count == 1) {  // a new slot holds the token itself, exactly
          std::copy_n(kp, dk, krow);
          std::copy_n(vp, dv, vrow);
        } else {
          const double inv = 1.0 / sum[stride - 1];
          merge_means(isa, krow, sum, dk, inv);
          merge_means(isa, vrow, sum + dk, dv, inv);
        }
        if (zero) krow[idx] = 0.0f;
        if (rotated) {
          rotate_rows(isa, krow, krow, 1, dk, rope_sin_);
          if (zero) krow[idx] = 0.0f;
        }
        if (merge) {
          kv.overwrite(h, kv.length(h) - 1, krow, vrow, position);
        } else {
          const Position p[1] = {position};
          kv.append(h, ConstTensorView<float, 2>(krow, 1, dk), ConstTensorView<float, 2>(vrow, 1, dv), p);
        }
      }
      // The queries' neuron is zeroed, as the official code does. Every stored key holds 0 there, so a finite neuron
      // adds exactly 0 to each score: the zeroed copy is needed only when one is not finite (inf x 0 is NaN).
      const float* qa = q;
      if (zero) {
        bool finite = true;
        for (int a = 0; a < nq; ++a) finite = finite && std::isfinite(q[std::size_t(a) * udk + std::size_t(idx)]);
        if (!finite) {
          std::copy_n(q, nq * dk, merge_qz_.data());
          for (int a = 0; a < nq; ++a) merge_qz_[std::size_t(a) * udk + std::size_t(idx)] = 0.0f;
          qa = merge_qz_.data();
        }
      }
      decode_attention(kv, ConstTensorView<float, 2>(qa, nq, dk), TensorView<float, 2>(out, nq, config_.shape.dim_v()),
                       decode_ws_, DecodeOptions{}, exec_);
    }
  }

  // The loops over a row of decode_merging and place_sinks, as per-ISA kernels (cache/detail/merge_rows.ipp).
  static void merge_sums(Isa isa, double* sum, const float* x, std::int64_t n, float w) noexcept {
    KVCACHE_DISPATCH_ISA(isa, merge_add, (sum, x, n, w))
  }
  static void merge_means(Isa isa, float* out, const double* sum, std::int64_t n, double inv) noexcept {
    KVCACHE_DISPATCH_ISA(isa, merge_mean, (out, sum, n, inv))
  }
  // out = n rows of x ([n, width]; out may be x) rotated by the angles of rope_cos_ and `sin` (rope_sin_, or their
  // negation to rotate back).
  void rotate_rows(Isa isa, float* out, const float* x, std::int64_t n, int width,
                   const std::vector<double>& sin) const noexcept {
    KVCACHE_DISPATCH_ISA(
        isa, rope_rows,
        (out, x, n, width, width, rope_.rotary_dims() / 2, rope_.interleaved(), rope_cos_.data(), sin.data()))
  }

  // Profiling policies (FastGen): the prompt's attention statistics per head (attention/profile.hpp), then the
  // policy's choice for each head. Scratch is allocated here, once per prompt and layer: a prompt-time step.
  void profile_prompt(int l, ConstTensorView<float, 3> q) {
    const LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    const std::int64_t m = kv.length(0), window = policy_.profile_window(m), cap = config_.capacity;
    std::vector<float> cols(std::size_t(kv.n_kv_heads() * cap), 0.0f), band(cols.size(), 0.0f);
    attention_profile(kv, q, window, cols.data(), band.data(), cap, options_.softmax_scale);
    for (int h = 0; h < kv.n_kv_heads(); ++h) {
      const std::size_t base = std::size_t(h) * std::size_t(cap);
      ProfileInput in;
      in.layer = l;
      in.kv_head = h;
      in.positions = kv.positions(h);
      in.column_sums = {cols.data() + base, std::size_t(m)};
      in.band_sums = {band.data() + base, std::size_t(m)};
      if (!st.tags.empty()) in.tags = {st.tags.data() + base, std::size_t(m)};
      in.prompt_length = m;
      in.window = window;
      st.choices[std::size_t(h)] = policy_.profile(in);
    }
  }

  void evict(int l, std::int64_t slack, bool after_prefill) {
    for (int h = 0; h < config_.shape.n_kv_heads; ++h) evict_head(l, h, slack, after_prefill);
  }
  // Ranks, selects and compacts head h of layer l when it holds more than its budget + slack. Different heads may be
  // evicted at once (each writes only its own rows, per-slot state and scratch region).
  void evict_head(int l, int h, std::int64_t slack, bool after_prefill) {
    LayerSlots& kv = storage_.layer(l);
    LayerState& st = layers_[std::size_t(l)];
    const std::size_t cap = std::size_t(config_.capacity);
    const Isa isa = active_isa();
    const std::int64_t n = kv.length(h);
    const std::size_t base = std::size_t(h) * cap, un = std::size_t(n);
    RankInput in;
    in.layer = l;
    in.kv_head = h;
    in.group_size = config_.shape.group_size();
    in.positions = kv.positions(h);
    const int rows = score_rows();
    float* head_scores = st.scores.empty() ? nullptr : st.scores.data() + base * std::size_t(rows);
    if (head_scores != nullptr && rows == 1) in.scores = {head_scores, un};
    if (head_scores != nullptr && rows > 1) {
      // GqaReduce::kMax: a slot scores what its most attentive query head gave it (algorithms.md 10.5). Decode
      // exports keep the maximum current; prefill column sums do not, so after a prompt it is taken here, row by
      // row (each pass a plain vector max).
      float* mx = st.score_max.data() + base;
      if (after_prefill || !needs_.decode_scores) {
        std::copy_n(head_scores, un, mx);
        for (std::size_t row = 1; row < std::size_t(rows); ++row) {
          const float* src = head_scores + row * cap;
          for (std::size_t j = 0; j < un; ++j) mx[j] = std::max(mx[j], src[j]);
        }
      }
      in.scores = {mx, un};
      in.query_head_scores = {head_scores, (std::size_t(rows) - 1) * cap + un};
      in.query_head_stride = static_cast<std::int64_t>(cap);
    }
    if (!st.value_norms.empty()) in.value_norms = {st.value_norms.data() + base, un};
    if (!st.key_norms.empty()) in.key_norms = {st.key_norms.data() + base, un};
    if (!st.tags.empty()) in.tags = {st.tags.data() + base, un};
    if (!st.choices.empty()) in.head_choice = st.choices[std::size_t(h)];
    in.prompt_length = st.prompt_length;
    in.newest = st.newest;
    in.after_prefill = after_prefill;
    ResolvedBudget b = st.budgets[std::size_t(h)];
    if constexpr (DynamicBudgetPolicy<P>) b = policy_.budget_now(in, b);
    if (b.unlimited() || n <= b.total + slack) return;
    std::span<const float> priority, factor;
    bool negate = false;
    if constexpr (RanksByScores<P>) priority = in.scores;
    if constexpr (RanksByNegatedKeyNorms<P>) {
      priority = in.key_norms;
      negate = true;
    }
    if constexpr (RanksByScoresTimesValueNorms<P>) {
      if (in.value_norms.size() == un) {
        priority = in.scores;
        factor = in.value_norms;
      }
    }
    const std::size_t region = evict_regions_ > 1 ? std::size_t(h) * cap : 0;
    float* const rank_out = priority_.empty() ? nullptr : priority_.data() + region;
    std::int32_t* const removals = removals_.data() + region;
    // RanksByAge: no priorities at all; select_removals takes an empty span as every row ranking alike.
    if (!RanksByAge<P> && priority.size() != un) {
      policy_.rank(in, std::span<float>(rank_out, un));
      priority = std::span<const float>(rank_out, un);
      factor = {};
      negate = false;
    }
    const std::size_t r =
        select_removals(in.positions, priority, b, std::span<std::int32_t>(scratch_.data() + region, un),
                        std::span<std::int32_t>(removals, un), isa, in.newest, factor, negate);
    if (r == 0) return;
    kv.remove(h, std::span<std::int32_t const>(removals, r), [&](std::int64_t from, std::int64_t to) {
      const std::size_t f = base + std::size_t(from), t = base + std::size_t(to);
      if (head_scores != nullptr)
        for (std::size_t row = 0; row < std::size_t(rows); ++row)
          head_scores[row * cap + std::size_t(to)] = head_scores[row * cap + std::size_t(from)];
      if (!st.score_max.empty()) st.score_max[t] = st.score_max[f];
      if (!st.value_norms.empty()) st.value_norms[t] = st.value_norms[f];
      if (!st.key_norms.empty()) st.key_norms[t] = st.key_norms[f];
      if (!st.rotated_at.empty()) st.rotated_at[t] = st.rotated_at[f];
      if (!st.tags.empty()) st.tags[t] = st.tags[f];
      if (!st.sink_slots.empty()) {
        const Position moved = kv.positions(h)[std::size_t(to)];
        if (moved < sink_count()) st.sink_slots[std::size_t(h)][std::size_t(moved)] = to;
      }
    });
  }

  CacheConfig config_;
  P policy_;
  PolicyNeeds needs_;
  KVCacheOptions options_;
  Exec exec_;
  SlotStorage storage_;
  PrefillWorkspace prefill_ws_;
  DecodeWorkspace decode_ws_;
  Rope rope_;
  std::vector<LayerState> layers_;
  std::size_t evict_regions_ = 1;  // priority_, scratch_, removals_: [evict_regions_, capacity]
  std::vector<float> priority_;
  std::vector<std::int32_t> scratch_, removals_;
  std::vector<float> row_;
  std::vector<float> merge_k_, merge_q_, merge_qz_, merge_kstep_, merge_vstep_, merge_v_;  // merging scratch
  std::vector<double> merge_sin_neg_;  // merging: -sin of the step's angles (rope_cos_ / rope_sin_ hold +position)
  Position merge_angles_at_ = 0;
  bool merge_angles_ = false;
  std::vector<std::int64_t> first_ = std::vector<std::int64_t>(std::size_t(config_.shape.n_kv_heads));
  std::vector<double> rope_cos_, rope_sin_;  // in-cache mode: the rotation of the last shift, reused while unchanged
  double rope_delta_ = 0.0;
  bool rope_cached_ = false;
};

}  // namespace kvcache
