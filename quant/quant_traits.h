// The one traits table of quantized weight types: sizes, reference (round-to-nearest) quantization and
// dequantization of a row, and the fast quantizer load-time compression uses (byte for byte the reference). The
// matrix kernels live in the backends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/core/dtype.h"
#include "engine/core/tensor.h"

namespace tessera::quant {

using QuantizeRowFn = void (*)(const float* x, int64_t cols, int group, const float* importance, void* row);

struct QuantTraits {
  DType dtype;
  const char* name;
  bool grouped;  // needs a group size (Q4/Q4A/NF4)
  // Quantizes `cols` values into one stored row (dtype_row_bytes(dtype, cols, group) bytes), round to nearest.
  // `importance` (may be null): per-input weights for the scale search (used by activation-aware schemes).
  // Where the CPU has one, this is a SIMD twin of reference_quantize_row (quantize_simd.h: round to nearest for
  // every type, and the importance-weighted search for Q4 and NF4): the same bytes, faster.
  QuantizeRowFn quantize_row;
  // Expands a stored row back to `cols` floats.
  void (*dequantize_row)(const void* row, int64_t cols, int group, float* out);
  // The portable scalar quantizer that defines the format's bytes.
  QuantizeRowFn reference_quantize_row;
};

// Traits of a quantized type; TESSERA_CHECK fails for plain types.
const QuantTraits& quant_traits(DType t);

// Expands row r of any matrix (plain or quantized) to fp32.
void dequantize_matrix_row(const Matrix& w, int64_t r, float* out);

// Q8 with a given row maximum |x| (>= the row's own): scale = amax / 127. Tensor-parallel shards holding part of
// a row use the maximum over the whole row, so they store exactly what one process stores.
void quantize_q8_row_with_amax(const float* x, int64_t cols, float amax, void* row);

// Quantizes a vector of activations into ceil(n / 32) BlockQ8Act blocks (last block zero-padded).
void quantize_activations(const float* x, int64_t n, struct BlockQ8Act* out);

}  // namespace tessera::quant
