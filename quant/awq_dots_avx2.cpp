// awq_dots.h's lane8_dots with one ymm register of partial sums per row. Built with -mavx2 and without -mfma, so
// each lane multiplies and adds exactly as the reference's scalar code does.
#include <immintrin.h>

#include "quant/awq_dots.h"

namespace tessera::quant::avx2 {
namespace {

template <int R>
void dots(const float* a, const float* const* b, int64_t n, float* out) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(a + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(x, _mm256_loadu_ps(b[r] + i)));
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) float s8[8];
    _mm256_store_ps(s8, acc[r]);
    float s = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
    for (int64_t j = i; j < n; ++j) s += a[j] * b[r][j];
    out[r] = s;
  }
}

}  // namespace

void lane8_dots(const float* a, const float* const* b, int count, int64_t n, float* out) {
  switch (count) {
    case 4:
      return dots<4>(a, b, n, out);
    case 3:
      return dots<3>(a, b, n, out);
    case 2:
      return dots<2>(a, b, n, out);
    default:
      return dots<1>(a, b, n, out);
  }
}

}  // namespace tessera::quant::avx2
