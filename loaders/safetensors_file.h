// Header parsing and validation of one .safetensors file (zero-copy: tensors point into the mapping).
// Layout: uint64 little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data block;
// offsets are relative to the first byte after the header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "engine/core/mapped_file.h"

namespace tessera {

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;      // as written in the header ("BF16", "I8", ...)
  std::optional<DType> dtype;  // nullopt for valid safetensors dtypes Tessera cannot compute with
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping
  size_t bytes = 0;
};

// Parses and validates the header of a mapped file: header length within the file, well-formed JSON without
// duplicate names, known dtypes, data_offsets inside the data block and equal to shape x dtype size.
// Throws tessera::Error naming the file. The tensors point into `file`, which must outlive them.
std::vector<SafetensorsTensor> read_safetensors_header(const MappedFile& file);

}  // namespace tessera
