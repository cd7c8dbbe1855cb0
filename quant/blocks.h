// Canonical block layouts of the quantized weight types (see DType in engine/core/dtype.h). These plain structs
// are the on-disk layout of `tessera quantize` output too. Kernels may repack them at load into layouts of their
// own; the canonical form stays the reference.
//
// A quantized row of `cols` inputs is ceil(cols / G) blocks; the last block's missing values are zero.
// Inside a block, value j < G/2 sits in the low nibble of qs[j] and value j + G/2 in its high nibble (the layout
// llama.cpp's Q4_0 uses), so the low nibbles of a 16-byte load are 16 consecutive values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::quant {

inline constexpr int kGroupSizes[] = {32, 64, 128};

// Q4, symmetric: w = d * (q - 8), q in [0, 15]; d is fp16.
template <int G>
struct BlockQ4 {
  uint16_t d;
  uint8_t qs[G / 2];
};

// Q4A, asymmetric: w = d * q + m, q in [0, 15]; d and m are fp16 (m is the group minimum).
template <int G>
struct BlockQ4A {
  uint16_t d;
  uint16_t m;
  uint8_t qs[G / 2];
};

// NF4: w = d * kNf4Levels[q]; d (fp16) is the group's absolute maximum.
template <int G>
struct BlockNF4 {
  uint16_t d;
  uint8_t qs[G / 2];
};

static_assert(sizeof(BlockQ4<32>) == 18 && sizeof(BlockQ4<128>) == 66);
static_assert(sizeof(BlockQ4A<32>) == 20 && sizeof(BlockQ4A<64>) == 36);
static_assert(sizeof(BlockNF4<64>) == 34);

// Q8 row (int8 per output channel, symmetric): w = scale * q, q in [-127, 127].
struct Q8RowHeader {
  float scale;
  // followed by int8_t q[cols], padded with zeros to a multiple of 4 bytes
};

// The 16 NF4 levels: quantiles of N(0, 1) normalised to [-1, 1] (QLoRA, Dettmers et al. 2023, Appendix E).
inline constexpr float kNf4Levels[16] = {
    -1.0f,
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
    1.0f,
};

// ---- 2:4 sparse blocks (DType::S24Q8, DType::S24Q4) ----
// A block covers 64 inputs = 16 groups of 4; each group keeps 2 values (the pruned two are zero). Kept slot
// p = 16 L + 8 H + 2 j + e (L, H in {0, 1}, j < 4, e in {0, 1}) holds the e-th kept value (in input order) of
// group g = 8 H + 4 L + j, so a 256-bit load of the 32 slots puts in each 128-bit lane L and half H the kept
// values of the 16 consecutive inputs [16 (2 H + L), +16): one byte shuffle per lane gathers their activations.
// Group g's two positions (0..3) form a nibble i_lo | i_hi << 2 (i_lo < i_hi); idx[k] holds the nibble of group
// kSparse24LoGroup[k] in its low half and of kSparse24HiGroup[k] in its high half (the groups lane 0 and lane 1
// read). quant/sparse_formats.h has the encoder and decoder.
inline constexpr int kSparse24Block = 64;  // inputs per block
inline constexpr int kSparse24Kept = 32;   // kept values per block
inline constexpr int kSparse24LoGroup[8] = {0, 1, 2, 3, 8, 9, 10, 11};
inline constexpr int kSparse24HiGroup[8] = {4, 5, 6, 7, 12, 13, 14, 15};

// S24Q8 row: a Q8RowHeader (fp32 scale, w = scale * q) followed by ceil(cols / 64) of these.
struct BlockS24Q8 {
  int8_t q[kSparse24Kept];  // kept values in slot order, [-127, 127]
  uint8_t idx[8];           // 2-bit positions, see above
};
static_assert(sizeof(BlockS24Q8) == 40);

// S24Q4 row: ceil(cols / 64) of these. w = d * (q - 8); slot p < 16 is the low nibble of qs[p], slot p + 16 its
// high nibble.
struct BlockS24Q4 {
  uint16_t d;  // fp16
  uint8_t qs[kSparse24Kept / 2];
  uint8_t idx[8];
};
static_assert(sizeof(BlockS24Q4) == 26);

// Activations quantized per token for int8 dot products (dynamic activation quantization, and the int4/NF4
// GEMV path): blocks of 32 values with one fp32 scale, x ~= scale * q. `sum` (= scale * sum(q)) lets asymmetric
// weights apply their offset m without touching the values again.
struct BlockQ8Act {
  float scale;
  float sum;
  int8_t q[32];
};
static_assert(sizeof(BlockQ8Act) == 40);

}  // namespace tessera::quant
