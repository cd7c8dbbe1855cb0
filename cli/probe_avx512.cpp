// AVX-512 FMA loop for machine_probe.cpp (the fp32 peak when the AVX-512 kernels run: full-width cores such as
// Zen 5 reach twice the AVX2 rate, double-pumped ones such as Zen 4 the same). This file alone is compiled with
// -mavx512f -mfma.
#include <immintrin.h>

namespace tessera::cli {

double fma_loop_avx512(long iterations) {
  // 16 independent accumulators cover FMA latency on two 512-bit ports.
  __m512 acc[16];
  for (int k = 0; k < 16; ++k) acc[k] = _mm512_set1_ps(0.001f * k);
  const __m512 m = _mm512_set1_ps(0.999999f);
  const __m512 add = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iterations; ++i) {
    for (int k = 0; k < 16; ++k) acc[k] = _mm512_fmadd_ps(acc[k], m, add);
  }
  __m512 s = acc[0];
  for (int k = 1; k < 16; ++k) s = _mm512_add_ps(s, acc[k]);
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  volatile float sink = out[0];
  (void)sink;
  return static_cast<double>(iterations) * 16 * 16 * 2;
}

}  // namespace tessera::cli
