// libFuzzer target: the reference engine's safetensors reader (examples/engine/safetensors.hpp) on arbitrary bytes.
// Every input must either parse, with every tensor readable in its own dtype, or raise kvcache::Error; any other
// exception, a crash or a sanitizer report is a finding.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const engine::SafeTensors st(std::vector<unsigned char>(data, data + size), "fuzz input");
    for (const auto& [name, info] : st.tensors()) {
      if (info.dtype == "I32") {
        (void)st.i32(name);
      } else {
        (void)st.f32(name, info.shape);
      }
      if (!st.has(name)) __builtin_trap();
    }
    (void)st.metadata();
  } catch (const kvcache::Error&) {
  }
  return 0;
}
