// AVX2/FMA loops for machine_probe.cpp. This file alone is compiled with -mavx2 -mfma.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace tessera::cli {

uint64_t read_sum_avx2(const uint8_t* data, size_t bytes) {
  // Four independent streams (quarters of the range), like a GEMV reading four weight rows at once: one
  // sequential stream alone does not keep enough misses in flight to reach the memory system's limit.
  const size_t quarter = bytes / 4 / 64 * 64;
  const uint8_t* s0 = data;
  const uint8_t* s1 = data + quarter;
  const uint8_t* s2 = data + 2 * quarter;
  const uint8_t* s3 = data + 3 * quarter;
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (size_t i = 0; i < quarter; i += 64) {
    a = _mm256_add_epi64(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(s0 + i)));
    b = _mm256_add_epi64(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(s1 + i)));
    c = _mm256_add_epi64(c, _mm256_load_si256(reinterpret_cast<const __m256i*>(s2 + i)));
    d = _mm256_add_epi64(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(s3 + i)));
    a = _mm256_add_epi64(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(s0 + i + 32)));
    b = _mm256_add_epi64(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(s1 + i + 32)));
    c = _mm256_add_epi64(c, _mm256_load_si256(reinterpret_cast<const __m256i*>(s2 + i + 32)));
    d = _mm256_add_epi64(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(s3 + i + 32)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

double fma_loop_avx2(long iterations) {
  // 12 independent accumulators cover FMA latency (4-5 cycles) on two ports.
  __m256 acc[12];
  for (int k = 0; k < 12; ++k) acc[k] = _mm256_set1_ps(0.001f * k);
  const __m256 m = _mm256_set1_ps(0.999999f);
  const __m256 add = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i) {
    for (int k = 0; k < 12; ++k) acc[k] = _mm256_fmadd_ps(acc[k], m, add);
  }
  __m256 s = acc[0];
  for (int k = 1; k < 12; ++k) s = _mm256_add_ps(s, acc[k]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return static_cast<double>(iterations) * 12 * 8 * 2;
}

}  // namespace tessera::cli
