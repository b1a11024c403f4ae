#pragma once

// Tensor vocabulary at the API: Eigen TensorMaps, row-major, over memory someone else owns (no copies).
// Shapes are written outermost first, e.g. q: [n_q_heads, head_dim_k].

#include <cstdint>
#include <unsupported/Eigen/CXX11/Tensor>

namespace kvcache {

template <class T, int Rank>
using TensorView = Eigen::TensorMap<Eigen::Tensor<T, Rank, Eigen::RowMajor, Eigen::Index>>;
template <class T, int Rank>
using ConstTensorView = Eigen::TensorMap<Eigen::Tensor<const T, Rank, Eigen::RowMajor, Eigen::Index>>;

/// Original token position of a cached row (int32: capacities are below 2^30).
using Position = std::int32_t;

}  // namespace kvcache
