// Non-owning views of weights. Storage is owned by a WeightStore (mapped files or heap buffers).
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"

namespace tessera {

// A row-major weight matrix [rows][cols] (for linear layers: [out_features][in_features]).
struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;

  size_t row_bytes() const { return static_cast<size_t>(cols) * dtype_size(dtype); }
  size_t bytes() const { return static_cast<size_t>(rows) * row_bytes(); }
  const void* row(int64_t r) const { return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_bytes(); }
  bool empty() const { return data == nullptr; }
};

}  // namespace tessera
