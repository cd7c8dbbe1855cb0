// Shared by the backend tests that run once per CPU kernel set and thread count: the test parameter, its name, and
// whether this machine can run a set.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/cpu_features.h"

namespace tessera::test {

struct BackendConfig {
  CpuKernels kernels;
  int threads;
};

inline std::string kernels_name(CpuKernels k) {
  return k == CpuKernels::kAvx512Bf16 ? "avx512bf16"
         : k == CpuKernels::kAvx512   ? "avx512"
         : k == CpuKernels::kAvx2     ? "avx2"
                                      : "portable";
}

inline std::string config_name(const ::testing::TestParamInfo<BackendConfig>& info) {
  return kernels_name(info.param.kernels) + "_" + std::to_string(info.param.threads) + "threads";
}

// Why this CPU cannot run kernel set k, for GTEST_SKIP; empty when it can.
inline std::string missing_cpu_features(CpuKernels k) {
  if (k == CpuKernels::kAvx2 && !cpu_features().has_avx2_fma()) return "CPU lacks AVX2+FMA+F16C";
  if (k == CpuKernels::kAvx512 && !cpu_features().has_avx512()) return "CPU lacks AVX-512 F+BW+VL+VNNI";
  if (k == CpuKernels::kAvx512Bf16 && !cpu_features().has_avx512_bf16()) return "CPU lacks AVX512_BF16";
  return "";
}

}  // namespace tessera::test
