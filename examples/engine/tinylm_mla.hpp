#pragma once

// The reference engine for tinylm-mla (examples/models/MODELS.md): DeepSeek-V2-style Multi-head Latent Attention
// without query compression, run the absorbed way (attention/mla.hpp). Per layer and token the cache holds one row
// [kv_a_layernorm(c) (96) | RoPE(k_rope) (16)] shared by the 4 heads; queries are absorbed ([W_UK^T q_nope |
// RoPE(q_rope)]), kvcache::KVCache<Policy> attends over the latent rows for all heads at once, and W_UV is applied
// to the latent sums. Policies see one KV head per layer whose scores are summed over all heads.

#include <string>
#include <vector>

#include "engine/tinylm.hpp"

namespace engine {

class TinyLmMla : public TinyLm {
 public:
  explicit TinyLmMla(const std::string& path) : TinyLmMla(SafeTensors(path), path) {}

  [[nodiscard]] static const char* name() noexcept { return "tinylm-mla"; }
  [[nodiscard]] int n_layers() const noexcept { return n_layers_; }
  [[nodiscard]] const kvcache::MlaShape& mla_shape() const noexcept { return shape_; }
  [[nodiscard]] kvcache::CacheConfig cache_config(std::int64_t capacity, kvcache::DType dtype) const {
    return {n_layers_, shape_.attention_shape(), capacity, dtype};
  }
  /// The latent layout's softmax scale, 1 / sqrt(qk_nope + qk_rope), and the RoPE of the rows' RoPE keys (for
  /// StreamingLLM's in-cache positions, which re-rotate only that tail of a row).
  [[nodiscard]] kvcache::KVCacheOptions cache_options() const {
    kvcache::KVCacheOptions o;
    o.softmax_scale = shape_.softmax_scale();
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
    const int H = shape_.n_heads, W = shape_.row_width(), rank = shape_.kv_lora_rank, dv = shape_.v_head_dim;
    Matrix rows(T, W), q_abs(T, H * W), o_lat(T, H * rank), out(T, H * dv);
    for (int l = 0; l < n_layers_; ++l) {
      const Layer& L = layers_[std::size_t(l)];
      project(L, rms_norm(x, L.in_norm), pos, rows, q_abs);
      cache.prefill(l, kvcache::ConstTensorView<float, 3>(rows.data(), 1, T, W),
                    kvcache::ConstTensorView<float, 3>(nullptr, 1, T, 0), pos,
                    kvcache::ConstTensorView<float, 3>(q_abs.data(), T, H, W),
                    kvcache::TensorView<float, 3>(o_lat.data(), T, H, rank), last_chunk);
      for (std::int64_t t = 0; t < T; ++t) values(L, o_lat.row(t).data(), out.row(t).data());
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    return logits(x);
  }

  /// One token at position pos. Returns its logits: [vocab].
  template <class Cache>
  Eigen::VectorXf decode(Cache& cache, int token, kvcache::Position pos) {
    const int tok[1] = {token};
    const kvcache::Position at[1] = {pos};
    Matrix x = embed(tok, pos);
    const int H = shape_.n_heads, W = shape_.row_width(), rank = shape_.kv_lora_rank, dv = shape_.v_head_dim;
    Matrix rows(1, W), q_abs(1, H * W), o_lat(1, H * rank), out(1, H * dv);
    for (int l = 0; l < n_layers_; ++l) {
      const Layer& L = layers_[std::size_t(l)];
      project(L, rms_norm(x, L.in_norm), at, rows, q_abs);
      cache.decode(l, kvcache::ConstTensorView<float, 2>(rows.data(), 1, W),
                   kvcache::ConstTensorView<float, 2>(nullptr, 1, 0), pos,
                   kvcache::ConstTensorView<float, 2>(q_abs.data(), H, W),
                   kvcache::TensorView<float, 2>(o_lat.data(), H, rank));
      values(L, o_lat.data(), out.data());
      x += out * L.wo.transpose();
      mlp(x, L.mlp);
    }
    return logits(x).row(0).transpose();
  }

 private:
  TinyLmMla(const SafeTensors& st, const std::string& path) : TinyLm(st, path, "mla") {
    n_layers_ = config_int("n_layers");
    shape_ = kvcache::MlaShape{config_int("n_heads"), config_int("kv_lora_rank"), config_int("qk_rope_head_dim"),
                               config_int("qk_nope_head_dim"), config_int("v_head_dim")};
    shape_.validate();
    const std::int64_t d = d_model_, H = shape_.n_heads;
    for (int l = 0; l < n_layers_; ++l) {
      const std::string p = "layers." + std::to_string(l) + ".self_attn.";
      Layer L;
      L.in_norm = load(st, "layers." + std::to_string(l) + ".input_layernorm.weight", 1, d);
      L.wq = load(st, p + "q_proj.weight", H * shape_.query_width(), d);
      L.wkv_a = load(st, p + "kv_a_proj_with_mqa.weight", shape_.row_width(), d);
      L.kv_norm = load(st, p + "kv_a_layernorm.weight", 1, shape_.kv_lora_rank);
      L.wkv_b =
          load(st, p + "kv_b_proj.weight", H * (shape_.qk_nope_head_dim + shape_.v_head_dim), shape_.kv_lora_rank);
      L.wo = load(st, p + "o_proj.weight", d, H * shape_.v_head_dim);
      L.mlp = load_mlp(st, "layers." + std::to_string(l) + ".");
      layers_.push_back(std::move(L));
    }
    prepare_rope(shape_.qk_rope_head_dim);
  }

  struct Layer {
    Matrix in_norm, wq, wkv_a, kv_norm, wkv_b, wo;
    Mlp mlp;
  };

  // From the normalised hidden states h ([T, d]): the cache rows [kv_norm(c) | RoPE(k_rope)] ([T, row_width]) and
  // the absorbed queries ([T, H * row_width]).
  void project(const Layer& L, const Matrix& h, std::span<const kvcache::Position> pos, Matrix& rows,
               Matrix& q_abs) const {
    const int H = shape_.n_heads, W = shape_.row_width(), rank = shape_.kv_lora_rank, dr = shape_.qk_rope_head_dim;
    const int dq = shape_.query_width(), dn = shape_.qk_nope_head_dim;
    Matrix q = h * L.wq.transpose();
    const Matrix kv = h * L.wkv_a.transpose();
    const Matrix c = rms_norm(kv.leftCols(rank), L.kv_norm);
    const kvcache::ConstTensorView<float, 2> w(L.wkv_b.data(), L.wkv_b.rows(), L.wkv_b.cols());
    for (Eigen::Index t = 0; t < h.rows(); ++t) {
      rows.row(t).head(rank) = c.row(t);
      rows.row(t).tail(dr) = kv.row(t).tail(dr);
      rope(rows.row(t).data() + rank, dr, pos[std::size_t(t)]);
      for (int a = 0; a < H; ++a) rope(q.row(t).data() + a * dq + dn, dr, pos[std::size_t(t)]);
      kvcache::mla_absorb_queries(shape_, w, kvcache::ConstTensorView<float, 2>(q.row(t).data(), H, dq),
                                  kvcache::TensorView<float, 2>(q_abs.row(t).data(), H, W));
    }
  }
  // W_UV of every head applied to one token's latent sums o_lat ([H, rank]) -> out ([H, v_head_dim]).
  void values(const Layer& L, const float* o_lat, float* out) const {
    kvcache::mla_apply_values(shape_,
                              kvcache::ConstTensorView<float, 2>(L.wkv_b.data(), L.wkv_b.rows(), L.wkv_b.cols()),
                              kvcache::ConstTensorView<float, 2>(o_lat, shape_.n_heads, shape_.kv_lora_rank),
                              kvcache::TensorView<float, 2>(out, shape_.n_heads, shape_.v_head_dim));
  }

  int n_layers_ = 0;
  kvcache::MlaShape shape_;
  std::vector<Layer> layers_;
};

}  // namespace engine
