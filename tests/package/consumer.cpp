// A consumer: decode attention over a tiny cache, checked against the reference. Exit code 0 on success.

#include <cmath>
#include <cstdio>
#include <kvcache/kvcache.hpp>
#include <vector>

#include "kvcache/testing/testing.hpp"

int main() {
  kvcache::AttentionShape shape{4, 2, 16, 16};
  kvcache::LayerSlots kv(shape, 8, kvcache::DType::kF16);
  std::vector<float> k(2 * 3 * 16), v(2 * 3 * 16), q(4 * 16), out(4 * 16), ref(4 * 16);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::sin(0.1f * static_cast<float>(i)), v[i] = std::cos(0.3f * i);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::cos(0.7f * static_cast<float>(i));
  std::vector<kvcache::Position> pos = {0, 1, 2};
  kv.append(kvcache::ConstTensorView<float, 3>(k.data(), 2, 3, 16),
            kvcache::ConstTensorView<float, 3>(v.data(), 2, 3, 16), pos);
  kvcache::DecodeWorkspace ws(shape, 8);
  kvcache::decode_attention(kv, kvcache::ConstTensorView<float, 2>(q.data(), 4, 16),
                            kvcache::TensorView<float, 2>(out.data(), 4, 16), ws);
  kvcache::reference::decode_attention(kv, kvcache::ConstTensorView<float, 2>(q.data(), 4, 16),
                                       kvcache::TensorView<float, 2>(ref.data(), 4, 16));
  double err = 0;
  for (std::size_t i = 0; i < out.size(); ++i) err = std::fmax(err, std::fabs(out[i] - ref[i]));
  std::printf("kvcache %d.%d.%d consumer: isa %s, max error %g\n", KVCACHE_VERSION_MAJOR, KVCACHE_VERSION_MINOR,
              KVCACHE_VERSION_PATCH, kvcache::isa_name(kvcache::active_isa()).data(), err);
  return err < 1e-5 ? 0 : 1;
}
