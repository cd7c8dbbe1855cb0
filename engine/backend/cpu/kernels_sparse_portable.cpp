// Portable kernels for the 2:4 sparse weight types (DType::S24Q8, DType::S24Q4; layout in quant/blocks.h): the
// reference the AVX2 variants in kernels_sparse_avx2.cpp are tested against. Decode reads only the stored bytes
// (kept values and 2-bit positions) against int8 activation blocks, with the same arithmetic as the AVX2 kernel:
// exact integer sums per (64-input block, activation block of 32), one float multiply-add for each.
// Prefill dequantizes panels for the fp32 GEMM, as the dense quantized types do.
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"
#include "quant/sparse_formats.h"

namespace tessera::cpu {

namespace {

using quant::BlockQ8Act;
using quant::BlockS24Q4;
using quant::BlockS24Q8;
using quant::kSparse24Block;
using quant::kSparse24Kept;

constexpr int kS24Q8 = static_cast<int>(DType::S24Q8);
constexpr int kS24Q4 = static_cast<int>(DType::S24Q4);

int64_t blocks_of(int64_t cols) {
  return (cols + kSparse24Block - 1) / kSparse24Block;
}

// Kept values of block b as integers (S24Q4: q - 8) and their input offsets in the block; returns the block's
// weight scale (S24Q8: the row scale).
template <int DT>
float block_values(const void* row, int64_t b, int* q, uint8_t* off) {
  const auto* p = static_cast<const uint8_t*>(row);
  if constexpr (DT == kS24Q8) {
    BlockS24Q8 blk;
    std::memcpy(&blk, p + 4 + b * sizeof(BlockS24Q8), sizeof blk);
    for (int s = 0; s < kSparse24Kept; ++s) q[s] = blk.q[s];
    quant::sparse24_positions(blk.idx, off);
    float scale;
    std::memcpy(&scale, p, sizeof scale);
    return scale;
  } else {
    BlockS24Q4 blk;
    std::memcpy(&blk, p + b * sizeof(BlockS24Q4), sizeof blk);
    for (int s = 0; s < kSparse24Kept; ++s) q[s] = (s < 16 ? blk.qs[s] & 0x0f : blk.qs[s - 16] >> 4) - 8;
    quant::sparse24_positions(blk.idx, off);
    return f16_to_f32(blk.d);
  }
}

// S24Q8: scale * sum_b sum_{a in 2b, 2b+1} s_a * isum_a.  S24Q4: sum_b d_b * sum_a s_a * isum_a.
template <int DT>
float qdot1_s24(const BlockQ8Act* x, const void* row, int64_t cols, int /*group*/) {
  const int64_t act_blocks = (cols + 31) / 32;
  float acc = 0.0f, row_scale = 1.0f;
  for (int64_t b = 0; b < blocks_of(cols); ++b) {
    int q[kSparse24Kept];
    uint8_t off[kSparse24Kept];
    const float d = block_values<DT>(row, b, q, off);
    int32_t isum[2] = {0, 0};
    for (int s = 0; s < kSparse24Kept; ++s) {
      const int64_t a = 2 * b + off[s] / 32;
      if (a < act_blocks) isum[off[s] / 32] += q[s] * x[a].q[off[s] % 32];
    }
    float part = x[2 * b].scale * static_cast<float>(isum[0]);
    if (2 * b + 1 < act_blocks) part += x[2 * b + 1].scale * static_cast<float>(isum[1]);
    if constexpr (DT == kS24Q8) {
      acc += part;
      row_scale = d;
    } else {
      acc += d * part;
    }
  }
  return row_scale * acc;
}

template <int DT>
void qdot4_s24(const BlockQ8Act* x, const void* const* rows, const void* const* /*next*/, int64_t cols, int group,
               float* out) {
  for (int j = 0; j < 4; ++j) out[j] = qdot1_s24<DT>(x, rows[j], cols, group);
}

// out[i] = value k0 + i of the row for i < kc; k0 is a multiple of 64 (the GEMM's k blocks are).
template <int DT>
void dequant_s24(const void* row, int /*group*/, int64_t k0, int64_t kc, float* out) {
  for (int64_t i = 0; i < kc; ++i) out[i] = 0.0f;
  for (int64_t b = k0 / kSparse24Block; b * kSparse24Block < k0 + kc; ++b) {
    int q[kSparse24Kept];
    uint8_t off[kSparse24Kept];
    const float d = block_values<DT>(row, b, q, off);
    for (int s = 0; s < kSparse24Kept; ++s) {
      const int64_t c = b * kSparse24Block + off[s] - k0;
      if (c >= 0 && c < kc) out[c] = d * static_cast<float>(q[s]);
    }
  }
}

// The panel is zeroed once (contiguous) and only the kept values are written: half the stores of a dense pack.
template <int DT>
void pack_s24(const void* w, size_t row_bytes, int /*group*/, int nr, int width, int64_t k0, int64_t kc, float* panel) {
  for (int64_t k = 0; k < kc; ++k)
    for (int r = 0; r < width; ++r) panel[k * kGemmNR + r] = 0.0f;
  for (int r = 0; r < nr; ++r) {
    const void* row = static_cast<const uint8_t*>(w) + static_cast<size_t>(r) * row_bytes;
    for (int64_t b = k0 / kSparse24Block; b * kSparse24Block < k0 + kc; ++b) {
      int q[kSparse24Kept];
      uint8_t off[kSparse24Kept];
      const float d = block_values<DT>(row, b, q, off);
      for (int s = 0; s < kSparse24Kept; ++s) {
        const int64_t c = b * kSparse24Block + off[s] - k0;
        if (c >= 0 && c < kc) panel[c * kGemmNR + r] = d * static_cast<float>(q[s]);
      }
    }
  }
}

}  // namespace

void add_sparse_portable_kernels(Kernels& k) {
  k.qdot1[kS24Q8] = qdot1_s24<kS24Q8>;
  k.qdot1[kS24Q4] = qdot1_s24<kS24Q4>;
  k.qdot4[kS24Q8] = qdot4_s24<kS24Q8>;
  k.qdot4[kS24Q4] = qdot4_s24<kS24Q4>;
  k.dequant[kS24Q8] = dequant_s24<kS24Q8>;
  k.dequant[kS24Q4] = dequant_s24<kS24Q4>;
  k.pack[kS24Q8] = pack_s24<kS24Q8>;
  k.pack[kS24Q4] = pack_s24<kS24Q4>;
}

}  // namespace tessera::cpu
