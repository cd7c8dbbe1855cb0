// Decode matmuls (n <= kGemvMaxRows activation rows) over plain weights (F32/F16/BF16; quantized ones are in
// gemv_quant.cu): one warp per weight row streams the row once with 16-byte loads, converts in registers and
// applies it to all n activation rows; fp32 arithmetic throughout, so the result matches the reference up to
// summation order. The fused MLP variant reads the gate and up rows together.
#include <cuda_runtime.h>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

constexpr int kWarps = 8;  // weight rows per block

// One plain weight row (and its `up` twin when SILU) against n <= NR activation rows: per-lane partial sums.
template <DType T, int NR, bool SILU>
__device__ __forceinline__ void row_dots(const float* __restrict__ x, int n, const DeviceLayout& l,
                                         const uint8_t* __restrict__ w, const uint8_t* __restrict__ up, int64_t r,
                                         bool vec, float* acc, float* acc2) {
  const int lane = threadIdx.x & 31;
  const int64_t cols = l.cols;
  // Element k of the row; 16-byte weight loads when the row is aligned (checked by the caller).
  using Elem = std::conditional_t<T == DType::F32, float, uint16_t>;
  const auto* wr = reinterpret_cast<const Elem*>(w + r * l.code_row_bytes());
  const auto* ur = SILU ? reinterpret_cast<const Elem*>(up + r * l.code_row_bytes()) : nullptr;
  auto cvt = [](Elem e) -> float {
    if constexpr (T == DType::F32)
      return e;
    else if constexpr (T == DType::F16)
      return dev::half_bits_to_float(e);
    else
      return dev::bf16_bits_to_float(e);
  };
  constexpr int V = 16 / sizeof(Elem);
  if (vec && cols % V == 0) {
    for (int64_t c = static_cast<int64_t>(lane) * V; c < cols; c += 32 * V) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(wr + c));
      const auto* e = reinterpret_cast<const Elem*>(&raw);
      uint4 uraw{};
      if constexpr (SILU) uraw = __ldg(reinterpret_cast<const uint4*>(ur + c));
      const auto* ue = reinterpret_cast<const Elem*>(&uraw);
#pragma unroll
      for (int i = 0; i < NR; ++i) {
        if (i >= n) break;
        const float* xr = x + i * cols + c;
#pragma unroll
        for (int j = 0; j < V; j += 4) {
          const float4 f = __ldg(reinterpret_cast<const float4*>(xr + j));
          const float xv[4] = {f.x, f.y, f.z, f.w};
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            acc[i] = fmaf(cvt(e[j + q]), xv[q], acc[i]);
            if constexpr (SILU) acc2[i] = fmaf(cvt(ue[j + q]), xv[q], acc2[i]);
          }
        }
      }
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) {
      const float wv = cvt(wr[c]);
      const float uv = SILU ? cvt(ur[c]) : 0.0f;
#pragma unroll
      for (int i = 0; i < NR; ++i) {
        if (i >= n) break;
        const float xv = __ldg(x + i * cols + c);
        acc[i] = fmaf(wv, xv, acc[i]);
        if constexpr (SILU) acc2[i] = fmaf(uv, xv, acc2[i]);
      }
    }
  }
}

template <DType T, int NR, bool SILU>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const float* __restrict__ x, int n, DeviceLayout l, const uint8_t* __restrict__ w,
                const uint8_t* __restrict__ up, const float* __restrict__ bias, float* __restrict__ y, bool vec) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (r >= l.rows) return;
  float acc[NR], acc2[NR];
#pragma unroll
  for (int i = 0; i < NR; ++i) acc[i] = acc2[i] = 0.0f;
  row_dots<T, NR, SILU>(x, n, l, w, up, r, vec, acc, acc2);
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    if (i >= n) break;
    const float s = dev::warp_sum(acc[i]);
    const float s2 = SILU ? dev::warp_sum(acc2[i]) : 0.0f;
    if ((threadIdx.x & 31) == 0) {
      y[i * l.rows + r] = SILU ? dev::silu_mul(s, s2) : s + (bias != nullptr ? bias[r] : 0.0f);
    }
  }
}

template <DType T, bool SILU>
void launch_typed(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                  float* y, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((l.rows + kWarps - 1) / kWarps));
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ub = static_cast<const uint8_t*>(up);
  if (n <= 1) {
    gemv_kernel<T, 1, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, wb, ub, bias, y, vec);
  } else if (n <= 2) {
    gemv_kernel<T, 2, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, wb, ub, bias, y, vec);
  } else if (n <= 4) {
    gemv_kernel<T, 4, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, wb, ub, bias, y, vec);
  } else {
    gemv_kernel<T, 8, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, wb, ub, bias, y, vec);
  }
  TESSERA_CUDA_CHECK_LAUNCH();
}

template <bool SILU>
void launch_silu(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                 float* y, bool vec, cudaStream_t stream) {
  switch (l.dtype) {
    case DType::F32:
      return launch_typed<DType::F32, SILU>(x, n, l, w, up, bias, y, vec, stream);
    case DType::F16:
      return launch_typed<DType::F16, SILU>(x, n, l, w, up, bias, y, vec, stream);
    case DType::BF16:
      return launch_typed<DType::BF16, SILU>(x, n, l, w, up, bias, y, vec, stream);
    default:
      TESSERA_CHECK_MSG(false, "gemv: quantized types go through launch_gemv_quant; sparse never reach the device");
  }
}

}  // namespace

void launch_gemv(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                 float* y, cudaStream_t stream) {
  TESSERA_CHECK(n >= 1 && n <= gemv_max_rows(l.dtype));
  TESSERA_CHECK_MSG(!l.tiled(), "gemv: Q4/Q4A weights go through launch_mma_q4");
  if (l.rows == 0) return;
  // Vector loads need every activation row (and plain weight row) 16-byte aligned.
  const bool vec = l.cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                   (up == nullptr || reinterpret_cast<uintptr_t>(up) % 16 == 0);
  if (up != nullptr) TESSERA_CHECK(bias == nullptr);
  if (is_quantized(l.dtype)) return launch_gemv_quant(x, n, l, w, up, bias, y, vec, stream);
  if (up != nullptr) {
    launch_silu<true>(x, n, l, w, up, nullptr, y, vec, stream);
  } else {
    launch_silu<false>(x, n, l, w, nullptr, bias, y, vec, stream);
  }
}

}  // namespace tessera::cuda
