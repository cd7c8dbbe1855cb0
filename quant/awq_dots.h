// Dot products of one activation row with a few weight-error rows, for the activation-aware scale search.
//
// The search measures sum_i (x_i . d)^2 for each sampled weight row's quantization error d over the calibration rows
// x_i: at load of a 1.1B model with --calib, tens of billions of multiply-adds. Several rows share each pass over
// x_i, and on CPUs with AVX2 one 256-bit register holds a row's eight partial sums. Every dot is summed the same way
// on every path: eight lanes (lane k takes the products of elements k, k + 8, ...), multiply then add (never fused),
// the lanes combined as ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)), then the elements past the last multiple of 8 in
// order. So the results, and the scales the search picks, do not depend on the CPU or on how rows are grouped.
#pragma once

#include <cstdint>

namespace tessera::quant {

inline constexpr int kMaxDotRows = 4;

// out[r] = a . b[r] for r < count (1 <= count <= kMaxDotRows), each of n values; the AVX2 path when cpuid has it.
void lane8_dots(const float* a, const float* const* b, int count, int64_t n, float* out);

namespace reference {
void lane8_dots(const float* a, const float* const* b, int count, int64_t n, float* out);
}

namespace avx2 {
// awq_dots_avx2.cpp (-mavx2, no -mfma); only valid to call when cpu_features().has_avx2_fma().
void lane8_dots(const float* a, const float* const* b, int count, int64_t n, float* out);
}  // namespace avx2

}  // namespace tessera::quant
