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
// Q4 and Q4A are stored instead in the tiled layout of the tensor-core matmul (mma_q4.cu), whose A operand is a
// 16 x 16 tile of weights: rows are cut into tiles of 16 and columns into blocks of 64 (kblocks, the last one
// padded). For row tile rt, block kb and lane L = 4 g + t, four words follow at word ((rt * kblocks + kb) * 32
// + L) * 4; they hold rows g and g + 8 at the lane's own 16 columns 64 kb + 16 t + [0, 16): word j the four
// columns 16 t + 4 j + [0, 4), nibble i (bits 4i) being row g + 8 (i & 1), column 16 t + 4 j + (i >> 2) +
// 2 ((i >> 1) & 1). An mma sums over its 16 k slots in any order, so k-tile j of a block takes from each lane the
// columns the lane holds: one 16-byte load brings a lane's codes for four k-tiles, its activations are 16
// consecutive floats, its columns lie in one group (groups are >= 32 and aligned), and nibbles (i, i + 4) are
// the two halves of one fragment register.
// tiled_code_position maps. The scales follow as [row_tiles][groups][8][2] fp16: (row g, row g + 8) of the tile,
// the half2 a lane applies to its fragment; Q4A as [row_tiles][groups][8][4]: that scale pair, then the minimum
// pair. Padding (rows past the end, columns past kpad) has code 8 and rows past the end zero scales.
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
  // The tiled 4-bit layout (Q4, Q4A) and its shape.
  TESSERA_HD bool tiled() const { return dtype == DType::Q4 || dtype == DType::Q4A; }
  TESSERA_HD int64_t row_tiles() const { return (rows + 15) / 16; }
  TESSERA_HD int64_t kblocks() const { return (kpad() + 63) / 64; }
  // Bytes of codes (or elements) of one row (row layouts: not Q4/Q4A).
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
  TESSERA_HD int64_t codes_bytes() const { return tiled() ? row_tiles() * kblocks() * 512 : rows * code_row_bytes(); }
  // Offset of the scale plane (Q8: float per row; 4-bit: fp16 per group) and of the Q4A minimum plane (row
  // layouts; tiled Q4A keeps minimums beside the scales).
  TESSERA_HD int64_t scales_offset() const { return codes_bytes(); }
  TESSERA_HD int64_t mins_offset() const { return codes_bytes() + rows * groups() * 2; }
  // Byte offsets of the fp16 scale and (Q4A) minimum of row r, group grp (4-bit types).
  TESSERA_HD int64_t scale_offset(int64_t r, int64_t grp) const {
    if (!tiled()) return scales_offset() + 2 * (r * groups() + grp);
    const int64_t pair = ((r / 16) * groups() + grp) * 8 + r % 8;
    return scales_offset() + (dtype == DType::Q4A ? 8 : 4) * pair + 2 * ((r % 16) / 8);
  }
  TESSERA_HD int64_t min_offset(int64_t r, int64_t grp) const {
    return tiled() ? scale_offset(r, grp) + 4 : mins_offset() + 2 * (r * groups() + grp);
  }
  TESSERA_HD int64_t total_bytes() const {
    if (tiled()) return codes_bytes() + row_tiles() * 16 * groups() * (dtype == DType::Q4A ? 4 : 2);
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

// Word index (into the codes as uint32) and bit shift of the code of row r, column c in the tiled layout.
TESSERA_HD void tiled_code_position(const DeviceLayout& l, int64_t r, int64_t c, int64_t* word, int* shift) {
  const int64_t rr = r % 16, cc = c % 64, e = cc % 4;
  const int64_t lane = 4 * (rr % 8) + cc / 16;
  *word = (((r / 16) * l.kblocks() + c / 64) * 32 + lane) * 4 + (cc % 16) / 4;
  *shift = 4 * static_cast<int>(rr / 8 + 2 * (e / 2) + 4 * (e % 2));
}

// The 4-bit code (0..15) of row r, column c of a Q4/Q4A/NF4 matrix in its device layout (`bytes`: the matrix).
TESSERA_HD int code4_at(const DeviceLayout& l, const uint8_t* bytes, int64_t r, int64_t c) {
  int64_t byte;
  int shift;
  if (l.tiled()) {
    int64_t word;
    tiled_code_position(l, r, c, &word, &shift);
    byte = 4 * word + shift / 8;  // words are little-endian
    shift %= 8;
  } else {
    int high;
    nibble_position(l.group, c, &byte, &high);
    byte = r * l.code_row_bytes() + code_byte_position(l.code_row_bytes(), byte);
    shift = 4 * high;
  }
  return (bytes[byte] >> shift) & 0x0f;
}

}  // namespace tessera::cuda
