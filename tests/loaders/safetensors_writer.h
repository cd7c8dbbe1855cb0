// A tiny safetensors / Hugging Face directory writer for test fixtures, with knobs to break things on purpose.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "tests/loaders/test_util.h"

namespace tessera::test {

struct StTensor {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", or anything for the bad-dtype tests
  std::vector<int64_t> shape;
  std::string data;  // raw bytes
};

inline std::string encode_floats(const std::vector<float>& v, const std::string& dtype) {
  std::string out;
  for (float x : v) {
    if (dtype == "F16") {
      append_pod(out, f32_to_f16(x));
    } else if (dtype == "BF16") {
      append_pod(out, f32_to_bf16(x));
    } else {
      append_pod(out, x);
    }
  }
  return out;
}

// The JSON header for tensors laid out back to back (data_offsets computed).
inline nlohmann::ordered_json safetensors_header(const std::vector<StTensor>& tensors) {
  nlohmann::ordered_json h;
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  for (const StTensor& t : tensors) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
    off += t.data.size();
  }
  return h;
}

// header length + header text + data. `header_text` is used verbatim; the length field can be overridden.
inline std::string safetensors_raw(const std::string& header_text, const std::string& data,
                                   std::optional<uint64_t> length_field = std::nullopt) {
  std::string out;
  append_pod(out, length_field.value_or(header_text.size()));
  return out + header_text + data;
}

// A well-formed file; `pad` spaces after the JSON shift the data block (alignment tests).
inline std::string safetensors_bytes(const std::vector<StTensor>& tensors, size_t pad = 0) {
  std::string data;
  for (const StTensor& t : tensors) data += t.data;
  return safetensors_raw(safetensors_header(tensors).dump() + std::string(pad, ' '), data);
}

}  // namespace tessera::test
