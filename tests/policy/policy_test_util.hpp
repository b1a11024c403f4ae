#pragma once

// Builds prompts whose attention is exactly a given matrix, so the worked examples of docs/policies/ run through the
// real KVCache path: key j is the one-hot e_j (head_dim >= tokens), and query i holds log A[i][j] * sqrt(d) at
// coordinate j (the cache's 1/sqrt(d) scaling then leaves logits log A[i][j], whose causal softmax is A[i] itself
// when each row of A sums to 1). A zero entry becomes a logit of -40 (a probability below 1e-17).

#include <cmath>
#include <set>
#include <vector>

#include "test_util.hpp"

namespace kvtest {

struct Prompt {
  int n_kv = 1, n_q = 1, d = 16;
  std::int64_t tokens = 0;
  std::vector<float> k, v, q;  // k, v: [n_kv, tokens, d]; q: [tokens, n_q, d]
  std::vector<kvcache::Position> positions;
};

// The causal attention matrix of docs/policies/h2o.md (H2O's worked example; FastGen's worked example profiles it too).
inline const std::vector<std::vector<double>> kA = {
    {1.0},
    {0.5, 0.5},
    {0.4, 0.2, 0.4},
    {0.4, 0.1, 0.4, 0.1},
    {0.3, 0.1, 0.3, 0.1, 0.2},
    {0.3, 0.1, 0.1, 0.1, 0.3, 0.1},
    {0.2, 0.1, 0.1, 0.1, 0.4, 0.0, 0.1},
    {0.2, 0.0, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1},
};

inline float logit_of(double a, int d) { return static_cast<float>((a > 0 ? std::log(a) : -40.0) * std::sqrt(d)); }

/// One KV head and one query head; attention rows A[i] (only j <= i is used), value rows given or e_0.
inline Prompt prompt_from_attention(const std::vector<std::vector<double>>& a, int d,
                                    const std::vector<double>& value_l1 = {}) {
  Prompt p;
  p.d = d;
  p.tokens = static_cast<std::int64_t>(a.size());
  p.k.assign(std::size_t(p.tokens * d), 0.0f);
  p.v.assign(std::size_t(p.tokens * d), 0.0f);
  p.q.assign(std::size_t(p.tokens * d), logit_of(0, d));
  for (std::int64_t j = 0; j < p.tokens; ++j) {
    p.k[std::size_t(j * d + j)] = 1.0f;
    p.v[std::size_t(j * d)] = value_l1.empty() ? 1.0f : static_cast<float>(value_l1[std::size_t(j)]);
    p.positions.push_back(static_cast<kvcache::Position>(j));
  }
  for (std::int64_t i = 0; i < p.tokens; ++i)
    for (std::size_t j = 0; j < a[std::size_t(i)].size(); ++j)
      p.q[std::size_t(i * d) + j] = logit_of(a[std::size_t(i)][j], d);
  return p;
}

template <class Cache>
void prefill(Cache& cache, int layer, const Prompt& p, bool last_chunk = true) {
  std::vector<float> out(std::size_t(p.tokens * p.n_q * p.d));
  cache.prefill(layer, kvcache::ConstTensorView<float, 3>(p.k.data(), p.n_kv, p.tokens, p.d),
                kvcache::ConstTensorView<float, 3>(p.v.data(), p.n_kv, p.tokens, p.d), p.positions,
                kvcache::ConstTensorView<float, 3>(p.q.data(), p.tokens, p.n_q, p.d),
                kvcache::TensorView<float, 3>(out.data(), p.tokens, p.n_q, p.d), last_chunk);
}

/// Original positions kept by (layer, KV head), as a set.
template <class Cache>
std::set<int> kept(const Cache& cache, int layer, int head = 0) {
  auto pos = cache.layer(layer).positions(head);
  return std::set<int>(pos.begin(), pos.end());
}

// One decode step whose attention over the cached one-hot keys is `a` (position -> probability).
template <class Cache>
void decode_with_attention(Cache& cache, int d, kvcache::Position pos, const std::vector<std::pair<int, double>>& a) {
  std::vector<float> k(std::size_t(d), 0.0f), v(std::size_t(d), 0.0f), q(std::size_t(d), logit_of(0, d)),
      out(static_cast<std::size_t>(d));
  k[std::size_t(pos)] = 1.0f;
  v[0] = 1.0f;
  for (auto [j, p] : a) q[std::size_t(j)] = logit_of(p, d);
  cache.decode(0, kvcache::ConstTensorView<float, 2>(k.data(), 1, d),
               kvcache::ConstTensorView<float, 2>(v.data(), 1, d), pos,
               kvcache::ConstTensorView<float, 2>(q.data(), 1, d), kvcache::TensorView<float, 2>(out.data(), 1, d));
}

inline kvcache::CacheConfig one_head_config(int d, std::int64_t capacity, int layers = 1) {
  return kvcache::CacheConfig{layers, {1, 1, d, d}, capacity, kvcache::DType::kF32};
}

}  // namespace kvtest
