#pragma once

// The reference engine for tinylm-gqa (examples/models/MODELS.md): a Llama-style byte-level decoder (RMSNorm,
// rotate-half RoPE, GQA attention, SwiGLU) whose attention runs through kvcache::KVCache<Policy> exactly as an
// engine's would. Matrix products use Eigen in fp32 over the fp16 weights upcast once at load. Not part of the
// installed library: it is the integration example and the oracle the examples and tests drive.

#include <Eigen/Core>
#include <cmath>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "engine/safetensors.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct GqaConfig {
  int vocab = 0, d_model = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn_dim = 0;
  double rope_theta = 10000.0, norm_eps = 1e-5;
  int max_position = 0;
};

class TinyLmGqa {
 public:
  explicit TinyLmGqa(const std::string& path) {
    SafeTensors st(path);
    auto md = st.metadata();
    KVCACHE_REQUIRE(md.count("config") != 0, "'", path, "' has no config in its metadata");
    nlohmann::json c;
    try {
      c = nlohmann::json::parse(md["config"]);
      KVCACHE_REQUIRE(c.value("attention", std::string()) == "gqa", "'", path, "' is a '",
                      c.value("attention", std::string("?")), "' model, not gqa");
      KVCACHE_REQUIRE(c.value("rope_style", std::string("half")) == "half", "'", path,
                      "': only rotate-half RoPE is implemented");
      cfg_.vocab = c.at("vocab_size");
      cfg_.d_model = c.at("d_model");
      cfg_.n_layers = c.at("n_layers");
      cfg_.n_heads = c.at("n_heads");
      cfg_.n_kv_heads = c.at("n_kv_heads");
      cfg_.head_dim = c.at("head_dim");
      cfg_.ffn_dim = c.at("ffn_dim");
      cfg_.rope_theta = c.at("rope_theta");
      cfg_.norm_eps = c.at("norm_eps");
      cfg_.max_position = c.value("max_position", 0);
    } catch (const nlohmann::json::exception& e) {
      kvcache::detail::throw_error("'", path, "' has a malformed config: ", e.what());
    }
    const std::int64_t d = cfg_.d_model, hd = cfg_.head_dim, q = cfg_.n_heads * hd, kv = cfg_.n_kv_heads * hd,
                       f = cfg_.ffn_dim, v = cfg_.vocab;
    embed_ = load(st, "embed_tokens.weight", v, d);
    norm_ = load(st, "norm.weight", 1, d);
    lm_head_ = load(st, "lm_head.weight", v, d);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".";
      Layer L;
      L.in_norm = load(st, p + "input_layernorm.weight", 1, d);
      L.post_norm = load(st, p + "post_attention_layernorm.weight", 1, d);
      L.wq = load(st, p + "self_attn.q_proj.weight", q, d);
      L.wk = load(st, p + "self_attn.k_proj.weight", kv, d);
      L.wv = load(st, p + "self_attn.v_proj.weight", kv, d);
      L.wo = load(st, p + "self_attn.o_proj.weight", d, q);
      L.wg = load(st, p + "mlp.gate_proj.weight", f, d);
      L.wu = load(st, p + "mlp.up_proj.weight", f, d);
      L.wd = load(st, p + "mlp.down_proj.weight", d, f);
      layers_.push_back(std::move(L));
    }
    inv_freq_.resize(std::size_t(hd / 2));
    for (std::int64_t i = 0; i < hd / 2; ++i)
      inv_freq_[std::size_t(i)] = std::pow(cfg_.rope_theta, -2.0 * double(i) / double(hd));
  }

  [[nodiscard]] const GqaConfig& config() const noexcept { return cfg_; }
  [[nodiscard]] kvcache::CacheConfig cache_config(std::int64_t capacity, kvcache::DType dtype) const {
    return {cfg_.n_layers, {cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim, cfg_.head_dim}, capacity, dtype};
  }
  /// Options with this model's RoPE, for policies that keep positions inside the cache.
  [[nodiscard]] kvcache::KVCacheOptions cache_options() const {
    kvcache::KVCacheOptions o;
    o.rope = kvcache::RopeConfig{0, cfg_.rope_theta, false};
    return o;
  }

  /// Runs tokens at positions first, first + 1, ... through every layer and the cache (one prefill chunk).
  /// Returns the logits: [tokens, vocab]; row t predicts the token after tokens[t].
  template <class Cache>
  Matrix prefill(Cache& cache, std::span<const int> tokens, kvcache::Position first, bool last_chunk = true) {
    const auto T = static_cast<std::int64_t>(tokens.size());
    Matrix x(T, cfg_.d_model);
    for (std::int64_t t = 0; t < T; ++t) {
      KVCACHE_REQUIRE(tokens[std::size_t(t)] >= 0 && tokens[std::size_t(t)] < cfg_.vocab, "token ",
                      tokens[std::size_t(t)], " is outside the vocabulary of ", cfg_.vocab);
      x.row(t) = embed_.row(tokens[std::size_t(t)]);
      record(first + kvcache::Position(t), tokens[std::size_t(t)]);
    }
    std::vector<kvcache::Position> pos(static_cast<std::size_t>(T));
    for (std::int64_t t = 0; t < T; ++t) pos[std::size_t(t)] = first + kvcache::Position(t);
    const int nq = cfg_.n_heads, nkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    Matrix kt(nkv * T, hd), vt(nkv * T, hd), out(T, nq * hd);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const Layer& L = layers_[std::size_t(l)];
      const Matrix h = rms_norm(x, L.in_norm);
      Matrix q = h * L.wq.transpose(), k = h * L.wk.transpose(), v = h * L.wv.transpose();
      for (std::int64_t t = 0; t < T; ++t) {
        for (int a = 0; a < nq; ++a) rope(q.row(t).data() + a * hd, pos[std::size_t(t)]);
        for (int a = 0; a < nkv; ++a) {
          rope(k.row(t).data() + a * hd, pos[std::size_t(t)]);
          kt.row(a * T + t) = k.row(t).segment(a * hd, hd);  // [T, n_kv, hd] -> [n_kv, T, hd]
          vt.row(a * T + t) = v.row(t).segment(a * hd, hd);
        }
      }
      cache.prefill(l, kvcache::ConstTensorView<float, 3>(kt.data(), nkv, T, hd),
                    kvcache::ConstTensorView<float, 3>(vt.data(), nkv, T, hd), pos,
                    kvcache::ConstTensorView<float, 3>(q.data(), T, nq, hd),
                    kvcache::TensorView<float, 3>(out.data(), T, nq, hd), last_chunk);
      x += out * L.wo.transpose();
      mlp(x, L);
    }
    return rms_norm(x, norm_) * lm_head_.transpose();
  }

  /// One token at position pos. Returns its logits: [vocab].
  template <class Cache>
  Eigen::VectorXf decode(Cache& cache, int token, kvcache::Position pos) {
    KVCACHE_REQUIRE(token >= 0 && token < cfg_.vocab, "token ", token, " is outside the vocabulary of ", cfg_.vocab);
    record(pos, token);
    Matrix x = embed_.row(token);
    const int nq = cfg_.n_heads, nkv = cfg_.n_kv_heads, hd = cfg_.head_dim;
    Matrix out(1, nq * hd);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const Layer& L = layers_[std::size_t(l)];
      const Matrix h = rms_norm(x, L.in_norm);
      Matrix q = h * L.wq.transpose(), k = h * L.wk.transpose(), v = h * L.wv.transpose();
      for (int a = 0; a < nq; ++a) rope(q.data() + a * hd, pos);
      for (int a = 0; a < nkv; ++a) rope(k.data() + a * hd, pos);
      cache.decode(l, kvcache::ConstTensorView<float, 2>(k.data(), nkv, hd),
                   kvcache::ConstTensorView<float, 2>(v.data(), nkv, hd), pos,
                   kvcache::ConstTensorView<float, 2>(q.data(), nq, hd),
                   kvcache::TensorView<float, 2>(out.data(), nq, hd));
      x += out * L.wo.transpose();
      mlp(x, L);
    }
    return (rms_norm(x, norm_) * lm_head_.transpose()).row(0).transpose();
  }

  /// The token last run at a position (-1 if none): what a policy that classifies tokens (FastGen) asks the engine.
  [[nodiscard]] int token_at(kvcache::Position p) const {
    return p >= 0 && std::size_t(p) < tokens_.size() ? tokens_[std::size_t(p)] : -1;
  }

 private:
  void record(kvcache::Position p, int token) {
    if (std::size_t(p) >= tokens_.size()) tokens_.resize(std::size_t(p) + 1, -1);
    tokens_[std::size_t(p)] = token;
  }

  struct Layer {
    Matrix in_norm, post_norm, wq, wk, wv, wo, wg, wu, wd;
  };

  static Matrix load(const SafeTensors& st, const std::string& name, std::int64_t rows, std::int64_t cols) {
    const std::vector<std::int64_t> shape =
        rows == 1 ? std::vector<std::int64_t>{cols} : std::vector<std::int64_t>{rows, cols};
    const std::vector<float> v = st.f32(name, shape);
    return Eigen::Map<const Matrix>(v.data(), rows, cols);
  }

  [[nodiscard]] Matrix rms_norm(const Matrix& x, const Matrix& w) const {
    Matrix y(x.rows(), x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      const float inv = 1.0f / std::sqrt(x.row(t).squaredNorm() / float(x.cols()) + float(cfg_.norm_eps));
      y.row(t) = (x.row(t) * inv).cwiseProduct(w.row(0));
    }
    return y;
  }

  void mlp(Matrix& x, const Layer& L) const {
    const Matrix h = rms_norm(x, L.post_norm);
    const Matrix g = h * L.wg.transpose(), u = h * L.wu.transpose();
    const Matrix a = (g.array() / (1.0f + (-g.array()).exp())).matrix().cwiseProduct(u);  // silu(g) * u
    x += a * L.wd.transpose();
  }

  // Rotate-half RoPE of one head vector at position p (pairs i, i + head_dim / 2).
  void rope(float* v, kvcache::Position p) const {
    const int half = cfg_.head_dim / 2;
    for (int i = 0; i < half; ++i) {
      const double a = double(p) * inv_freq_[std::size_t(i)];
      const double c = std::cos(a), s = std::sin(a);
      const double x0 = v[i], x1 = v[i + half];
      v[i] = float(x0 * c - x1 * s);
      v[i + half] = float(x1 * c + x0 * s);
    }
  }

  GqaConfig cfg_;
  Matrix embed_, norm_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<double> inv_freq_;
  std::vector<int> tokens_;  // by position, as last run
};

}  // namespace engine
