// Decode matmuls (n <= kGemvMaxRows activation rows): one warp per weight row streams the row once with 16-byte
// loads, dequantizes in registers and applies it to all n activation rows; fp32 arithmetic throughout, so the
// result matches the reference up to summation order. The fused MLP variant reads the gate and up rows together.
#include <cuda_runtime.h>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

constexpr int kWarps = 8;  // weight rows per block

// 16 consecutive activations of row xr from column c (c a multiple of 16). `vec`: rows are 16-byte aligned
// (cols % 4 == 0 and x aligned), so whole float4s can be read when all 16 are in range.
__device__ __forceinline__ void load_x16(const float* __restrict__ xr, int64_t c, int64_t cols, bool vec, float* v) {
  if (vec && c + 16 <= cols) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(xr + c) + j);
      v[4 * j] = f.x;
      v[4 * j + 1] = f.y;
      v[4 * j + 2] = f.z;
      v[4 * j + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 16; ++j) v[j] = c + j < cols ? __ldg(xr + c + j) : 0.0f;
  }
}

// Decodes the 32 weights of one 16-byte chunk of 4-bit codes: the low nibbles are the 16 columns from *c_lo, the
// high nibbles the 16 columns from *c_hi (device_layout.h).
template <DType T>
__device__ __forceinline__ void decode_chunk4(const DeviceLayout& l, const uint8_t* __restrict__ base, int64_t r,
                                              int64_t chunk, float* wlo, float* whi, int64_t* c_lo, int64_t* c_hi) {
  const int half = l.group / 2;
  const int64_t byte0 = chunk * 16, g = byte0 / half, o = byte0 % half;
  *c_lo = g * l.group + o;
  *c_hi = *c_lo + half;
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(base + r * l.code_row_bytes() + byte0));
  const auto* b = reinterpret_cast<const uint8_t*>(&raw);
  const int64_t gi = r * l.groups() + g;
  const float d = dev::half_bits_to_float(__ldg(reinterpret_cast<const uint16_t*>(base + l.scales_offset()) + gi));
  if constexpr (T == DType::NF4) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      wlo[j] = d * dev::kNf4[b[j] & 0x0f];
      whi[j] = d * dev::kNf4[b[j] >> 4];
    }
  } else {
    const float off =
        T == DType::Q4 ? -8.0f * d
                       : dev::half_bits_to_float(__ldg(reinterpret_cast<const uint16_t*>(base + l.mins_offset()) + gi));
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      wlo[j] = fmaf(d, static_cast<float>(b[j] & 0x0f), off);
      whi[j] = fmaf(d, static_cast<float>(b[j] >> 4), off);
    }
  }
}

template <int NR>
__device__ __forceinline__ void dot16(const float* __restrict__ x, int n, int64_t cols, bool vec, int64_t c,
                                      const float* w, const float* w2, float* acc, float* acc2) {
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    if (i >= n) break;
    float xv[16];
    load_x16(x + i * cols, c, cols, vec, xv);
#pragma unroll
    for (int j = 0; j < 16; ++j) acc[i] = fmaf(w[j], xv[j], acc[i]);
    if (w2 != nullptr) {
#pragma unroll
      for (int j = 0; j < 16; ++j) acc2[i] = fmaf(w2[j], xv[j], acc2[i]);
    }
  }
}

// One weight row (and its `up` twin when SILU) against n <= NR activation rows: per-lane partial sums.
template <DType T, int NR, bool SILU>
__device__ __forceinline__ void row_dots(const float* __restrict__ x, int n, const DeviceLayout& l,
                                         const uint8_t* __restrict__ w, const uint8_t* __restrict__ up, int64_t r,
                                         bool vec, float* acc, float* acc2) {
  const int lane = threadIdx.x & 31;
  const int64_t cols = l.cols;
  if constexpr (T == DType::Q4 || T == DType::Q4A || T == DType::NF4) {
    const int64_t chunks = l.code_row_bytes() / 16;
    for (int64_t ch = lane; ch < chunks; ch += 32) {
      float wlo[16], whi[16], ulo[16], uhi[16];
      int64_t c_lo, c_hi;
      decode_chunk4<T>(l, w, r, ch, wlo, whi, &c_lo, &c_hi);
      if constexpr (SILU) decode_chunk4<T>(l, up, r, ch, ulo, uhi, &c_lo, &c_hi);
      dot16<NR>(x, n, cols, vec, c_lo, wlo, SILU ? ulo : nullptr, acc, acc2);
      dot16<NR>(x, n, cols, vec, c_hi, whi, SILU ? uhi : nullptr, acc, acc2);
    }
  } else if constexpr (T == DType::Q8) {
    const int64_t units = l.kpad() / 16;
    for (int64_t u = lane; u < units; u += 32) {
      float wv[16], uv[16];
      dev::decode16<T>(l, w, r, u * 16, wv);
      if constexpr (SILU) dev::decode16<T>(l, up, r, u * 16, uv);
      dot16<NR>(x, n, cols, vec, u * 16, wv, SILU ? uv : nullptr, acc, acc2);
    }
  } else {
    // Plain types: element k of the row; 16-byte weight loads when the row is aligned (checked by the caller).
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
    case DType::Q8:
      return launch_typed<DType::Q8, SILU>(x, n, l, w, up, bias, y, vec, stream);
    case DType::Q4:
      return launch_typed<DType::Q4, SILU>(x, n, l, w, up, bias, y, vec, stream);
    case DType::Q4A:
      return launch_typed<DType::Q4A, SILU>(x, n, l, w, up, bias, y, vec, stream);
    case DType::NF4:
      return launch_typed<DType::NF4, SILU>(x, n, l, w, up, bias, y, vec, stream);
    default:
      TESSERA_CHECK_MSG(false, "gemv: a device matrix never has a sparse dtype");
  }
}

}  // namespace

void launch_gemv(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                 float* y, cudaStream_t stream) {
  TESSERA_CHECK(n >= 1 && n <= kGemvMaxRows);
  if (l.rows == 0) return;
  // Vector loads need every activation row (and plain weight row) 16-byte aligned.
  const bool vec = l.cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0 &&
                   (up == nullptr || reinterpret_cast<uintptr_t>(up) % 16 == 0);
  if (up != nullptr) {
    TESSERA_CHECK(bias == nullptr);
    launch_silu<true>(x, n, l, w, up, nullptr, y, vec, stream);
  } else {
    launch_silu<false>(x, n, l, w, nullptr, bias, y, vec, stream);
  }
}

}  // namespace tessera::cuda
