// Helpers shared by the AVX-512 translation units (kernels_avx512.cpp, kernels_bf16_avx512.cpp,
// kernels_quant_avx512.cpp) and included by nothing else. They have internal linkage (an anonymous namespace), so
// each unit compiles its own copy with its own flags: the linker can never hand one unit's copy, with that unit's
// instructions, to another (the rule kernels_avx2.cpp states for shared inline functions).
#pragma once

#include <immintrin.h>

#include <utility>

namespace tessera::cpu {
namespace {  // NOLINT(google-build-namespaces): internal linkage per including unit is the point

template <int N>
struct Rows {
  static constexpr int value = N;
};
// Calls f(Rows<m>{}) for 1 <= m <= kMax (nothing otherwise): the tiles are templates on their row count.
template <int kMax, typename F>
void with_rows(int m, const F& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    (void)((m == I + 1 ? (f(Rows<I + 1>{}), true) : false) || ...);
  }
  (std::make_integer_sequence<int, kMax>{});
}

// Horizontal sums of four 8-lane vectors: each is reduced with the same tree whatever the other three are, so a
// kernel may pass any vectors alongside a row's without changing its bits.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// A 16-lane accumulator folded to 8 lanes (the upper half added to the lower); hsum4 then reduces four of those.
inline __m256 fold16(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

}  // namespace
}  // namespace tessera::cpu
