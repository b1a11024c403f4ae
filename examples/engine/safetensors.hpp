#pragma once

// A safetensors reader for the reference engine: the whole file in memory, the JSON header parsed with
// nlohmann::json, and every tensor's dtype, shape and byte range checked against the file before use. A malformed or
// truncated file is a kvcache::Error naming what is wrong.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {string: string}}, then the data; offsets are relative to the end of the header.

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"

namespace engine {

struct TensorInfo {
  std::string dtype;  ///< "F16", "BF16", "F32" or "I32"
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;  ///< byte range inside the data section
  [[nodiscard]] std::int64_t elements() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

class SafeTensors {
 public:
  explicit SafeTensors(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    KVCACHE_REQUIRE(in.good(), "cannot open model file '", path, "'");
    const auto size = static_cast<std::size_t>(in.tellg());
    in.seekg(0);
    bytes_.resize(size);
    in.read(reinterpret_cast<char*>(bytes_.data()), static_cast<std::streamsize>(size));
    KVCACHE_REQUIRE(in.good(), "cannot read model file '", path, "'");
    parse();
  }

  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  [[nodiscard]] bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  [[nodiscard]] const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    KVCACHE_REQUIRE(it != tensors_.end(), "'", path_, "' has no tensor '", name, "'");
    return it->second;
  }

  /// The tensor as f32, checked against the expected shape.
  [[nodiscard]] std::vector<float> f32(const std::string& name, const std::vector<std::int64_t>& shape) const {
    const TensorInfo& t = info(name);
    KVCACHE_REQUIRE(t.shape == shape, "'", path_, "': tensor '", name, "' has shape ", shape_text(t.shape),
                    ", expected ", shape_text(shape));
    std::vector<float> out(static_cast<std::size_t>(t.elements()));
    const unsigned char* p = data() + t.begin;
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (t.dtype == "F32") {
        std::memcpy(&out[i], p + 4 * i, 4);
      } else if (t.dtype == "F16" || t.dtype == "BF16") {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = t.dtype == "F16" ? kvcache::f16_bits_to_f32(h) : kvcache::bf16_bits_to_f32(h);
      } else {
        kvcache::detail::throw_error("'", path_, "': tensor '", name, "' is ", t.dtype, ", not a float type");
      }
    }
    return out;
  }
  [[nodiscard]] std::vector<std::int32_t> i32(const std::string& name) const {
    const TensorInfo& t = info(name);
    KVCACHE_REQUIRE(t.dtype == "I32", "'", path_, "': tensor '", name, "' is ", t.dtype, ", expected I32");
    std::vector<std::int32_t> out(static_cast<std::size_t>(t.elements()));
    std::memcpy(out.data(), data() + t.begin, out.size() * 4);
    return out;
  }

 private:
  static std::string shape_text(const std::vector<std::int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  static std::size_t elem_size(const std::string& dtype) {
    if (dtype == "F32" || dtype == "I32") return 4;
    if (dtype == "F16" || dtype == "BF16") return 2;
    return 0;
  }
  [[nodiscard]] const unsigned char* data() const noexcept { return bytes_.data() + 8 + header_size_; }

  void parse() {
    KVCACHE_REQUIRE(bytes_.size() >= 8, "'", path_, "' is too short to be a safetensors file (", bytes_.size(),
                    " bytes)");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes_[std::size_t(i)];
    KVCACHE_REQUIRE(n <= bytes_.size() - 8, "'", path_, "' declares a ", n, "-byte header but holds only ",
                    bytes_.size() - 8, " bytes after the length (truncated?)");
    header_size_ = static_cast<std::size_t>(n);
    const std::size_t data_size = bytes_.size() - 8 - header_size_;
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + std::ptrdiff_t(header_size_));
    } catch (const nlohmann::json::exception& e) {
      kvcache::detail::throw_error("'", path_, "' has a malformed JSON header: ", e.what());
    }
    KVCACHE_REQUIRE(header.is_object(), "'", path_, "': the header is not a JSON object");
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        for (auto m = it->begin(); m != it->end(); ++m)
          if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
        continue;
      }
      const auto& j = it.value();
      KVCACHE_REQUIRE(j.is_object() && j.contains("dtype") && j.contains("shape") && j.contains("data_offsets"), "'",
                      path_, "': tensor '", it.key(), "' lacks dtype, shape or data_offsets");
      TensorInfo t;
      try {
        t.dtype = j.at("dtype").get<std::string>();
        t.shape = j.at("shape").get<std::vector<std::int64_t>>();
        const auto off = j.at("data_offsets").get<std::vector<std::uint64_t>>();
        KVCACHE_REQUIRE(off.size() == 2, "'", path_, "': tensor '", it.key(), "' needs two data offsets");
        t.begin = static_cast<std::size_t>(off[0]);
        t.end = static_cast<std::size_t>(off[1]);
      } catch (const nlohmann::json::exception& e) {
        kvcache::detail::throw_error("'", path_, "': tensor '", it.key(), "' has a malformed entry: ", e.what());
      }
      const std::size_t es = elem_size(t.dtype);
      KVCACHE_REQUIRE(es != 0, "'", path_, "': tensor '", it.key(), "' has unsupported dtype ", t.dtype);
      for (auto d : t.shape) KVCACHE_REQUIRE(d >= 0, "'", path_, "': tensor '", it.key(), "' has a negative dimension");
      KVCACHE_REQUIRE(t.begin <= t.end && t.end <= data_size, "'", path_, "': tensor '", it.key(), "' spans bytes [",
                      t.begin, ", ", t.end, ") but the data section has ", data_size, " bytes (truncated?)");
      KVCACHE_REQUIRE(t.end - t.begin == std::size_t(t.elements()) * es, "'", path_, "': tensor '", it.key(), "' has ",
                      t.end - t.begin, " bytes for shape ", shape_text(t.shape), " of ", t.dtype);
      tensors_[it.key()] = t;
    }
  }

  std::string path_;
  std::vector<unsigned char> bytes_;
  std::size_t header_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace engine
