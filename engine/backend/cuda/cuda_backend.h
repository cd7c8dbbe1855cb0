// The CUDA backend: the Backend ops on device memory, queued on one stream of one device.
//
// Memory spaces: every float pointer (activations, bias, norm weights, the KV cache in KvLayer, RopeTable's
// cos/sin) and every Matrix's data must be device memory — weights as produced by DeviceWeightStore::upload_matrix
// (device layout, engine/backend/cuda/device_layout.h). The small index arrays `tokens` (embedding) and
// `positions` (rope) are host arrays: the scheduler makes them on the host, the backend checks them as the CPU
// backend does and copies them over. argmax returns its index to the host (and synchronizes the stream).
//
// Ops are asynchronous with respect to the host (except argmax and synchronize()); scratch comes from a pool
// reserved once per backend, so no op calls cudaMalloc.
//
// Memory interface: allocate() is one zeroed cudaMalloc (model scratch and KV caches, made at construction, never
// per step); copies are cudaMemcpyAsync on the backend's stream (copy_to_backend and copy_to_host wait for
// theirs); upload() repacks a weight into the device layout, in a DeviceWeightStore the backend owns.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/device_pool.h"

namespace tessera {

struct CudaBackendOptions {
  int device = 0;
  size_t pool_bytes = size_t{512} << 20;  // scratch arena (GEMM operands, attention partials, cuBLAS workspace)
};

// Number of CUDA devices usable here; 0 (and *why set) when the runtime finds none or fails (no driver, no GPU).
// Never throws: tests use it to skip.
int cuda_device_count(std::string* why = nullptr);

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options = {});
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override;  // e.g. "cuda(NVIDIA H100 80GB HBM3, sm_90)"

  bool host_memory() const override { return false; }
  BackendBuffer allocate(size_t bytes) override;
  void copy_to_backend(void* dst, const void* host_src, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  Matrix upload(const Matrix& host) override;
  size_t uploaded_bytes() const;  // device bytes of the uploaded weights

  void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) override;
  void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override;
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override;
  void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) override;
  void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out) override;
  void add(float* y, const float* x, size_t count) override;
  void embedding(const Matrix& table, const int* tokens, int n, float* out) override;
  int argmax(const float* x, int n) override;

  // Residual stream and norm in one pass: x += delta, then y = rmsnorm(x) (the same as add then rmsnorm).
  void add_rmsnorm(float* x, const float* delta, const float* w, int n, int dim, float eps, float* y);

  cudaStream_t stream() const;
  void synchronize() override;
  cuda::DevicePool& pool();
  int sm_count() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
