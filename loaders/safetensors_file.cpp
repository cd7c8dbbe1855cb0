#include "loaders/safetensors_file.h"

#include <cstring>
#include <string_view>

#include "engine/core/check.h"
#include "loaders/json_util.h"

namespace tessera {
namespace {

// The safetensors reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  std::string_view name;
  size_t size;
  std::optional<DType> dtype;
};

constexpr DTypeInfo kDTypes[] = {
    {"F32", 4, DType::F32},    {"F16", 2, DType::F16},       {"BF16", 2, DType::BF16},     {"F64", 8, std::nullopt},
    {"I64", 8, std::nullopt},  {"I32", 4, std::nullopt},     {"I16", 2, std::nullopt},     {"I8", 1, std::nullopt},
    {"U64", 8, std::nullopt},  {"U32", 4, std::nullopt},     {"U16", 2, std::nullopt},     {"U8", 1, std::nullopt},
    {"BOOL", 1, std::nullopt}, {"F8_E4M3", 1, std::nullopt}, {"F8_E5M2", 1, std::nullopt},
};

const DTypeInfo* find_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return &d;
  return nullptr;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what);
}

bool as_u64(const nlohmann::json& j, uint64_t* out) {
  if (!j.is_number_unsigned()) return false;  // nlohmann stores every non-negative integer literal as unsigned
  *out = j.get<uint64_t>();
  return true;
}

}  // namespace

std::vector<SafetensorsTensor> read_safetensors_header(const MappedFile& file) {
  const std::string& path = file.path();
  const size_t size = file.size();
  if (size < 8)
    fail(path, "truncated: " + std::to_string(size) + " bytes, shorter than the 8-byte safetensors header length");
  uint64_t header_len = 0;
  std::memcpy(&header_len, file.data(), 8);  // little-endian on every supported host
  if (header_len > size - 8)
    fail(path, "safetensors header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(size) + " bytes; truncated?)");
  if (header_len > kMaxHeaderBytes)
    fail(path, "safetensors header length " + std::to_string(header_len) + " is too large");

  const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, header_len);
  const nlohmann::json header = parse_json_strict(text, path + " (safetensors header)");
  if (!header.is_object()) fail(path, "safetensors header is not a JSON object");

  const uint8_t* data_block = file.data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<SafetensorsTensor> tensors;
  tensors.reserve(header.size());
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string what = "tensor '" + name + "': ";
    if (!info.is_object()) fail(path, what + "entry is not a JSON object");
    const auto dt = info.find("dtype"), sh = info.find("shape"), off = info.find("data_offsets");
    if (dt == info.end() || !dt->is_string()) fail(path, what + "missing or non-string \"dtype\"");
    if (sh == info.end() || !sh->is_array()) fail(path, what + "missing or non-array \"shape\"");
    if (off == info.end() || !off->is_array() || off->size() != 2)
      fail(path, what + "\"data_offsets\" is not [begin, end]");

    SafetensorsTensor t;
    t.name = name;
    t.dtype_name = dt->get<std::string>();
    const DTypeInfo* dinfo = find_dtype(t.dtype_name);
    if (dinfo == nullptr) fail(path, what + "unknown dtype '" + t.dtype_name + "'");
    t.dtype = dinfo->dtype;

    uint64_t count = 1;
    for (const auto& d : *sh) {
      uint64_t dim = 0;
      if (!as_u64(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX))
        fail(path, what + "shape " + sh->dump() + " is invalid");
      if (__builtin_mul_overflow(count, dim, &count)) fail(path, what + "shape " + sh->dump() + " overflows");
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t expect_bytes = 0;
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(dinfo->size), &expect_bytes))
      fail(path, what + "shape " + sh->dump() + " overflows");

    uint64_t begin = 0, end = 0;
    if (!as_u64((*off)[0], &begin) || !as_u64((*off)[1], &end) || begin > end)
      fail(path, what + "data_offsets " + off->dump() + " are invalid");
    if (end > data_size)
      fail(path, what + "data_offsets " + off->dump() + " run past the end of the data (" + std::to_string(data_size) +
                     " bytes; truncated file?)");
    if (end - begin != expect_bytes)
      fail(path, what + "data_offsets " + off->dump() + " span " + std::to_string(end - begin) + " bytes but shape " +
                     sh->dump() + " of " + t.dtype_name + " needs " + std::to_string(expect_bytes));
    t.data = data_block + begin;
    t.bytes = static_cast<size_t>(expect_bytes);
    tensors.push_back(std::move(t));
  }
  return tensors;
}

}  // namespace tessera
