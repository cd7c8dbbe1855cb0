#include "engine/backend/cuda/cuda_check.h"

namespace tessera::cuda {

void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": CUDA error " + cudaGetErrorName(err) + " (" +
              cudaGetErrorString(err) + ") in " + expr);
}

void throw_cublas_error(cublasStatus_t st, const char* expr, const char* file, int line) {
  throw Error(std::string(file) + ":" + std::to_string(line) + ": cuBLAS error " + cublasGetStatusName(st) + " (" +
              cublasGetStatusString(st) + ") in " + expr);
}

}  // namespace tessera::cuda
