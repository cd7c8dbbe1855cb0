// The layout of weight matrices in device memory, shared by the host (repacking at upload) and the kernels.
//
// Plain types (F32/F16/BF16) keep their row-major layout. Quantized types are stored planar so that every row
// of codes starts on a 16-byte boundary and a thread reads 16 bytes of codes with one load (the canonical host
// blocks interleave a 2- or 4-byte scale with the codes, which breaks that alignment):
//   Q8:          int8 q[rows][kpad]           (kpad = cols rounded up to 16, zero padded)
//                float scale[rows]
//   Q4/Q4A/NF4:  uint8 qs[rows][kpad / 2]     (kpad = cols rounded up to the group; inside each group the
//                                              canonical nibble order: value j < G/2 in the low nibble of byte j,
//                                              value j + G/2 in the high nibble)
//                fp16 d[rows][groups]
//                fp16 m[rows][groups]         (Q4A only)
// Inside every row of codes (Q8 and 4-bit), each full run of 512 bytes (128 four-byte words) is stored
// lane-interleaved: word j of the run sits at position (j % 32) * 4 + j / 32, so a warp reads the run with one
// 16-byte load per lane and lane L gets words L, L + 32, L + 64, L + 96. The GEMV then reads codes with wide loads
// while the activations its lanes need stay contiguous across the warp (lane L's word covers 4 or 8 columns next
// to lane L + 1's). Words after the row's last full run keep their order. code_byte_position maps.
// The 2:4 sparse types are expanded at upload, exactly, into the dense type holding the same values (S24Q8 ->
// Q8 with the row's scale, S24Q4 -> Q4 in groups of 64 with each block's scale), so a device Matrix never has a
// sparse dtype. Matrix::row_bytes() does not describe device views of quantized types; use these functions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"

#ifdef __CUDACC__
#define TESSERA_HD __host__ __device__ __forceinline__
#else
#define TESSERA_HD inline
#endif

namespace tessera::cuda {

struct DeviceLayout {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  int group = 0;  // Q4/Q4A/NF4 only

  TESSERA_HD int64_t kpad() const {
    if (dtype == DType::Q8) return (cols + 15) / 16 * 16;
    if (is_grouped(dtype)) return (cols + group - 1) / group * group;
    return cols;
  }
  TESSERA_HD int64_t groups() const { return is_grouped(dtype) ? kpad() / group : 0; }
  // Bytes of codes (or elements) of one row.
  TESSERA_HD int64_t code_row_bytes() const {
    switch (dtype) {
      case DType::F32:
        return 4 * cols;
      case DType::F16:
      case DType::BF16:
        return 2 * cols;
      case DType::Q8:
        return kpad();
      default:
        return kpad() / 2;
    }
  }
  TESSERA_HD int64_t codes_bytes() const { return rows * code_row_bytes(); }
  // Offset of the scale plane (Q8: float per row; 4-bit: fp16 per group) and of the Q4A minimum plane.
  TESSERA_HD int64_t scales_offset() const { return codes_bytes(); }
  TESSERA_HD int64_t mins_offset() const { return codes_bytes() + rows * groups() * 2; }
  TESSERA_HD int64_t total_bytes() const {
    if (dtype == DType::Q8) return codes_bytes() + rows * 4;
    if (dtype == DType::Q4A) return codes_bytes() + rows * groups() * 4;
    if (is_grouped(dtype)) return codes_bytes() + rows * groups() * 2;
    return codes_bytes();
  }
};

inline constexpr int64_t kTileWords = 128;

// Where word w of a row of `row_words` code words is stored (see above).
TESSERA_HD int64_t code_word_position(int64_t row_words, int64_t w) {
  if (w >= row_words / kTileWords * kTileWords) return w;
  const int64_t j = w % kTileWords;
  return w - j + (j % 32) * 4 + j / 32;
}
TESSERA_HD int64_t code_byte_position(int64_t row_bytes, int64_t b) {
  return code_word_position(row_bytes / 4, b / 4) * 4 + b % 4;
}

// Logical byte offset (within a row of 4-bit codes, before code_byte_position) and nibble (0 low, 1 high) of input
// column c.
TESSERA_HD void nibble_position(int group, int64_t c, int64_t* byte, int* high) {
  const int64_t g = c / group, j = c % group, half = group / 2;
  *byte = g * half + (j < half ? j : j - half);
  *high = j < half ? 0 : 1;
}

}  // namespace tessera::cuda
