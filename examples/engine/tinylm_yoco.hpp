#pragma once

// The reference engine for tinylm-yoco (examples/models/MODELS.md): YOCO (Sun et al. 2024) with a sliding-window
// self-decoder. Layers 0 and 1 are GQA blocks over a kvcache::SlidingWindowRing of the last 256 tokens each (fixed
// size, nothing to evict; the engine owns them, one sequence at a time, cleared by a prefill at position 0). Then
// the global K, V are computed once per token from the self-decoder's output, appended once to the one
// policy-managed cache (a KVCache with one layer), and read by both cross-decoder layers (KVCacheOptions::readers
// = 2): scores add up over the two readers and the policy evicts after the second.

#include <optional>
#include <string>
#include <vector>

#include "engine/tinylm.hpp"

namespace engine {

class TinyLmYoco : public TinyLm {
 public:
  explicit TinyLmYoco(const std::string& path) : TinyLmYoco(SafeTensors(path), path) {}

  [[nodiscard]] static const char* name() noexcept { return "tinylm-yoco"; }
  [[nodiscard]] int n_self_layers() const noexcept { return int(self_.size()); }
  [[nodiscard]] int n_cross_layers() const noexcept { return int(cross_.size()); }
  [[nodiscard]] std::int64_t window() const noexcept { return window_; }
  /// The global cache: one layer of n_kv_heads x head_dim, read by every cross-decoder layer.
  [[nodiscard]] kvcache::CacheConfig cache_config(std::int64_t capacity, kvcache::DType dtype) const {
    return {1, {nq_, nkv_, hd_, hd_}, capacity, dtype};
  }
  [[nodiscard]] kvcache::KVCacheOptions cache_options() const {
    kvcache::KVCacheOptions o;
    o.rope = rope_config();
    o.readers = n_cross_layers();
    return o;
  }
  /// Bytes the self-decoder's rings hold now (at most window x layers x 2 x n_kv_heads x head_dim elements).
  [[nodiscard]] std::size_t ring_bytes() const noexcept {
    std::size_t b = 0;
    for (const auto& r : rings_) b += r.kv_bytes();
    return b;
  }

  /// Runs tokens at positions first, first + 1, ... through the model (one prefill chunk); a chunk at position 0
  /// starts a new sequence. Returns the logits: [tokens, vocab].
  template <class Cache>
  Matrix prefill(Cache& cache, std::span<const int> tokens, kvcache::Position first, bool last_chunk = true) {
    const auto T = static_cast<std::int64_t>(tokens.size());
    prepare_rings(cache.config().dtype, first == 0);
    Matrix x = embed(tokens, first);
    const std::vector<kvcache::Position> pos = positions(first, T);
    const int hd = hd_;
    Matrix out(T, nq_ * hd);
    for (std::size_t l = 0; l < self_.size(); ++l) {
      const Layer& L = self_[l];
      const Matrix h = rms_norm(x, L.in_norm);
      Matrix q = h * L.wq.transpose(), k = h * L.wk.transpose();
      const Matrix v = h * L.wv.transpose();
      // Sliding-window attention row by row: push token t, then its query sees exactly (t - window, t].
      for (std::int64_t t = 0; t < T; ++t) {
        rotate(q.row(t).data(), nq_, pos[std::size_t(t)]);
        rotate(k.row(t).data(), nkv_, pos[std::size_t(t)]);
        rings_[l].push(kvcache::ConstTensorView<float, 2>(k.row(t).data(), nkv_, hd),
                       kvcache::ConstTensorView<float, 2>(v.row(t).data(), nkv_, hd), pos[std::size_t(t)]);
        kvcache::decode_attention(rings_[l].slots(), kvcache::ConstTensorView<float, 2>(q.row(t).data(), nq_, hd),
                                  kvcache::TensorView<float, 2>(out.row(t).data(), nq_, hd), *ring_ws_);
      }
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    // The global K, V: computed once, appended once ([T, n_kv, hd] -> [n_kv, T, hd]).
    const Matrix hg = rms_norm(x, global_norm_);
    Matrix k = hg * global_k_.transpose();
    const Matrix v = hg * global_v_.transpose();
    Matrix kt(nkv_ * T, hd), vt(nkv_ * T, hd);
    for (std::int64_t t = 0; t < T; ++t) {
      rotate(k.row(t).data(), nkv_, pos[std::size_t(t)]);
      for (int a = 0; a < nkv_; ++a) {
        kt.row(a * T + t) = k.row(t).segment(a * hd, hd);
        vt.row(a * T + t) = v.row(t).segment(a * hd, hd);
      }
    }
    for (std::size_t l = 0; l < cross_.size(); ++l) {
      const Layer& L = cross_[l];
      Matrix q = rms_norm(x, L.in_norm) * L.wq.transpose();
      for (std::int64_t t = 0; t < T; ++t) rotate(q.row(t).data(), nq_, pos[std::size_t(t)]);
      const kvcache::ConstTensorView<float, 3> qv(q.data(), T, nq_, hd);
      const kvcache::TensorView<float, 3> ov(out.data(), T, nq_, hd);
      if (l == 0)
        cache.prefill(0, kvcache::ConstTensorView<float, 3>(kt.data(), nkv_, T, hd),
                      kvcache::ConstTensorView<float, 3>(vt.data(), nkv_, T, hd), pos, qv, ov, last_chunk);
      else
        cache.read_prefill(0, qv, ov);
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    return logits(x);
  }

  /// One token at position pos. Returns its logits: [vocab].
  template <class Cache>
  Eigen::VectorXf decode(Cache& cache, int token, kvcache::Position pos) {
    const int tok[1] = {token};
    prepare_rings(cache.config().dtype, false);
    Matrix x = embed(tok, pos);
    const int hd = hd_;
    Matrix out(1, nq_ * hd);
    for (std::size_t l = 0; l < self_.size(); ++l) {
      const Layer& L = self_[l];
      const Matrix h = rms_norm(x, L.in_norm);
      Matrix q = h * L.wq.transpose(), k = h * L.wk.transpose();
      const Matrix v = h * L.wv.transpose();
      rotate(q.data(), nq_, pos);
      rotate(k.data(), nkv_, pos);
      rings_[l].push(kvcache::ConstTensorView<float, 2>(k.data(), nkv_, hd),
                     kvcache::ConstTensorView<float, 2>(v.data(), nkv_, hd), pos);
      kvcache::decode_attention(rings_[l].slots(), kvcache::ConstTensorView<float, 2>(q.data(), nq_, hd),
                                kvcache::TensorView<float, 2>(out.data(), nq_, hd), *ring_ws_);
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    const Matrix hg = rms_norm(x, global_norm_);
    Matrix k = hg * global_k_.transpose();
    const Matrix v = hg * global_v_.transpose();
    rotate(k.data(), nkv_, pos);
    for (std::size_t l = 0; l < cross_.size(); ++l) {
      const Layer& L = cross_[l];
      Matrix q = rms_norm(x, L.in_norm) * L.wq.transpose();
      rotate(q.data(), nq_, pos);
      const kvcache::ConstTensorView<float, 2> qv(q.data(), nq_, hd);
      const kvcache::TensorView<float, 2> ov(out.data(), nq_, hd);
      if (l == 0)
        cache.decode(0, kvcache::ConstTensorView<float, 2>(k.data(), nkv_, hd),
                     kvcache::ConstTensorView<float, 2>(v.data(), nkv_, hd), pos, qv, ov);
      else
        cache.read_decode(0, qv, ov);
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    return logits(x).row(0).transpose();
  }

 private:
  TinyLmYoco(const SafeTensors& st, const std::string& path) : TinyLm(st, path, "yoco") {
    const int n_layers = config_int("n_layers"), n_self = config_int("n_self_layers");
    KVCACHE_REQUIRE(n_self >= 0 && n_self < n_layers, "'", path, "': n_self_layers ", n_self, " must be in [0, ",
                    n_layers, ")");
    nq_ = config_int("n_heads");
    nkv_ = config_int("n_kv_heads");
    hd_ = config_int("head_dim");
    window_ = config_int("sliding_window");
    const std::int64_t d = d_model_, q = nq_ * hd_, kv = nkv_ * hd_;
    for (int l = 0; l < n_self; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      self_.push_back(Layer{load(st, p + "input_layernorm.weight", 1, d), load(st, p + "self_attn.q_proj.weight", q, d),
                            load(st, p + "self_attn.k_proj.weight", kv, d),
                            load(st, p + "self_attn.v_proj.weight", kv, d),
                            load(st, p + "self_attn.o_proj.weight", d, q), load_mlp(st, p)});
    }
    for (int l = 0; l < n_layers - n_self; ++l) {
      const std::string p = "cross_layers." + std::to_string(l) + ".";
      cross_.push_back(Layer{load(st, p + "input_layernorm.weight", 1, d),
                             load(st, p + "cross_attn.q_proj.weight", q, d), Matrix(), Matrix(),
                             load(st, p + "cross_attn.o_proj.weight", d, q), load_mlp(st, p)});
    }
    global_norm_ = load(st, "global_norm.weight", 1, d);
    global_k_ = load(st, "global_k_proj.weight", kv, d);
    global_v_ = load(st, "global_v_proj.weight", kv, d);
    prepare_rope(hd_);
  }

  struct Layer {
    Matrix in_norm, wq, wk, wv, wo;  // cross-decoder layers have no wk, wv
    Mlp mlp;
  };

  void rotate(float* heads, int n, kvcache::Position p) const {
    for (int a = 0; a < n; ++a) rope(heads + a * hd_, hd_, p);
  }
  // Rings in the cache's element type; a new sequence empties them.
  void prepare_rings(kvcache::DType dtype, bool new_sequence) {
    const kvcache::AttentionShape shape{nq_, nkv_, hd_, hd_};
    if (rings_.empty() || rings_[0].slots().dtype() != dtype) {
      rings_.clear();
      for (std::size_t l = 0; l < self_.size(); ++l) rings_.emplace_back(shape, window_, dtype);
      ring_ws_.emplace(shape, window_);
    }
    if (new_sequence)
      for (auto& r : rings_) r.clear();
  }

  int nq_ = 0, nkv_ = 0, hd_ = 0;
  std::int64_t window_ = 0;
  std::vector<Layer> self_, cross_;
  Matrix global_norm_, global_k_, global_v_;
  std::vector<kvcache::SlidingWindowRing> rings_;
  std::optional<kvcache::DecodeWorkspace> ring_ws_;
};

}  // namespace engine
