// Fast twins of the reference row quantizers, and the reference pieces they fall back on.
//
// Quantizing at load runs every weight through QuantTraits::quantize_row once; the scalar reference takes 4-16 ns a
// value (a 7B model: minutes of CPU time), and the importance-weighted searches of activation-aware int4/NF4 11-17
// times that. quantize_avx2.cpp vectorizes round to nearest for every dense format and Q4's and NF4's weighted
// searches, and writes byte for byte the rows the reference writes; quant_traits() hands it out through its
// quantize_row entries when cpuid reports AVX2, FMA and F16C, and keeps the reference as reference_quantize_row.
#pragma once

#include <cstdint>

namespace tessera::quant {

namespace reference {
// The reference quantizers below the row (quant_traits.cpp), round to nearest unless given importance w: a whole Q8
// row, and one block of n <= group values of the grouped types (n < group only for a row's last block; `out` gets the
// whole block).
void q8_row(const float* x, int64_t cols, void* row);
void q8_row_with_amax(const float* x, int64_t cols, float amax, void* row);     // quantize_q8_row_with_amax's
void q4_block(const float* x, int n, int group, const float* w, uint8_t* out);  // w: importance, may be null
void q4a_block(const float* x, int n, int group, uint8_t* out);
void nf4_block(const float* x, int n, int group, const float* w, uint8_t* out);
}  // namespace reference

namespace avx2 {
// quantize_avx2.cpp, the one translation unit of tessera_quant_formats built with -mavx2 -mf16c; only valid to call
// when cpu_features().has_avx2_fma(). Each returns false, having written nothing, for a group size the format does
// not have (the caller then lets the reference report it) and, except Q4 and NF4, when given importance weights
// (the reference's searches for those stay scalar). Blocks the vector code could not reproduce exactly go to
// the reference functions above: a row's ragged last block, blocks holding a non-finite value or one near the edge
// of the fp16 range, a Q4A block whose minimum is zero (the sign of zero reaches the stored offset), and Q4 blocks
// whose candidate scales' (weighted) squared errors are too close to order from float sums, or hold negative or
// non-finite importance weights.
bool q8_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row);
void q8_quantize_row_with_amax(const float* x, int64_t cols, float amax, void* row);
bool q4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row);
bool q4a_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row);
bool nf4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row);
}  // namespace avx2

}  // namespace tessera::quant
