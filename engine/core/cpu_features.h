// Run-time CPU feature detection used to pick kernel variants (never compile-time -march).
#pragma once

#include <string>

namespace tessera {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;

  bool has_avx2_fma() const { return avx2 && fma && f16c; }
  // What the AVX-512 kernel set needs (it also uses the AVX2 set's kernels).
  bool has_avx512() const { return has_avx2_fma() && avx512f && avx512bw && avx512vl && avx512vnni; }
  // What the AVX-512 BF16 kernel set adds (vdpbf16ps).
  bool has_avx512_bf16() const { return has_avx512() && avx512bf16; }
  std::string describe() const;
};

// Detected once. TESSERA_CPU_FEATURES=portable forces the reference kernels, TESSERA_CPU_FEATURES=avx2 hides
// AVX-512 and TESSERA_CPU_FEATURES=avx512 hides AVX512_BF16 (to compare kernel sets on one machine).
const CpuFeatures& cpu_features();

}  // namespace tessera
