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
  bool avx512vnni = false;
  bool avx512bf16 = false;

  bool has_avx2_fma() const { return avx2 && fma && f16c; }
  std::string describe() const;
};

// Detected once; TESSERA_CPU_FEATURES=portable (the one declared knob) forces the reference kernels.
const CpuFeatures& cpu_features();

}  // namespace tessera
