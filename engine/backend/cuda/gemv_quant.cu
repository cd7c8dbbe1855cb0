// Decode matmuls over Q8 and NF4 weights (n <= kGemvQuantMaxRows activation rows; Q4/Q4A have their own tiled
// layout and tensor-core kernel, mma_q4.cu).
//
// Memory-bound, so the point is to stream the codes at full bandwidth without the activation loads getting in
// the way. Codes are lane-interleaved in runs of 512 bytes (device_layout.h): one 16-byte load per lane covers a
// run, and lane L holds words L, L + 32, L + 64, L + 96. Each word's activations are then 4 consecutive columns
// (Q8) or 4 + 4 (4-bit: inside a group byte j holds columns j and j + G/2), next to those of lane L + 1, so the
// warp's float4 activation loads are contiguous as well. Each lane issues kTilesInFlight code loads (with their
// scales) before computing: Hopper needs tens of kilobytes in flight per SM to reach its bandwidth. A warp owns
// RPW weight rows (and their `up` twins in the fused MLP), so each activation load serves RPW rows, and each word
// is decoded once for all n activation rows.
// Q8 codes become floats with an integer trick rather than I2F (a quarter-rate instruction): placing the byte in
// the mantissa of 2^23 gives the float 2^23 + q exactly, and subtracting 2^23 leaves q exactly; NF4 codes go
// through a byte table in shared memory. Every product and sum is fp32: the result differs from the reference only in
// rounding order.
#include <cuda_runtime.h>

#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/device_common.cuh"
#include "engine/backend/cuda/kernels.h"

namespace tessera::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kTilesInFlight = 4;  // 16-byte code loads a lane issues before computing, over all its streams
constexpr float kTwo23 = 8388608.0f;

using dev::load_codes16;

// Code loads bypass L1 (see load_codes16).
__device__ __forceinline__ uint32_t load_codes4(const void* p) {
  uint32_t v;
  asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

// Float value of signed byte k of word (exact): flipping the sign bits maps -128..127 to 0..255.
__device__ __forceinline__ float signed_byte(uint32_t word_flipped, int k) {
  return __uint_as_float(__byte_perm(word_flipped, 0x4b000000u, 0x7540u | static_cast<unsigned>(k))) -
         (kTwo23 + 128.0f);
}

// One weight stream of a warp: a row of W (or of up).
struct Stream {
  const uint32_t* words;   // the row's codes
  const uint16_t* scales;  // NF4: the row's fp16 group scales
  float row_scale;         // Q8
};

template <DType T>
__device__ __forceinline__ Stream stream_of(const DeviceLayout& l, const uint8_t* base, int64_t r) {
  Stream s{};
  s.words = reinterpret_cast<const uint32_t*>(base + r * l.code_row_bytes());
  if constexpr (T == DType::Q8) {
    s.row_scale = __ldg(reinterpret_cast<const float*>(base + l.scales_offset()) + r);
  } else {
    s.scales = reinterpret_cast<const uint16_t*>(base + l.scale_offset(r, 0));
  }
  return s;
}

// What a lane holds of one word of one stream.
struct Word {
  uint32_t raw;
  float d;  // NF4: the group's scale
};

// Scale of logical word wi of a stream (NF4).
template <DType T>
__device__ __forceinline__ void word_scales(const Stream& s, int64_t wi, int gshift, Word* w) {
  if constexpr (T != DType::Q8) {
    const int64_t g = wi >> gshift;
    w->d = dev::half_bits_to_float(__ldg(s.scales + g));
  }
}

template <DType T>
__device__ __forceinline__ Word load_word(const Stream& s, int64_t wi, int gshift) {
  Word w;
  w.raw = load_codes4(s.words + wi);
  word_scales<T>(s, wi, gshift, &w);
  return w;
}

// The word's weights: lo[k] at column c_lo + k, hi[k] at c_hi + k (Q8: lo only, the word's 4 columns): the codes
// or levels without their scale (word_fma multiplies each word's dot product by it: one FMA per word instead of
// one per weight).
template <DType T>
__device__ __forceinline__ void decode_word(const Word& w, const float2* __restrict__ lut, float* lo, float* hi) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if constexpr (T == DType::Q8) {
      lo[k] = signed_byte(w.raw ^ 0x80808080u, k);
    } else {
      const float2 v = lut[(w.raw >> (8 * k)) & 0xffu];
      lo[k] = v.x;
      hi[k] = v.y;
    }
  }
}

// 4 activations of row xr from column c (a multiple of 4); columns >= cols read as 0.
__device__ __forceinline__ float4 load_x4(const float* __restrict__ xr, int64_t c, int64_t cols, bool vec) {
  if (vec && c + 4 <= cols) return __ldg(reinterpret_cast<const float4*>(xr + c));
  float4 v;
  v.x = c < cols ? __ldg(xr + c) : 0.0f;
  v.y = c + 1 < cols ? __ldg(xr + c + 1) : 0.0f;
  v.z = c + 2 < cols ? __ldg(xr + c + 2) : 0.0f;
  v.w = c + 3 < cols ? __ldg(xr + c + 3) : 0.0f;
  return v;
}

__device__ __forceinline__ float dot4(const float* w, float4 x, float acc) {
  return fmaf(w[3], x.w, fmaf(w[2], x.z, fmaf(w[1], x.y, fmaf(w[0], x.x, acc))));
}

// Logical word wi of every stream (already loaded) against the n activation rows: decode once, then FMAs.
template <DType T, int NR, int S>
__device__ __forceinline__ void word_fma(const Word (&wd)[S], int64_t wi, int gshift, const float* __restrict__ x,
                                         int n, const DeviceLayout& l, bool vec, const float2* __restrict__ lut,
                                         float (&acc)[NR][S]) {
  // Columns of the word: Q8, its 4 bytes; 4-bit, 4 low nibbles from c_lo and 4 high ones from c_hi.
  int64_t c_lo = 4 * wi, c_hi = 0;
  if constexpr (T != DType::Q8) {
    // Shifts, not divisions: a 64-bit division per word would cost more than everything else here.
    const int64_t g = wi >> gshift;
    c_lo = g * l.group + 4 * (wi & ((int64_t{1} << gshift) - 1));
    c_hi = c_lo + l.group / 2;
  }
  float lo[S][4], hi[S][4];
#pragma unroll
  for (int s = 0; s < S; ++s) decode_word<T>(wd[s], lut, lo[s], hi[s]);
#pragma unroll
  for (int i = 0; i < NR; ++i) {
    if (i >= n) break;
    const float* xr = x + i * l.cols;
    const float4 xl = load_x4(xr, c_lo, l.cols, vec);
    if constexpr (T == DType::Q8) {
#pragma unroll
      for (int s = 0; s < S; ++s) acc[i][s] = dot4(lo[s], xl, acc[i][s]);
    } else {
      const float4 xh = load_x4(xr, c_hi, l.cols, vec);
#pragma unroll
      for (int s = 0; s < S; ++s) acc[i][s] = fmaf(wd[s].d, dot4(hi[s], xh, dot4(lo[s], xl, 0.0f)), acc[i][s]);
    }
  }
}

// Warp w of the block owns rows r0 .. r0 + RPW - 1; streams 0..RPW-1 are W's rows, RPW..2*RPW-1 up's (SILU).
template <DType T, int NR, int RPW, bool SILU>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_quant_kernel(const float* __restrict__ x, int n, DeviceLayout l, const uint8_t* __restrict__ w,
                      const uint8_t* __restrict__ up, const float* __restrict__ bias, float* __restrict__ y, bool vec) {
  constexpr int S = SILU ? 2 * RPW : RPW;
  constexpr int TU = S >= kTilesInFlight ? 1 : kTilesInFlight / S;  // 512-byte runs per stream per step
  __shared__ float2 lut[T == DType::NF4 ? 256 : 1];
  if constexpr (T == DType::NF4) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) lut[b] = make_float2(dev::kNf4[b & 0x0f], dev::kNf4[b >> 4]);
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * RPW;
  if (r0 >= l.rows) return;
  Stream st[S];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const int64_t r = min(r0 + s % RPW, l.rows - 1);  // rows past the end repeat the last one, never stored
    st[s] = stream_of<T>(l, s < RPW ? w : up, r);
  }
  // log2 of the code words per group (G/2 bytes): a group's words are wi >> gshift (4-bit types only).
  const int gshift = T == DType::Q8 ? 0 : __ffs(l.group / 8) - 1;
  const int64_t words = l.code_row_bytes() / 4, tiles = words / kTileWords;
  float acc[NR][S];
#pragma unroll
  for (int i = 0; i < NR; ++i)
#pragma unroll
    for (int s = 0; s < S; ++s) acc[i][s] = 0.0f;

  // Full 512-byte runs: one 16-byte load per lane holds logical words lane + 32u, u < 4 (device_layout.h).
  for (int64_t t0 = 0; t0 < tiles; t0 += TU) {
    uint4 raw[TU][S];
    Word wd[TU][4][S];
#pragma unroll
    for (int tu = 0; tu < TU; ++tu) {
      const int64_t t = t0 + tu;
#pragma unroll
      for (int s = 0; s < S; ++s) {
        if (t < tiles) {
          raw[tu][s] = load_codes16(reinterpret_cast<const uint4*>(st[s].words + t * kTileWords) + lane);
#pragma unroll
          for (int u = 0; u < 4; ++u) word_scales<T>(st[s], t * kTileWords + 32 * u + lane, gshift, &wd[tu][u][s]);
        }
      }
    }
#pragma unroll
    for (int tu = 0; tu < TU; ++tu) {
      const int64_t t = t0 + tu;
      if (t >= tiles) break;
#pragma unroll
      for (int s = 0; s < S; ++s) {
        wd[tu][0][s].raw = raw[tu][s].x;
        wd[tu][1][s].raw = raw[tu][s].y;
        wd[tu][2][s].raw = raw[tu][s].z;
        wd[tu][3][s].raw = raw[tu][s].w;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
        word_fma<T, NR, S>(wd[tu][u], t * kTileWords + 32 * u + lane, gshift, x, n, l, vec, lut, acc);
    }
  }
  // The words after the last full run, in order: one word per lane.
  for (int64_t wi = tiles * kTileWords + lane; wi < words; wi += 32) {
    Word wd[S];
#pragma unroll
    for (int s = 0; s < S; ++s) wd[s] = load_word<T>(st[s], wi, gshift);
    word_fma<T, NR, S>(wd, wi, gshift, x, n, l, vec, lut, acc);
  }

#pragma unroll
  for (int i = 0; i < NR; ++i) {
    if (i >= n) break;
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      float g = dev::warp_sum(acc[i][rr]);
      float u = SILU ? dev::warp_sum(acc[i][RPW + rr]) : 0.0f;
      if constexpr (T == DType::Q8) {
        g *= st[rr].row_scale;
        if constexpr (SILU) u *= st[RPW + rr].row_scale;
      }
      const int64_t r = r0 + rr;
      if (lane == 0 && r < l.rows) y[i * l.rows + r] = SILU ? dev::silu_mul(g, u) : g + (bias ? bias[r] : 0.0f);
    }
  }
}

template <DType T, int RPW, bool SILU>
void launch_rpw(const float* x, int n, const DeviceLayout& l, const uint8_t* w, const uint8_t* up, const float* bias,
                float* y, bool vec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((l.rows + kWarps * RPW - 1) / (kWarps * RPW)));
  if (n <= 1) {
    gemv_quant_kernel<T, 1, RPW, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, up, bias, y, vec);
  } else if (n <= 2) {
    gemv_quant_kernel<T, 2, RPW, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, up, bias, y, vec);
  } else if (n <= 4) {
    gemv_quant_kernel<T, 4, RPW, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, up, bias, y, vec);
  } else if (n <= 8) {
    gemv_quant_kernel<T, 8, RPW, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, up, bias, y, vec);
  } else {
    gemv_quant_kernel<T, 16, RPW, SILU><<<grid, kWarps * 32, 0, stream>>>(x, n, l, w, up, bias, y, vec);
  }
  TESSERA_CUDA_CHECK_LAUNCH();
}

int g_rows_per_warp = 0;  // 0: chosen per call (gemv_quant_rows_per_warp)

template <DType T, bool SILU>
void launch_typed(const float* x, int n, const DeviceLayout& l, const uint8_t* w, const uint8_t* up, const float* bias,
                  float* y, bool vec, cudaStream_t stream) {
  int rpw = g_rows_per_warp;
  if (rpw == 0) {
    // Share each activation load over more rows while the GPU still gets several warps per SM (8 per SM on the
    // largest ones); the fused MLP already reads two rows per activation load.
    const int64_t enough = 132 * 8;
    rpw = SILU                         ? ((l.rows + 1) / 2 >= enough ? 2 : 1)
          : (l.rows + 3) / 4 >= enough ? 4
          : (l.rows + 1) / 2 >= enough ? 2
                                       : 1;
  }
  if (rpw >= 4) return launch_rpw<T, 4, SILU>(x, n, l, w, up, bias, y, vec, stream);
  if (rpw == 2) return launch_rpw<T, 2, SILU>(x, n, l, w, up, bias, y, vec, stream);
  return launch_rpw<T, 1, SILU>(x, n, l, w, up, bias, y, vec, stream);
}

template <bool SILU>
void launch_silu(const float* x, int n, const DeviceLayout& l, const uint8_t* w, const uint8_t* up, const float* bias,
                 float* y, bool vec, cudaStream_t stream) {
  switch (l.dtype) {
    case DType::Q8:
      return launch_typed<DType::Q8, SILU>(x, n, l, w, up, bias, y, vec, stream);
    case DType::NF4:
      return launch_typed<DType::NF4, SILU>(x, n, l, w, up, bias, y, vec, stream);
    default:
      TESSERA_CHECK_MSG(false, "gemv_quant: Q8 or NF4 only (Q4/Q4A go through launch_mma_q4)");
  }
}

}  // namespace

void set_gemv_quant_rows_per_warp(int rpw) {
  TESSERA_CHECK(rpw == 0 || rpw == 1 || rpw == 2 || rpw == 4);
  g_rows_per_warp = rpw;
}

void launch_gemv_quant(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                       float* y, bool vec, cudaStream_t stream) {
  const auto* wb = static_cast<const uint8_t*>(w);
  const auto* ub = static_cast<const uint8_t*>(up);
  if (up != nullptr) {
    launch_silu<true>(x, n, l, wb, ub, nullptr, y, vec, stream);
  } else {
    launch_silu<false>(x, n, l, wb, nullptr, bias, y, vec, stream);
  }
}

}  // namespace tessera::cuda
