// Reference encoder and decoder of the 2:4 sparse weight types (DType::S24Q8, DType::S24Q4; block layout in
// quant/blocks.h). Registered in the traits table (quant/quant_traits.h); the portable kernels use the position
// decoder, the AVX2 kernels re-derive it with byte shuffles.
//
// Encoding keeps, in every group of 4 inputs, the two values of largest magnitude (the first on ties): a row that
// was pruned to 2:4 beforehand (tessera's N:M pruning) keeps exactly its survivors; any other row is pruned to 2:4
// by magnitude on the way. A ragged tail (cols not a multiple of 64) is padded with zeros.
#pragma once

#include <cstdint>

namespace tessera::quant {

// Input offset (0..63) inside its 64-input block of every kept slot (0..31), from a block's 8 index bytes.
void sparse24_positions(const uint8_t* idx, uint8_t* offsets);

// The kept slot (0..31) that holds the e-th kept value (e in {0, 1}) of group g (0..15).
constexpr int sparse24_slot(int g, int e) {
  const int h = g / 8, l = (g / 4) % 2, j = g % 4;
  return 16 * l + 8 * h + 2 * j + e;
}

// Traits entries (see QuantTraits). `group` is ignored; `importance` (may be null) weights the int4 scale choice.
void s24q8_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row);
// With the row's scale taken from `amax` (the largest |w| kept in the whole row when the row is split across
// tensor-parallel ranks), as quantize_q8_row_with_amax does for Q8.
void s24q8_quantize_row_with_amax(const float* x, int64_t cols, float amax, void* row);
void s24q8_dequantize_row(const void* row, int64_t cols, int group, float* out);
void s24q4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row);
void s24q4_dequantize_row(const void* row, int64_t cols, int group, float* out);

}  // namespace tessera::quant
