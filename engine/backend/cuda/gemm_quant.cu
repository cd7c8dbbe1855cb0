// Prefill matmuls over Q8 and NF4 weights (n > kGemvQuantMaxRows): a tiled GEMM on tensor cores. Each 128-thread block
// computes a 64 (activation rows) x 64 (weight rows) tile of y; per 32-wide k step it converts the activation
// tile to fp16 and dequantizes the weight tile (16-byte code loads) to fp16 in shared memory, and four warps
// multiply them with WMMA m16n16k16 into fp32 accumulators (each warp a 32 x 32 sub-tile). The epilogue adds the
// bias or applies silu(gate) * up (the fused MLP keeps a second set of accumulators for `up`).
//
// Precision: operands are fp16 (weights dequantized to fp32 then rounded, activations rounded; |x| beyond 65504
// would overflow), products accumulate in fp32. Expect a relative error near 1e-3 against the fp32 reference.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

using namespace nvcuda;

constexpr int kBM = 64;        // activation rows per block
constexpr int kBN = 64;        // weight rows (outputs) per block
constexpr int kBK = 32;        // k per step
constexpr int kLd = kBK + 8;   // fp16 row pitch of the operand tiles (multiple of 8; staggers banks)
constexpr int kLdC = kBN + 4;  // fp32 row pitch of the output staging tile
constexpr int kThreads = 128;

constexpr size_t kOperandBytes = 3 * kBM * kLd * sizeof(half);  // A, W, Up tiles
constexpr size_t kStageBytes = 2 * kBM * kLdC * sizeof(float);  // C of W and of Up
constexpr size_t kSmemBytes = kOperandBytes > kStageBytes ? kOperandBytes : kStageBytes;
static_assert(kSmemBytes <= 48 * 1024);

template <DType T, bool SILU>
__global__ void __launch_bounds__(kThreads)
    gemm_quant_kernel(const float* __restrict__ x, int n, DeviceLayout l, const uint8_t* __restrict__ w,
                      const uint8_t* __restrict__ up, const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ __align__(128) unsigned char smem[kSmemBytes];
  half* as = reinterpret_cast<half*>(smem);
  half* ws = as + kBM * kLd;
  half* us = ws + kBN * kLd;
  // The output staging tiles reuse the operand memory once the k loop is done.
  float* cw = reinterpret_cast<float*>(smem);
  float* cu = cw + kBM * kLdC;

  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;  // activation rows
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBN;  // weight rows
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int64_t K = l.cols;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2], accu[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::fill_fragment(acc[i][j], 0.0f);
      if constexpr (SILU) wmma::fill_fragment(accu[i][j], 0.0f);
    }
  }

  // Each thread fills 16 consecutive columns of one row of every tile.
  const int trow = tid >> 1, tcol = (tid & 1) * 16;
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    {
      const int64_t i = m0 + trow, c = k0 + tcol;
      half* dst = as + trow * kLd + tcol;
#pragma unroll
      for (int j = 0; j < 16; ++j) dst[j] = __float2half_rn(i < n && c + j < K ? __ldg(x + i * K + c + j) : 0.0f);
    }
    {
      const int64_t r = r0 + trow, c = k0 + tcol;
      float v[16];
      half* dst = ws + trow * kLd + tcol;
      if (r < l.rows && c < K) {
        dev::decode16<T>(l, w, r, c, v);
      } else {
#pragma unroll
        for (int j = 0; j < 16; ++j) v[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < 16; ++j) dst[j] = __float2half_rn(v[j]);
      if constexpr (SILU) {
        if (r < l.rows && c < K) dev::decode16<T>(l, up, r, c, v);
        half* udst = us + trow * kLd + tcol;
#pragma unroll
        for (int j = 0; j < 16; ++j) udst[j] = __float2half_rn(v[j]);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], as + (wm + 16 * i) * kLd + kk, kLd);
        // W tile stored [out][k] is B = W^T in column-major order.
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], ws + (wn + 16 * j) * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
      if constexpr (SILU) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], us + (wn + 16 * j) * kLd + kk, kLd);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(accu[i][j], a[i], b[j], accu[i][j]);
        }
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(cw + (wm + 16 * i) * kLdC + wn + 16 * j, acc[i][j], kLdC, wmma::mem_row_major);
      if constexpr (SILU) {
        wmma::store_matrix_sync(cu + (wm + 16 * i) * kLdC + wn + 16 * j, accu[i][j], kLdC, wmma::mem_row_major);
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < kBM * kBN; idx += kThreads) {
    const int row = idx / kBN, col = idx % kBN;
    const int64_t i = m0 + row, r = r0 + col;
    if (i >= n || r >= l.rows) continue;
    float v = cw[row * kLdC + col];
    if constexpr (SILU) {
      v = dev::silu_mul(v, cu[row * kLdC + col]);
    } else if (bias != nullptr) {
      v += bias[r];
    }
    y[i * l.rows + r] = v;
  }
}

template <DType T>
void launch_typed(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                  float* y, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((l.rows + kBN - 1) / kBN), static_cast<unsigned>((n + kBM - 1) / kBM));
  const auto* wb = static_cast<const uint8_t*>(w);
  if (up != nullptr) {
    gemm_quant_kernel<T, true><<<grid, kThreads, 0, stream>>>(x, n, l, wb, static_cast<const uint8_t*>(up), nullptr, y);
  } else {
    gemm_quant_kernel<T, false><<<grid, kThreads, 0, stream>>>(x, n, l, wb, nullptr, bias, y);
  }
  TESSERA_CUDA_CHECK_LAUNCH();
}

}  // namespace

void launch_gemm_quant(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                       float* y, cudaStream_t stream) {
  TESSERA_CHECK(n >= 1 && n <= 65535 * kBM);
  TESSERA_CHECK_MSG(up == nullptr || bias == nullptr, "the fused MLP takes no bias");
  if (l.rows == 0) return;
  switch (l.dtype) {
    case DType::Q8:
      return launch_typed<DType::Q8>(x, n, l, w, up, bias, y, stream);
    case DType::NF4:
      return launch_typed<DType::NF4>(x, n, l, w, up, bias, y, stream);
    default:
      TESSERA_CHECK_MSG(false, "gemm_quant: Q8 or NF4 only (plain weights go through cuBLAS, Q4/Q4A launch_mma_q4)");
  }
}

}  // namespace tessera::cuda
