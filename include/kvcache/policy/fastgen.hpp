#pragma once

// FastGen, adaptive per-head KV cache compression (Ge, Zhang, Liu, Zhang, Han, Gao, ICLR 2024;
// docs/policies/fastgen.md). The official repository has no code; this follows the paper, with cold-compress
// (KVCacheHybrid) for the details.
//
// Profiling (once, when the prompt is in; Eq. 1-2): for each KV head, with A the prompt's attention averaged over the
// group's query heads, the recovery of a keep-policy C is rec(C) = (1/L) sum_i sum_j M_C[i][j] A[i][j]; the head
// takes the first policy of
//   special  ->  special + punctuation  ->  + frequent  ->  + local  ->  full
// whose recovery reaches the threshold T, and its cache becomes that policy's keep set for the last prompt row.
//   special, punctuation: token classes, from the engine (tag(position) -> TokenClass);
//   frequent: ceil(r_f x len) rows among those no other component keeps (for the last row), ranked by the mean
//             attention they received, sum_i A[i][j] / (len - j);
//   local: the rows within W = max(1, int(r_l x L)) of the newest.
// Generation: a special / special+punctuation head keeps only rows of its classes (a new token of another class is
// attended to once, by its own query, then dropped: cold-compress masks it instead); a frequent head keeps its class
// rows and the ceil(r_f x len) best by mean accumulated attention (sum over prompt and decode queries, divided by the
// number of queries that saw the row); a local head also keeps the W newest; a full head keeps everything.
// Lengths: W is a fraction of the prompt length L (the paper's "input sequence length"), the frequent count of the
// current sequence length len (the paper's "current sequence length"; cold-compress uses prompt + max new tokens).
// GQA (the paper is MHA-only): profiled on the group's mean attention, one choice per KV head
// (docs/policies/fastgen.md). No global tokens (cold-compress adds 4; the paper has none). T >= 1 is the full cache for
// every head. The prompt must arrive in one prefill call (profiling needs all of its attention map); later chunks are
// appended.

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "kvcache/attention/profile.hpp"
#include "kvcache/core/error.hpp"
#include "kvcache/core/macros.hpp"
#include "kvcache/policy/policy.hpp"
#include "kvcache/simd/dispatch.hpp"

#define KVCACHE_FOREACH_ISA_FILE "kvcache/policy/detail/fastgen_scan.ipp"
#define KVCACHE_FOREACH_ISA_NAMESPACE kvcache::fastgen_kernels
#include "kvcache/simd/foreach_isa.inc"

namespace kvcache {

/// What FastGen's profile sees of one (layer, KV head) once the prompt is in. With A[i][j] the prompt's causal
/// attention averaged over the group's query heads (attention/profile.hpp): column_sums[j] = sum_i A[i][j];
/// band_sums[j] = the same over the queries i with 0 <= i - j < window.
struct ProfileInput {
  int layer = 0;
  int kv_head = 0;
  std::span<const Position> positions;
  std::span<const float> column_sums;
  std::span<const float> band_sums;
  std::span<const std::uint8_t> tags;
  std::int64_t prompt_length = 0;  ///< L, the number of prompt queries
  std::int64_t window = 0;         ///< the band's width, from profile_window(L)
};

/// The token classes FastGen's policies are built from; the engine says which token is which.
enum class TokenClass : std::uint8_t { kOther = 0, kSpecial = 1, kPunctuation = 2 };

struct FastGen {
  /// The policies of Eq. 2, in the paper's order (increasing memory).
  enum class Choice : std::uint8_t { kSpecial, kPunctuation, kFrequent, kLocal, kFull };
  static constexpr std::string_view kName = "fastgen";
  static constexpr int kChoices = 5;

  double threshold = 0.95;      ///< T, the attention a head's policy must recover (paper: 0.91 - 0.98)
  double local_ratio = 0.3;     ///< r_l (paper)
  double frequent_ratio = 0.3;  ///< r_f (paper)
  std::function<TokenClass(Position)> token_class;  ///< the class of the token at a position (from the engine)

  FastGen(double threshold_, std::function<TokenClass(Position)> token_class_, double local_ratio_ = 0.3,
          double frequent_ratio_ = 0.3)
      : threshold(threshold_),
        local_ratio(local_ratio_),
        frequent_ratio(frequent_ratio_),
        token_class(std::move(token_class_)) {
    KVCACHE_REQUIRE(threshold > 0 && threshold <= 1, "FastGen: the recovery threshold T must be in (0, 1], got ",
                    threshold);
    KVCACHE_REQUIRE(local_ratio > 0 && local_ratio <= 1, "FastGen: r_l must be in (0, 1], got ", local_ratio);
    KVCACHE_REQUIRE(frequent_ratio >= 0 && frequent_ratio <= 1, "FastGen: r_f must be in [0, 1], got ", frequent_ratio);
    KVCACHE_REQUIRE(static_cast<bool>(token_class),
                    "FastGen: token_class is empty; the engine must say which "
                    "positions hold special and punctuation tokens");
  }

  static constexpr std::string_view choice_name(int c) noexcept {
    constexpr std::string_view names[] = {"special", "special+punct", "special+punct+frequent",
                                          "special+punct+frequent+local", "full"};
    return c >= 0 && c < kChoices ? names[c] : std::string_view("full (not profiled)");
  }

  [[nodiscard]] PolicyNeeds needs() const noexcept {
    PolicyNeeds n;
    n.prefill_scores = true;
    n.decode_scores = true;
    return n;
  }
  /// The static budget is unlimited: the real one depends on each head's choice and rows (budget_now).
  [[nodiscard]] ResolvedBudget budget(int, int, std::int64_t) const { return {}; }
  [[nodiscard]] std::uint8_t tag(Position p) const { return static_cast<std::uint8_t>(token_class(p)); }

  /// Each row's TokenClass, asked once when the row is appended.
  struct Tag {
    using type = std::uint8_t;
  };
  /// Each (layer, KV head)'s choice (a Choice, or -1 before profiling), and whether the layer's prompt is being
  /// profiled.
  struct State {
    int n_kv = 0;
    std::vector<int> choices;           // [layers, n_kv]
    std::vector<std::uint8_t> pending;  // [layers]
    [[nodiscard]] int choice(int layer, int kv_head) const noexcept {
      return choices[std::size_t(layer) * std::size_t(n_kv) + std::size_t(kv_head)];
    }
    [[nodiscard]] std::size_t bytes() const noexcept { return choices.size() * sizeof(int) + pending.size(); }
    void reset() noexcept {
      std::fill(choices.begin(), choices.end(), -1);
      std::fill(pending.begin(), pending.end(), std::uint8_t{0});
    }
  };
  using Ctx = PolicyContext<State>;

  [[nodiscard]] State make_state(const CacheSettings& s) const {
    State st;
    st.n_kv = s.config.shape.n_kv_heads;
    st.choices.assign(std::size_t(s.config.n_layers) * std::size_t(st.n_kv), -1);
    st.pending.assign(std::size_t(s.config.n_layers), 0);
    return st;
  }
  void add_columns(SlotColumns& c) const { c.add<Tag>(); }
  void on_append(Ctx& c, const AppendedRows& r) const {
    std::uint8_t* tags = c.columns.data<Tag>(r.kv_head) + r.first;
    for (std::int64_t i = 0; i < r.count; ++i) tags[i] = tag(r.positions[std::size_t(i)]);
  }
  /// The layer's first prompt is profiled, so it must come whole.
  void before_prefill(Ctx& c, std::int64_t, bool last_chunk) const {
    const bool profile = c.state.choice(c.layer, 0) < 0 && c.kv.length(0) == 0;
    KVCACHE_REQUIRE(!profile || last_chunk,
                    "prefill: policy 'fastgen' profiles the whole prompt's attention, so the "
                    "prompt must come in one prefill call (last_chunk = true); later chunks "
                    "are appended");
    c.state.pending[std::size_t(c.layer)] = profile ? 1 : 0;
  }
  /// Profiling (Eq. 1 - 2): the prompt's attention statistics per head, then each head's choice. The statistics'
  /// scratch is allocated here, once per prompt and layer (a prompt-time step).
  void after_prefill_attention(Ctx& c, ConstTensorView<float, 3> q, bool) const {
    if (!c.state.pending[std::size_t(c.layer)]) return;
    c.state.pending[std::size_t(c.layer)] = 0;
    const LayerSlots& kv = c.kv;
    const std::int64_t m = kv.length(0), window = profile_window(m), cap = kv.capacity();
    std::vector<float> cols(std::size_t(kv.n_kv_heads() * cap), 0.0f), band(cols.size(), 0.0f);
    attention_profile(kv, q, window, cols.data(), band.data(), cap, c.settings.softmax_scale);
    for (int h = 0; h < kv.n_kv_heads(); ++h) {
      const std::size_t base = std::size_t(h) * std::size_t(cap);
      ProfileInput in;
      in.layer = c.layer;
      in.kv_head = h;
      in.positions = kv.positions(h);
      in.column_sums = {cols.data() + base, std::size_t(m)};
      in.band_sums = {band.data() + base, std::size_t(m)};
      in.tags = c.columns.slots<Tag>(h, m);
      in.prompt_length = m;
      in.window = window;
      c.state.choices[std::size_t(c.layer) * std::size_t(c.state.n_kv) + std::size_t(h)] = profile(in);
    }
  }

  [[nodiscard]] std::int64_t profile_window(std::int64_t prompt_length) const noexcept {
    return std::max<std::int64_t>(1, std::int64_t(local_ratio * double(prompt_length)));
  }
  [[nodiscard]] std::int64_t frequent_count(std::int64_t length) const noexcept {
    return std::int64_t(std::ceil(frequent_ratio * double(length) - 1e-9));
  }

  /// rec(C) of the five policies for one head, in the order of Choice (docs/policies/fastgen.md).
  [[nodiscard]] std::array<double, kChoices> recoveries(const ProfileInput& in) const {
    const std::size_t n = in.positions.size();
    const auto L = double(in.prompt_length);
    std::array<double, kChoices> rec{};
    double special = 0, punct = 0;
    for (std::size_t j = 0; j < n; ++j) {
      if (in.tags[j] == std::uint8_t(TokenClass::kSpecial)) special += in.column_sums[j];
      if (in.tags[j] == std::uint8_t(TokenClass::kPunctuation)) punct += in.column_sums[j];
    }
    rec[0] = special / L;
    rec[1] = (special + punct) / L;
    const Position newest = n ? *std::max_element(in.positions.begin(), in.positions.end()) : 0;
    const std::int64_t nf = frequent_count(in.prompt_length);
    // + frequent: the best nf unclassed rows by mean attention.
    auto frequent = [&](bool exclude_window) {
      std::vector<std::size_t> cand;
      for (std::size_t j = 0; j < n; ++j)
        if (in.tags[j] == 0 && !(exclude_window && in.positions[j] > newest - in.window)) cand.push_back(j);
      const std::size_t k = std::min<std::size_t>(cand.size(), std::size_t(nf));
      std::partial_sort(cand.begin(), cand.begin() + std::ptrdiff_t(k), cand.end(), [&](std::size_t a, std::size_t b) {
        const double ma = mean_attention(in.column_sums[a], newest, in.positions[a]);
        const double mb = mean_attention(in.column_sums[b], newest, in.positions[b]);
        return ma != mb ? ma > mb : in.positions[a] > in.positions[b];
      });
      cand.resize(k);
      return cand;
    };
    std::vector<char> kept(n, 0);
    double freq = 0;
    for (std::size_t j : frequent(false)) freq += in.column_sums[j];
    rec[2] = (special + punct + freq) / L;
    // + local: frequent chosen outside the last row's window; the band of every row no column set keeps.
    double cols = special + punct;
    for (std::size_t j : frequent(true)) {
      cols += in.column_sums[j];
      kept[j] = 1;
    }
    double band = 0;
    for (std::size_t j = 0; j < n; ++j)
      if (in.tags[j] == 0 && !kept[j]) band += in.band_sums[j];
    rec[3] = (cols + band) / L;
    rec[4] = 1.0;
    return rec;
  }

  /// The head's choice: the first policy whose recovery reaches T.
  [[nodiscard]] int profile(const ProfileInput& in) const {
    if (threshold >= 1.0) return int(Choice::kFull);
    const auto rec = recoveries(in);
    for (int c = 0; c < kChoices - 1; ++c)
      if (rec[std::size_t(c)] >= threshold) return c;
    return int(Choice::kFull);
  }

  /// How many rows the head keeps now: its class rows, plus (frequent) the best ceil(r_f x len) others, plus (local)
  /// the W newest.
  [[nodiscard]] ResolvedBudget budget_now(const RankInput& in, const State& st, ResolvedBudget) const noexcept {
    return budget_for(in, st.choice(in.layer, in.kv_head));
  }
  [[nodiscard]] ResolvedBudget budget_for(const RankInput& in, int c) const noexcept {
    if (c < 0 || c >= int(Choice::kFull)) return {};
    const std::size_t n = in.positions.size();
    if (n == 0) return {};
    const Position newest = newest_of(in);
    const std::int64_t window = c == int(Choice::kLocal) ? profile_window(in.prompt_length) : 0;
    const auto from = static_cast<std::int32_t>(std::clamp<std::int64_t>(
        window > 0 ? std::int64_t(newest) - window + 1 : std::numeric_limits<std::int32_t>::max(), 0,
        std::numeric_limits<std::int32_t>::max()));
    const std::uint8_t punct = c >= int(Choice::kPunctuation) ? std::uint8_t(TokenClass::kPunctuation) : 0xff;
    std::int32_t in_window = 0, classed = 0;
    const Isa isa = active_isa();
    [&]() noexcept {
      KVCACHE_DISPATCH(isa, kvcache::fastgen_kernels, fastgen_count,
                       (in.column<Tag>().data(), in.positions.data(), static_cast<std::int32_t>(n), from,
                        std::uint8_t(TokenClass::kSpecial), punct, &in_window, &classed))
    }();
    const std::int64_t others = std::int64_t(n) - in_window - classed;
    ResolvedBudget b;
    b.recent = window;
    b.total = in_window + classed;
    if (c >= int(Choice::kFrequent)) b.total += std::min(others, frequent_count(std::int64_t(newest) + 1));
    return b;
  }

  /// Rows of a kept class rank +inf; the others by the mean attention of their column (+ frequent), or -inf for the
  /// choices without + frequent (they keep no other row).
  void rank(const RankInput& in, const State& st, std::span<float> priority) const noexcept {
    rank_for(in, st.choice(in.layer, in.kv_head), priority);
  }
  void rank_for(const RankInput& in, int c, std::span<float> priority) const noexcept {
    const Position newest = in.positions.empty() ? 0 : newest_of(in);
    const std::uint8_t punct = c >= int(Choice::kPunctuation) ? std::uint8_t(TokenClass::kPunctuation) : 0xff;
    const bool frequent = c >= int(Choice::kFrequent) && !in.scores.empty();
    const Isa isa = active_isa();
    [&]() noexcept {
      KVCACHE_DISPATCH(isa, kvcache::fastgen_kernels, fastgen_rank,
                       (in.column<Tag>().data(), in.positions.data(), frequent ? in.scores.data() : nullptr,
                        static_cast<std::int64_t>(priority.size()), newest, std::uint8_t(TokenClass::kSpecial), punct,
                        priority.data()))
    }();
  }

 private:
  // The cache passes the step's position; a caller that does not gets the scan.
  static Position newest_of(const RankInput& in) noexcept {
    return in.newest >= 0 ? in.newest : *std::max_element(in.positions.begin(), in.positions.end());
  }
  // Attention a row received per query that could see it (queries at positions pos .. newest).
  static double mean_attention(double sum, Position newest, Position pos) noexcept {
    return sum / double(std::int64_t(newest) - pos + 1);
  }
};

}  // namespace kvcache
