#include "quant/awq_dots.h"

#include "engine/core/check.h"
#include "engine/core/cpu_features.h"

namespace tessera::quant {
namespace {

// Eight partial sums in an array the compiler may turn into SIMD (it may not reassociate them).
float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

namespace reference {
void lane8_dots(const float* a, const float* const* b, int count, int64_t n, float* out) {
  TESSERA_CHECK(count >= 1 && count <= kMaxDotRows);
  for (int r = 0; r < count; ++r) out[r] = dot(a, b[r], n);
}
}  // namespace reference

void lane8_dots(const float* a, const float* const* b, int count, int64_t n, float* out) {
  TESSERA_CHECK(count >= 1 && count <= kMaxDotRows);
  static const bool simd = cpu_features().has_avx2_fma();
  if (simd) return avx2::lane8_dots(a, b, count, n, out);
  reference::lane8_dots(a, b, count, n, out);
}

}  // namespace tessera::quant
