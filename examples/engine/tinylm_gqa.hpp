#pragma once

// The reference engine for tinylm-gqa (examples/models/MODELS.md): a Llama-style byte-level decoder (RMSNorm,
// rotate-half RoPE, GQA attention, SwiGLU) whose attention runs through kvcache::KVCache<Policy> exactly as an
// engine's would. Matrix products use Eigen in fp32 over the fp16 weights upcast once at load. Not part of the
// installed library: it is the integration example and the oracle the examples and tests drive.

#include <string>
#include <vector>

#include "engine/tinylm.hpp"

namespace engine {

class TinyLmGqa : public TinyLm {
 public:
  explicit TinyLmGqa(const std::string& path) : TinyLmGqa(SafeTensors(path), path) {}

  [[nodiscard]] static const char* name() noexcept { return "tinylm-gqa"; }
  [[nodiscard]] int n_layers() const noexcept { return n_layers_; }
  [[nodiscard]] int n_heads() const noexcept { return n_heads_; }
  [[nodiscard]] int n_kv_heads() const noexcept { return n_kv_heads_; }
  [[nodiscard]] int head_dim() const noexcept { return hd_; }
  [[nodiscard]] kvcache::CacheConfig cache_config(std::int64_t capacity, kvcache::DType dtype) const {
    return {n_layers_, {n_heads_, n_kv_heads_, hd_, hd_}, capacity, dtype};
  }
  /// Options with this model's RoPE, for policies that keep positions inside the cache.
  [[nodiscard]] kvcache::KVCacheOptions cache_options() const {
    kvcache::KVCacheOptions o;
    o.rope = rope_config();
    return o;
  }

  /// Runs tokens at positions first, first + 1, ... through every layer and the cache (one prefill chunk).
  /// Returns the logits: [tokens, vocab]; row t predicts the token after tokens[t].
  template <class Cache>
  Matrix prefill(Cache& cache, std::span<const int> tokens, kvcache::Position first, bool last_chunk = true) {
    const auto T = static_cast<std::int64_t>(tokens.size());
    Matrix x = embed(tokens, first);
    const std::vector<kvcache::Position> pos = positions(first, T);
    const int nq = n_heads_, nkv = n_kv_heads_, hd = hd_;
    Matrix kt(nkv * T, hd), vt(nkv * T, hd), out(T, nq * hd);
    for (int l = 0; l < n_layers_; ++l) {
      const Layer& L = layers_[std::size_t(l)];
      const Matrix h = rms_norm(x, L.in_norm);
      Matrix q = h * L.wq.transpose(), k = h * L.wk.transpose(), v = h * L.wv.transpose();
      for (std::int64_t t = 0; t < T; ++t) {
        for (int a = 0; a < nq; ++a) rope(q.row(t).data() + a * hd, hd, pos[std::size_t(t)]);
        for (int a = 0; a < nkv; ++a) {
          rope(k.row(t).data() + a * hd, hd, pos[std::size_t(t)]);
          kt.row(a * T + t) = k.row(t).segment(a * hd, hd);  // [T, n_kv, hd] -> [n_kv, T, hd]
          vt.row(a * T + t) = v.row(t).segment(a * hd, hd);
        }
      }
      cache.prefill(l, kvcache::ConstTensorView<float, 3>(kt.data(), nkv, T, hd),
                    kvcache::ConstTensorView<float, 3>(vt.data(), nkv, T, hd), pos,
                    kvcache::ConstTensorView<float, 3>(q.data(), T, nq, hd),
                    kvcache::TensorView<float, 3>(out.data(), T, nq, hd), last_chunk);
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    return logits(x);
  }

  /// One token at position pos. Returns its logits: [vocab].
  template <class Cache>
  Eigen::VectorXf decode(Cache& cache, int token, kvcache::Position pos) {
    const int tok[1] = {token};
    Matrix x = embed(tok, pos);
    const int nq = n_heads_, nkv = n_kv_heads_, hd = hd_;
    Matrix out(1, nq * hd);
    for (int l = 0; l < n_layers_; ++l) {
      const Layer& L = layers_[std::size_t(l)];
      const Matrix h = rms_norm(x, L.in_norm);
      Matrix q = h * L.wq.transpose(), k = h * L.wk.transpose(), v = h * L.wv.transpose();
      for (int a = 0; a < nq; ++a) rope(q.data() + a * hd, hd, pos);
      for (int a = 0; a < nkv; ++a) rope(k.data() + a * hd, hd, pos);
      cache.decode(l, kvcache::ConstTensorView<float, 2>(k.data(), nkv, hd),
                   kvcache::ConstTensorView<float, 2>(v.data(), nkv, hd), pos,
                   kvcache::ConstTensorView<float, 2>(q.data(), nq, hd),
                   kvcache::TensorView<float, 2>(out.data(), nq, hd));
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    return logits(x).row(0).transpose();
  }

 private:
  TinyLmGqa(const SafeTensors& st, const std::string& path) : TinyLm(st, path, "gqa") {
    n_layers_ = config_int("n_layers");
    n_heads_ = config_int("n_heads");
    n_kv_heads_ = config_int("n_kv_heads");
    hd_ = config_int("head_dim");
    const std::int64_t d = d_model_, q = n_heads_ * hd_, kv = n_kv_heads_ * hd_;
    for (int l = 0; l < n_layers_; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      layers_.push_back(
          Layer{load(st, p + "input_layernorm.weight", 1, d), load(st, p + "self_attn.q_proj.weight", q, d),
                load(st, p + "self_attn.k_proj.weight", kv, d), load(st, p + "self_attn.v_proj.weight", kv, d),
                load(st, p + "self_attn.o_proj.weight", d, q), load_mlp(st, p)});
    }
    prepare_rope(hd_);
  }

  struct Layer {
    Matrix in_norm, wq, wk, wv, wo;
    Mlp mlp;
  };

  int n_layers_ = 0, n_heads_ = 0, n_kv_heads_ = 0, hd_ = 0;
  std::vector<Layer> layers_;
};

}  // namespace engine
