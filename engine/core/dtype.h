// Element types of stored weights and their scalar conversions (portable; SIMD versions live in the kernels).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace tessera {

// Weight storage types. Activations are always fp32.
//   F32/F16/BF16: plain elements.
//   Q8:  int8 per output channel (row), symmetric: a row is one fp32 scale then `cols` int8 values.
//   Q4:  int4 in groups of `group` inputs, symmetric: w = d * (q - 8).
//   Q4A: int4 in groups, asymmetric: w = d * q + m.
//   NF4: 4-bit NormalFloat in groups: w = d * kNf4Levels[q] (d = group absmax).
//   S24Q8: 2:4 sparse int8 (two of every four inputs kept): a row is one fp32 scale, then blocks of 64 inputs,
//          each 32 kept int8 values and their 2-bit positions (quant/sparse_formats.h).
//   S24Q4: 2:4 sparse int4, symmetric: blocks of 64 inputs, each an fp16 scale, 32 kept 4-bit values and their
//          2-bit positions (w = d * (q - 8)).
// The block layouts are defined in quant/blocks.h; the functions that work on them in quant/quant_traits.h.
enum class DType : uint8_t { F32, F16, BF16, Q8, Q4, Q4A, NF4, S24Q8, S24Q4 };
inline constexpr int kNumDTypes = 9;

constexpr bool is_quantized(DType t) {
  return t == DType::Q8 || t == DType::Q4 || t == DType::Q4A || t == DType::NF4 || t == DType::S24Q8 ||
         t == DType::S24Q4;
}
// 2:4 sparse storage (kept values + 2-bit indices, 64 inputs per block; no group parameter).
constexpr bool is_sparse24(DType t) {
  return t == DType::S24Q8 || t == DType::S24Q4;
}
constexpr bool is_grouped(DType t) {
  return t == DType::Q4 || t == DType::Q4A || t == DType::NF4;
}

// Bytes per element of a plain type; 0 for quantized types (use dtype_row_bytes).
constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::Q8:
    case DType::Q4:
    case DType::Q4A:
    case DType::NF4:
    case DType::S24Q8:
    case DType::S24Q4:
      return 0;
  }
  return 0;
}

// Bytes of one stored row of `cols` values. `group` is the quantization group for Q4/Q4A/NF4 (ignored otherwise).
// Quantized rows have ceil(cols / group) blocks; the last one is zero-padded. Q8 rows are padded to 4 bytes so
// every row's fp32 scale is aligned.
constexpr size_t dtype_row_bytes(DType t, int64_t cols, int group) {
  const auto n = static_cast<size_t>(cols);
  const size_t blocks = group > 0 ? (n + static_cast<size_t>(group) - 1) / static_cast<size_t>(group) : 0;
  const size_t half = group > 0 ? static_cast<size_t>(group) / 2 : 0;
  switch (t) {
    case DType::F32:
      return 4 * n;
    case DType::F16:
    case DType::BF16:
      return 2 * n;
    case DType::Q8:
      return 4 + (n + 3) / 4 * 4;
    case DType::Q4:
    case DType::NF4:
      return blocks * (2 + half);
    case DType::Q4A:
      return blocks * (4 + half);
    case DType::S24Q8:  // fp32 scale, then per 64 inputs: 32 int8 values + 8 index bytes
      return 4 + (n + 63) / 64 * 40;
    case DType::S24Q4:  // per 64 inputs: fp16 scale + 16 bytes of nibbles + 8 index bytes
      return (n + 63) / 64 * 26;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::Q8:
      return "int8";
    case DType::Q4:
      return "int4";
    case DType::Q4A:
      return "int4-asym";
    case DType::NF4:
      return "nf4";
    case DType::S24Q8:
      return "int8-2:4";
    case DType::S24Q4:
      return "int4-2:4";
  }
  return "?";
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round-to-nearest-even, NaN kept quiet.
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round-to-nearest-even with overflow to inf and gradual underflow.
inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {                                               // below smallest normal half
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);           // < half of smallest subnormal
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (113 - e)
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// Reads element i of a weight row of a plain (unquantized) type as fp32.
inline float load_as_f32(const void* row, DType t, size_t i) {
  switch (t) {
    case DType::F32:
      return static_cast<const float*>(row)[i];
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(row)[i]);
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(row)[i]);
    default:
      return 0.0f;  // quantized rows are read through quant/quant_traits.h
  }
}

}  // namespace tessera
