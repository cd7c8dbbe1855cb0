// Small device helpers shared by the kernels of this folder: warp reductions, weight-code decoding.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/backend/cuda/device_layout.h"

namespace tessera::cuda::dev {

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the result.
// `shared` holds 32 floats. Ends with the block synchronised, so `shared` can be reused right after.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < warps ? shared[lane] : 0.0f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}

__device__ __forceinline__ float silu_mul(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}

__device__ __forceinline__ float half_bits_to_float(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t h) {
  return __uint_as_float(static_cast<uint32_t>(h) << 16);
}

// The 16 NF4 levels (same values as quant::kNf4Levels; the CPU header is not device code).
static __constant__ float kNf4[16] = {-1.0f,
                                      -0.6961928009986877f,
                                      -0.5250730514526367f,
                                      -0.39491748809814453f,
                                      -0.28444138169288635f,
                                      -0.18477343022823334f,
                                      -0.09105003625154495f,
                                      0.0f,
                                      0.07958029955625534f,
                                      0.16093020141124725f,
                                      0.24611230194568634f,
                                      0.33791524171829224f,
                                      0.44070982933044434f,
                                      0.5626170039176941f,
                                      0.7229568362236023f,
                                      1.0f};

// 16 bytes of weight codes, bypassing L1: codes are read once, and streaming them through L1 would evict the
// activations, which every warp reads again and must keep finding there.
__device__ __forceinline__ uint4 load_codes16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// Element (r, c) of a device-layout matrix (slow path: embedding rows, not GEMMs).
__device__ __forceinline__ float weight_element(const DeviceLayout& l, const uint8_t* base, int64_t r, int64_t c) {
  const uint8_t* row = base + r * l.code_row_bytes();
  switch (l.dtype) {
    case DType::F32:
      return reinterpret_cast<const float*>(row)[c];
    case DType::F16:
      return half_bits_to_float(reinterpret_cast<const uint16_t*>(row)[c]);
    case DType::BF16:
      return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(row)[c]);
    case DType::Q8:
      return reinterpret_cast<const float*>(base + l.scales_offset())[r] *
             static_cast<float>(static_cast<int8_t>(row[code_byte_position(l.code_row_bytes(), c)]));
    default: {
      const int q = code4_at(l, base, r, c);
      const int64_t gi = c / l.group;
      const float d = half_bits_to_float(*reinterpret_cast<const uint16_t*>(base + l.scale_offset(r, gi)));
      if (l.dtype == DType::Q4) return d * static_cast<float>(q - 8);
      if (l.dtype == DType::NF4) return d * kNf4[q];
      return d * static_cast<float>(q) +
             half_bits_to_float(*reinterpret_cast<const uint16_t*>(base + l.min_offset(r, gi)));
    }
  }
}

// The 16 code bytes of a row at logical offset b0 (a multiple of 16): four words, wherever code_word_position put
// them.
__device__ __forceinline__ uint4 load_code16(const uint8_t* row, int64_t row_bytes, int64_t b0) {
  const auto* words = reinterpret_cast<const uint32_t*>(row);
  const int64_t n = row_bytes / 4, w = b0 / 4;
  return make_uint4(words[code_word_position(n, w)], words[code_word_position(n, w + 1)],
                    words[code_word_position(n, w + 2)], words[code_word_position(n, w + 3)]);
}

// Sixteen consecutive weights of row r starting at column c0 (a multiple of 16) of a Q8 or NF4 matrix, decoded
// from 16 logical code bytes: Q8 codes are 16 consecutive bytes; NF4 codes of 16 consecutive columns are
// the low or the high nibbles of 16 consecutive bytes (device_layout.h). Columns >= cols read as 0.
template <DType T>
__device__ __forceinline__ void decode16(const DeviceLayout& l, const uint8_t* base, int64_t r, int64_t c0, float* w) {
  const uint8_t* row = base + r * l.code_row_bytes();
  if constexpr (T == DType::Q8) {
    const uint4 raw = load_code16(row, l.code_row_bytes(), c0);
    const float s = reinterpret_cast<const float*>(base + l.scales_offset())[r];
    const auto* b = reinterpret_cast<const int8_t*>(&raw);
#pragma unroll
    for (int j = 0; j < 16; ++j) w[j] = s * static_cast<float>(b[j]);
  } else {
    int64_t byte;
    int high;
    nibble_position(l.group, c0, &byte, &high);
    const uint4 raw = load_code16(row, l.code_row_bytes(), byte);
    const auto* b = reinterpret_cast<const uint8_t*>(&raw);
    const float d = half_bits_to_float(*reinterpret_cast<const uint16_t*>(base + l.scale_offset(r, c0 / l.group)));
    const int shift = high ? 4 : 0;
    static_assert(T == DType::NF4, "decode16: Q8 or NF4 (Q4/Q4A are tiled)");
#pragma unroll
    for (int j = 0; j < 16; ++j) w[j] = d * kNf4[(b[j] >> shift) & 0x0f];
  }
  if (c0 + 16 > l.cols) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      if (c0 + j >= l.cols) w[j] = 0.0f;
    }
  }
}

}  // namespace tessera::cuda::dev
