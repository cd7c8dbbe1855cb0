// Row-wise and element-wise kernels: RMSNorm (and the fused residual-add variant), RoPE, add, SiLU-mul, bias
// broadcast, embedding lookup, fp32 -> fp16/bf16 conversion, and argmax.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

constexpr int kRowThreads = 256;

unsigned grid_for(size_t count, int threads) {
  return static_cast<unsigned>(std::min<size_t>((count + threads - 1) / threads, 65535u * 8u));
}

// ---- RMSNorm ----

__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_kernel(const float* x, const float* __restrict__ w, int dim, float eps, float* y) {
  __shared__ float red[32];
  const float* xi = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* yi = y + static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) ss = fmaf(xi[c], xi[c], ss);
  ss = dev::block_sum(ss, red);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) yi[c] = xi[c] * inv * w[c];  // element-wise: y may be x
}

__global__ void __launch_bounds__(kRowThreads)
    add_rmsnorm_kernel(float* __restrict__ x, const float* __restrict__ delta, const float* __restrict__ w, int dim,
                       float eps, float* __restrict__ y) {
  __shared__ float red[32];
  float* xi = x + static_cast<int64_t>(blockIdx.x) * dim;
  const float* di = delta + static_cast<int64_t>(blockIdx.x) * dim;
  float* yi = y + static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < dim; c += blockDim.x) {
    const float v = xi[c] + di[c];
    xi[c] = v;
    ss = fmaf(v, v, ss);
  }
  ss = dev::block_sum(ss, red);  // also orders this thread's writes of xi before the reads below
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int c = threadIdx.x; c < dim; c += blockDim.x) yi[c] = xi[c] * inv * w[c];
}

// ---- RoPE ----

__global__ void rope_kernel(float* __restrict__ x, int n, int n_heads, const int* __restrict__ positions,
                            const float* __restrict__ cos_t, const float* __restrict__ sin_t, int half,
                            bool interleaved) {
  const int64_t total = static_cast<int64_t>(n) * n_heads * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int j = static_cast<int>(idx % half);
    const int64_t head = idx / half;  // row * n_heads + h
    const int row = static_cast<int>(head / n_heads);
    const int64_t pos = positions[row];
    float* v = x + head * 2 * half;
    // The pair (a, b) rotated by theta_j; the style only chooses which two elements pair up.
    const int ia = interleaved ? 2 * j : j, ib = interleaved ? 2 * j + 1 : j + half;
    const float c = cos_t[pos * half + j], s = sin_t[pos * half + j];
    const float x0 = v[ia], x1 = v[ib];
    v[ia] = x0 * c - x1 * s;
    v[ib] = x0 * s + x1 * c;
  }
}

// ---- element-wise ----

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, size_t count) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

__global__ void silu_mul_kernel(const float* __restrict__ g, const float* __restrict__ u, size_t count,
                                float* __restrict__ out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = dev::silu_mul(g[i], u[i]);
}

__global__ void broadcast_rows_kernel(const float* __restrict__ bias, int64_t cols, size_t count,
                                      float* __restrict__ y) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    y[i] = bias[i % cols];
}

__global__ void to_half_kernel(const float* __restrict__ x, size_t count, bool bf16, void* __restrict__ out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    if (bf16) {
      static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(x[i]);
    } else {
      static_cast<half*>(out)[i] = __float2half_rn(x[i]);
    }
  }
}

__global__ void embedding_kernel(DeviceLayout l, const uint8_t* __restrict__ table, const int* __restrict__ tokens,
                                 float* __restrict__ out) {
  const int64_t r = tokens[blockIdx.x];
  float* o = out + static_cast<int64_t>(blockIdx.x) * l.cols;
  for (int64_t c = threadIdx.x; c < l.cols; c += blockDim.x) o[c] = dev::weight_element(l, table, r, c);
}

// ---- argmax ----

// (value, index) candidates: NaN never wins, the larger value wins, the smaller index wins ties; index -1 = none.
struct Best {
  float v;
  int i;
};
__device__ __forceinline__ Best better(Best a, Best b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  if (a.v > b.v || (a.v == b.v && a.i < b.i)) return a;
  return b;
}

constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxMaxBlocks = 256;

__device__ Best block_best(Best b, Best* shared) {
  shared[threadIdx.x] = b;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = better(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  return shared[0];
}

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_partial_kernel(const float* __restrict__ x, int n, Best* __restrict__ partial) {
  __shared__ Best sh[kArgmaxThreads];
  Best b{0.0f, -1};
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float v = x[i];
    if (!isnan(v)) b = better(b, Best{v, i});
  }
  b = block_best(b, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = b;
}

__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_final_kernel(const Best* __restrict__ partial, int blocks, int* __restrict__ result) {
  __shared__ Best sh[kArgmaxThreads];
  Best b{0.0f, -1};
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) b = better(b, partial[i]);
  b = block_best(b, sh);
  if (threadIdx.x == 0) *result = b.i < 0 ? 0 : b.i;
}

int argmax_blocks(int n) {
  return std::clamp((n + kArgmaxThreads * 4 - 1) / (kArgmaxThreads * 4), 1, kArgmaxMaxBlocks);
}

}  // namespace

void launch_rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y, cudaStream_t stream) {
  if (n <= 0 || dim <= 0) return;
  rmsnorm_kernel<<<n, kRowThreads, 0, stream>>>(x, w, dim, eps, y);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_add_rmsnorm(float* x, const float* delta, const float* w, int n, int dim, float eps, float* y,
                        cudaStream_t stream) {
  if (n <= 0 || dim <= 0) return;
  add_rmsnorm_kernel<<<n, kRowThreads, 0, stream>>>(x, delta, w, dim, eps, y);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_rope(float* x, int n, int n_heads, const int* positions, const float* cos, const float* sin, int half_dim,
                 bool interleaved, cudaStream_t stream) {
  const size_t total = static_cast<size_t>(n) * n_heads * half_dim;
  if (total == 0) return;
  rope_kernel<<<grid_for(total, 256), 256, 0, stream>>>(x, n, n_heads, positions, cos, sin, half_dim, interleaved);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_add(float* y, const float* x, size_t count, cudaStream_t stream) {
  if (count == 0) return;
  add_kernel<<<grid_for(count, 256), 256, 0, stream>>>(y, x, count);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_silu_mul(const float* g, const float* u, size_t count, float* out, cudaStream_t stream) {
  if (count == 0) return;
  silu_mul_kernel<<<grid_for(count, 256), 256, 0, stream>>>(g, u, count, out);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_broadcast_rows(const float* bias, int n, int64_t cols, float* y, cudaStream_t stream) {
  const size_t count = static_cast<size_t>(n) * static_cast<size_t>(cols);
  if (count == 0) return;
  broadcast_rows_kernel<<<grid_for(count, 256), 256, 0, stream>>>(bias, cols, count, y);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_embedding(const DeviceLayout& l, const void* table, const int* tokens, int n, float* out,
                      cudaStream_t stream) {
  if (n <= 0 || l.cols == 0) return;
  embedding_kernel<<<n, 256, 0, stream>>>(l, static_cast<const uint8_t*>(table), tokens, out);
  TESSERA_CUDA_CHECK_LAUNCH();
}

void launch_to_half(const float* x, size_t count, bool bf16, void* out, cudaStream_t stream) {
  if (count == 0) return;
  to_half_kernel<<<grid_for(count, 256), 256, 0, stream>>>(x, count, bf16, out);
  TESSERA_CUDA_CHECK_LAUNCH();
}

size_t argmax_scratch_bytes(int n) {
  return static_cast<size_t>(argmax_blocks(n)) * sizeof(Best);
}

void launch_argmax(const float* x, int n, void* scratch, int* result, cudaStream_t stream) {
  const int blocks = argmax_blocks(n);
  auto* partial = static_cast<Best*>(scratch);
  argmax_partial_kernel<<<blocks, kArgmaxThreads, 0, stream>>>(x, n, partial);
  TESSERA_CUDA_CHECK_LAUNCH();
  argmax_final_kernel<<<1, kArgmaxThreads, 0, stream>>>(partial, blocks, result);
  TESSERA_CUDA_CHECK_LAUNCH();
}

}  // namespace tessera::cuda
