// Error checking for CUDA runtime and cuBLAS calls: a failed call throws tessera::Error naming the call, the
// error and file:line, so a misconfigured or missing GPU surfaces as an error the CLI prints (not an abort).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "engine/core/check.h"

namespace tessera::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line);

}  // namespace tessera::cuda

#define TESSERA_CUDA_CHECK(expr)                                                       \
  do {                                                                                 \
    const cudaError_t tessera_cuda_err_ = (expr);                                      \
    if (tessera_cuda_err_ != cudaSuccess)                                              \
      ::tessera::cuda::throw_cuda_error(tessera_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define TESSERA_CUBLAS_CHECK(expr)                                                        \
  do {                                                                                    \
    const cublasStatus_t tessera_cublas_st_ = (expr);                                     \
    if (tessera_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::tessera::cuda::throw_cublas_error(tessera_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: launch-configuration errors are reported at once (execution errors surface at the next
// synchronizing call, which is checked too).
#define TESSERA_CUDA_CHECK_LAUNCH() TESSERA_CUDA_CHECK(cudaGetLastError())
