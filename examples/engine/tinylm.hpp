#pragma once

// What the three tinylm engines share (examples/models/MODELS.md, "Common to all three"): the config header, fp16
// weights upcast to fp32 Eigen matrices, RMSNorm, the SwiGLU MLP, rotate-half RoPE, the embedding and head, and the
// token at each position (for policies that classify tokens, FastGen).
//
// Every engine has the same face, so the tasks (tasks.hpp) and kvcache-eval run on any of them:
//   cache_config(capacity, dtype), cache_options()   the KVCache the engine's policy-managed cache needs
//   prefill(cache, tokens, first, last_chunk)        -> logits [tokens, vocab]
//   decode(cache, token, position)                   -> logits [vocab]
//   token_at(position), name(), kv_bytes_per_token(dtype)

#include <Eigen/Core>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "engine/safetensors.hpp"
#include "kvcache/kvcache.hpp"

namespace engine {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The architecture named in a model file's config ("gqa", "mla" or "yoco").
inline std::string model_attention(const std::string& path) {
  SafeTensors st(path);
  const auto& md = st.metadata();
  const auto it = md.find("config");
  KVCACHE_REQUIRE(it != md.end(), "'", path, "' has no config in its metadata");
  try {
    return nlohmann::json::parse(it->second).value("attention", std::string("?"));
  } catch (const nlohmann::json::exception& e) {
    kvcache::detail::throw_error("'", path, "' has a malformed config: ", e.what());
  }
}

class TinyLm {
 public:
  struct Mlp {
    Matrix post_norm, wg, wu, wd;
  };

  [[nodiscard]] int vocab() const noexcept { return vocab_; }
  [[nodiscard]] int d_model() const noexcept { return d_model_; }
  /// The token last run at a position (-1 if none): what a policy that classifies tokens (FastGen) asks the engine.
  [[nodiscard]] int token_at(kvcache::Position p) const {
    return p >= 0 && std::size_t(p) < tokens_.size() ? tokens_[std::size_t(p)] : -1;
  }

 protected:
  /// Reads the config of an `attention` model and the weights every architecture has.
  TinyLm(const SafeTensors& st, const std::string& path, const std::string& attention) {
    const auto& md = st.metadata();
    const auto it = md.find("config");
    KVCACHE_REQUIRE(it != md.end(), "'", path, "' has no config in its metadata");
    try {
      config_ = nlohmann::json::parse(it->second);
      KVCACHE_REQUIRE(config_.value("attention", std::string()) == attention, "'", path, "' is a '",
                      config_.value("attention", std::string("?")), "' model, not ", attention);
      KVCACHE_REQUIRE(config_.value("rope_style", std::string("half")) == "half", "'", path,
                      "': only rotate-half RoPE is implemented");
      vocab_ = config_.at("vocab_size");
      d_model_ = config_.at("d_model");
      ffn_dim_ = config_.at("ffn_dim");
      rope_theta_ = config_.at("rope_theta");
      norm_eps_ = config_.at("norm_eps");
    } catch (const nlohmann::json::exception& e) {
      kvcache::detail::throw_error("'", path, "' has a malformed config: ", e.what());
    }
    embed_ = load(st, "embed_tokens.weight", vocab_, d_model_);
    norm_ = load(st, "norm.weight", 1, d_model_);
    lm_head_ = load(st, "lm_head.weight", vocab_, d_model_);
  }

  /// An integer field of the config; a missing or malformed one is a kvcache::Error naming it.
  [[nodiscard]] int config_int(const std::string& key) const {
    KVCACHE_REQUIRE(config_.contains(key) && config_[key].is_number_integer(), "model config has no integer '", key,
                    "'");
    return config_[key].get<int>();
  }

  static Matrix load(const SafeTensors& st, const std::string& name, std::int64_t rows, std::int64_t cols) {
    const std::vector<std::int64_t> shape =
        rows == 1 ? std::vector<std::int64_t>{cols} : std::vector<std::int64_t>{rows, cols};
    const std::vector<float> v = st.f32(name, shape);
    return Eigen::Map<const Matrix>(v.data(), rows, cols);
  }
  Mlp load_mlp(const SafeTensors& st, const std::string& p) const {
    return Mlp{load(st, p + "post_attention_layernorm.weight", 1, d_model_),
               load(st, p + "mlp.gate_proj.weight", ffn_dim_, d_model_),
               load(st, p + "mlp.up_proj.weight", ffn_dim_, d_model_),
               load(st, p + "mlp.down_proj.weight", d_model_, ffn_dim_)};
  }

  /// Embeddings of the tokens (rows), recording each at its position.
  Matrix embed(std::span<const int> tokens, kvcache::Position first) {
    Matrix x(static_cast<Eigen::Index>(tokens.size()), d_model_);
    for (std::size_t t = 0; t < tokens.size(); ++t) {
      KVCACHE_REQUIRE(tokens[t] >= 0 && tokens[t] < vocab_, "token ", tokens[t], " is outside the vocabulary of ",
                      vocab_);
      x.row(Eigen::Index(t)) = embed_.row(tokens[t]);
      const auto p = std::size_t(first) + t;
      if (p >= tokens_.size()) tokens_.resize(p + 1, -1);
      tokens_[p] = tokens[t];
    }
    return x;
  }
  [[nodiscard]] Matrix logits(const Matrix& x) const { return rms_norm(x, norm_) * lm_head_.transpose(); }

  /// RMSNorm of each row of x (fp32), times w.
  [[nodiscard]] Matrix rms_norm(const Matrix& x, const Matrix& w) const {
    Matrix y(x.rows(), x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t) {
      const float inv = 1.0f / std::sqrt(x.row(t).squaredNorm() / float(x.cols()) + float(norm_eps_));
      y.row(t) = (x.row(t) * inv).cwiseProduct(w.row(0));
    }
    return y;
  }
  /// x += down(silu(gate(h)) * up(h)), h = post-attention RMSNorm of x.
  void mlp(Matrix& x, const Mlp& m) const {
    const Matrix h = rms_norm(x, m.post_norm);
    const Matrix g = h * m.wg.transpose(), u = h * m.wu.transpose();
    const Matrix a = (g.array() / (1.0f + (-g.array()).exp())).matrix().cwiseProduct(u);
    x += a * m.wd.transpose();
  }
  /// The frequencies of RoPE over vectors of width dim; call once per width the model rotates.
  void prepare_rope(int dim) {
    auto& f = inv_freq_[dim];
    f.resize(std::size_t(dim / 2));
    for (int i = 0; i < dim / 2; ++i) f[std::size_t(i)] = std::pow(rope_theta_, -2.0 * double(i) / double(dim));
  }
  /// Rotate-half RoPE of a vector of even width `dim` at position p (pairs i, i + dim / 2).
  void rope(float* v, int dim, kvcache::Position p) const {
    const int half = dim / 2;
    const std::vector<double>& f = inv_freq_.at(dim);
    for (int i = 0; i < half; ++i) {
      const double a = double(p) * f[std::size_t(i)];
      const double c = std::cos(a), s = std::sin(a);
      const double x0 = v[i], x1 = v[i + half];
      v[i] = float(x0 * c - x1 * s);
      v[i + half] = float(x1 * c + x0 * s);
    }
  }
  [[nodiscard]] kvcache::RopeConfig rope_config() const { return kvcache::RopeConfig{0, rope_theta_, false}; }
  static std::vector<kvcache::Position> positions(kvcache::Position first, std::int64_t n) {
    std::vector<kvcache::Position> p(static_cast<std::size_t>(n));
    for (std::int64_t t = 0; t < n; ++t) p[std::size_t(t)] = first + kvcache::Position(t);
    return p;
  }

  nlohmann::json config_;
  int vocab_ = 0, d_model_ = 0, ffn_dim_ = 0;
  double rope_theta_ = 10000.0, norm_eps_ = 1e-5;
  Matrix embed_, norm_, lm_head_;

 private:
  std::vector<int> tokens_;                      // by position, as last run
  std::map<int, std::vector<double>> inv_freq_;  // by rotated width
};

}  // namespace engine
