// Non-owning views of weights. Storage is owned by a WeightStore (mapped files or heap buffers).
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"

namespace tessera {

// How a matrix's rows lie in memory.
enum class MatrixLayout : uint8_t {
  kRows,  // row after row: row r at data + r * row_bytes() (the canonical form, also on disk)
  // Q4/Q4A rows interleaved eight at a time for the CPU backend's kernels (engine/backend/cpu/panel8.h), made by
  // CpuBackend::upload: rows 8p..8p+7 form one panel of 8 * row_bytes() bytes at row(8p); the rows are padded to a
  // multiple of 8. Only the CPU backend reads this layout.
  kPanels8,
};

// A row-major weight matrix [rows][cols] (for linear layers: [out_features][in_features]). Quantized types store
// each row as blocks (quant/blocks.h); row r starts at data + r * row_bytes().
struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  int group = 0;  // quantization group along cols for Q4/Q4A/NF4; 0 otherwise
  MatrixLayout layout = MatrixLayout::kRows;

  size_t row_bytes() const { return dtype_row_bytes(dtype, cols, group); }
  size_t bytes() const { return static_cast<size_t>(rows) * row_bytes(); }
  const void* row(int64_t r) const { return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_bytes(); }
  bool empty() const { return data == nullptr; }
};

}  // namespace tessera
