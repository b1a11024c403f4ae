#pragma once

// A safetensors reader for the reference engine: the whole file in memory, the JSON header parsed with
// nlohmann::json, and every tensor's dtype, shape and byte range checked against the file before use. A malformed or
// truncated file is a kvcache::Error naming what is wrong.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {string: string}}, then the data; offsets are relative to the end of the header.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "kvcache/core/dtype.hpp"
#include "kvcache/core/error.hpp"

namespace engine {

struct TensorInfo {
  std::string dtype;  ///< "F16", "BF16", "F32" or "I32"
  std::vector<std::int64_t> shape;
  std::size_t begin = 0, end = 0;  ///< byte range inside the data section
  std::size_t elements = 0;        ///< product of shape; checked against the byte range, so it cannot have overflowed
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

  /// A file already in memory; `name` stands for the path in error messages.
  SafeTensors(std::vector<unsigned char> bytes, std::string name) : path_(std::move(name)), bytes_(std::move(bytes)) {
    parse();
  }

  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  [[nodiscard]] const std::map<std::string, TensorInfo>& tensors() const noexcept { return tensors_; }
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
    std::vector<float> out(t.elements);
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
    std::vector<std::int32_t> out(t.elements);
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
  static constexpr std::uint64_t kMaxDim = std::uint64_t(1) << 62;

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
        KVCACHE_REQUIRE(it->is_object(), "'", path_, "': __metadata__ is not a JSON object");
        for (auto m = it->begin(); m != it->end(); ++m)
          if (m->is_string()) metadata_[m.key()] = m->get<std::string>();
        continue;
      }
      tensors_[it.key()] = tensor_info(it.key(), it.value(), data_size);
    }
  }

  // One header entry, every field checked by type before it is read: nlohmann's numeric conversions are plain casts,
  // so a float or negative number must not reach them.
  [[nodiscard]] TensorInfo tensor_info(const std::string& name, const nlohmann::json& j, std::size_t data_size) const {
    KVCACHE_REQUIRE(j.is_object() && j.contains("dtype") && j.contains("shape") && j.contains("data_offsets"), "'",
                    path_, "': tensor '", name, "' lacks dtype, shape or data_offsets");
    const auto& dtype = j["dtype"];
    const auto& shape = j["shape"];
    const auto& off = j["data_offsets"];
    KVCACHE_REQUIRE(dtype.is_string(), "'", path_, "': tensor '", name, "' has a dtype that is not a string");
    KVCACHE_REQUIRE(shape.is_array(), "'", path_, "': tensor '", name, "' has a shape that is not an array");
    KVCACHE_REQUIRE(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                    "'", path_, "': tensor '", name, "' needs two non-negative integer data offsets");
    TensorInfo t;
    t.dtype = dtype.get<std::string>();
    const std::size_t es = elem_size(t.dtype);
    KVCACHE_REQUIRE(es != 0, "'", path_, "': tensor '", name, "' has unsupported dtype ", t.dtype);
    const std::uint64_t begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
    KVCACHE_REQUIRE(begin <= end && end <= data_size, "'", path_, "': tensor '", name, "' spans bytes [", begin, ", ",
                    end, ") but the data section has ", data_size, " bytes (truncated?)");
    t.begin = static_cast<std::size_t>(begin);
    t.end = static_cast<std::size_t>(end);
    std::vector<std::uint64_t> dims;
    for (const auto& d : shape) {
      KVCACHE_REQUIRE(d.is_number_unsigned() && d.get<std::uint64_t>() <= kMaxDim, "'", path_, "': tensor '", name,
                      "' has a dimension ", d.dump(), " that is not an integer in [0, 2^62]");
      dims.push_back(d.get<std::uint64_t>());
      t.shape.push_back(static_cast<std::int64_t>(dims.back()));
    }
    // The element count is bounded by the bytes it must fill, dimension by dimension, so the product never wraps: a
    // shape of [2^62] over 8 bytes is an error, not 2^62 * 2 bytes modulo 2^64.
    const std::size_t max_elements = (t.end - t.begin) / es;
    std::size_t n = 1;
    const bool empty = std::find(dims.begin(), dims.end(), 0) != dims.end();
    for (std::size_t i = 0; !empty && i < dims.size(); ++i) {
      KVCACHE_REQUIRE(dims[i] <= max_elements / n, "'", path_, "': tensor '", name, "' has shape ", shape_text(t.shape),
                      ", more elements than its ", t.end - t.begin, " bytes hold");
      n *= static_cast<std::size_t>(dims[i]);
    }
    if (empty) n = 0;
    KVCACHE_REQUIRE(n * es == t.end - t.begin, "'", path_, "': tensor '", name, "' has ", t.end - t.begin,
                    " bytes for shape ", shape_text(t.shape), " of ", t.dtype);
    t.elements = n;
    return t;
  }

  std::string path_;
  std::vector<unsigned char> bytes_;
  std::size_t header_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace engine
