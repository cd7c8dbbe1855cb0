#include "quant/sparse_formats.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/core/check.h"
#include "engine/core/dtype.h"
#include "quant/blocks.h"

namespace tessera::quant {
namespace {

// The kept values of one 64-input block: value[slot] and the block's index bytes. Inputs at or beyond `n` (the
// ragged tail) count as zeros.
struct KeptBlock {
  float value[kSparse24Kept];
  int col[kSparse24Kept];  // input offset in the block, for importance lookups
  uint8_t idx[8];
};

KeptBlock select_kept(const float* x, int n) {
  KeptBlock k{};
  uint8_t nib[16];
  for (int g = 0; g < 16; ++g) {
    float v[4];
    for (int i = 0; i < 4; ++i) v[i] = 4 * g + i < n ? x[4 * g + i] : 0.0f;
    // The two largest magnitudes, the lower position first on ties.
    int a = 0;
    for (int i = 1; i < 4; ++i)
      if (std::fabs(v[i]) > std::fabs(v[a])) a = i;
    int b = a == 0 ? 1 : 0;
    for (int i = 0; i < 4; ++i)
      if (i != a && std::fabs(v[i]) > std::fabs(v[b])) b = i;
    const int lo = std::min(a, b), hi = std::max(a, b);
    nib[g] = static_cast<uint8_t>(lo | hi << 2);
    k.value[sparse24_slot(g, 0)] = v[lo];
    k.value[sparse24_slot(g, 1)] = v[hi];
    k.col[sparse24_slot(g, 0)] = 4 * g + lo;
    k.col[sparse24_slot(g, 1)] = 4 * g + hi;
  }
  for (int i = 0; i < 8; ++i) k.idx[i] = static_cast<uint8_t>(nib[kSparse24LoGroup[i]] | nib[kSparse24HiGroup[i]] << 4);
  return k;
}

int64_t blocks_of(int64_t cols) {
  return (cols + kSparse24Block - 1) / kSparse24Block;
}

float fp16_round(float x) {
  return f16_to_f32(f32_to_f16(x));
}

// Squared (importance-weighted) error of the kept values with int4 scale d; q out when non-null.
double q4_error(const KeptBlock& k, float d, const float* importance, uint8_t* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  double err = 0.0;
  for (int s = 0; s < kSparse24Kept; ++s) {
    const int v = std::clamp(static_cast<int>(std::nearbyint(k.value[s] * inv)) + 8, 0, 15);
    if (q != nullptr) q[s] = static_cast<uint8_t>(v);
    const double e = static_cast<double>(k.value[s]) - static_cast<double>(d) * (v - 8);
    err += (importance != nullptr ? importance[k.col[s]] : 1.0) * e * e;
  }
  return err;
}

}  // namespace

void sparse24_positions(const uint8_t* idx, uint8_t* offsets) {
  for (int i = 0; i < 8; ++i) {
    const int groups[2] = {kSparse24LoGroup[i], kSparse24HiGroup[i]};
    const int nibs[2] = {idx[i] & 0x0f, idx[i] >> 4};
    for (int h = 0; h < 2; ++h) {
      const int g = groups[h];
      offsets[sparse24_slot(g, 0)] = static_cast<uint8_t>(4 * g + (nibs[h] & 3));
      offsets[sparse24_slot(g, 1)] = static_cast<uint8_t>(4 * g + (nibs[h] >> 2));
    }
  }
}

void s24q8_quantize_row(const float* x, int64_t cols, int /*group*/, const float* /*importance*/, void* row) {
  float amax = 0.0f;
  for (int64_t b = 0; b < blocks_of(cols); ++b) {
    const int n = static_cast<int>(std::min<int64_t>(kSparse24Block, cols - b * kSparse24Block));
    const KeptBlock k = select_kept(x + b * kSparse24Block, n);
    for (float v : k.value) amax = std::max(amax, std::fabs(v));
  }
  s24q8_quantize_row_with_amax(x, cols, amax, row);
}

void s24q8_quantize_row_with_amax(const float* x, int64_t cols, float amax, void* row) {
  const int64_t nb = blocks_of(cols);
  auto* out = static_cast<uint8_t*>(row);
  auto* blocks = reinterpret_cast<BlockS24Q8*>(out + 4);
  const float scale = amax / 127.0f;
  const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
  std::memcpy(out, &scale, sizeof scale);
  for (int64_t b = 0; b < nb; ++b) {
    const int n = static_cast<int>(std::min<int64_t>(kSparse24Block, cols - b * kSparse24Block));
    const KeptBlock k = select_kept(x + b * kSparse24Block, n);
    BlockS24Q8 blk;
    for (int s = 0; s < kSparse24Kept; ++s)
      blk.q[s] = static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(k.value[s] * inv)), -127, 127));
    std::memcpy(blk.idx, k.idx, sizeof blk.idx);
    std::memcpy(&blocks[b], &blk, sizeof blk);
  }
}

void s24q8_dequantize_row(const void* row, int64_t cols, int /*group*/, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  float scale;
  std::memcpy(&scale, p, sizeof scale);
  std::fill(out, out + cols, 0.0f);
  for (int64_t b = 0; b < blocks_of(cols); ++b) {
    BlockS24Q8 blk;
    std::memcpy(&blk, p + 4 + b * sizeof(BlockS24Q8), sizeof blk);
    uint8_t off[kSparse24Kept];
    sparse24_positions(blk.idx, off);
    for (int s = 0; s < kSparse24Kept; ++s) {
      const int64_t c = b * kSparse24Block + off[s];
      if (c < cols) out[c] = scale * static_cast<float>(blk.q[s]);
    }
  }
}

// Two candidate scales per block, as for dense int4 (quant_traits.cpp): d = M / -8 with M the kept value of
// largest magnitude (finer step, M exact), and d = absmax / 7 (symmetric); the lower (weighted) error wins.
void s24q4_quantize_row(const float* x, int64_t cols, int /*group*/, const float* importance, void* row) {
  auto* out = static_cast<uint8_t*>(row);
  for (int64_t b = 0; b < blocks_of(cols); ++b) {
    const int n = static_cast<int>(std::min<int64_t>(kSparse24Block, cols - b * kSparse24Block));
    const KeptBlock k = select_kept(x + b * kSparse24Block, n);
    const float* imp = importance != nullptr ? importance + b * kSparse24Block : nullptr;
    float m = 0.0f;
    for (float v : k.value)
      if (std::fabs(v) > std::fabs(m)) m = v;
    float d = fp16_round(m / -8.0f);
    const float d2 = fp16_round(std::fabs(m) / 7.0f);
    if (q4_error(k, d2, imp, nullptr) < q4_error(k, d, imp, nullptr)) d = d2;
    uint8_t q[kSparse24Kept];
    q4_error(k, d, nullptr, q);
    BlockS24Q4 blk;
    blk.d = f32_to_f16(d);
    for (int s = 0; s < 16; ++s) blk.qs[s] = static_cast<uint8_t>(q[s] | q[s + 16] << 4);
    std::memcpy(blk.idx, k.idx, sizeof blk.idx);
    std::memcpy(out + b * sizeof(BlockS24Q4), &blk, sizeof blk);
  }
}

void s24q4_dequantize_row(const void* row, int64_t cols, int /*group*/, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  std::fill(out, out + cols, 0.0f);
  for (int64_t b = 0; b < blocks_of(cols); ++b) {
    BlockS24Q4 blk;
    std::memcpy(&blk, p + b * sizeof(BlockS24Q4), sizeof blk);
    const float d = f16_to_f32(blk.d);
    uint8_t off[kSparse24Kept];
    sparse24_positions(blk.idx, off);
    for (int s = 0; s < kSparse24Kept; ++s) {
      const int q = s < 16 ? blk.qs[s] & 0x0f : blk.qs[s - 16] >> 4;
      const int64_t c = b * kSparse24Block + off[s];
      if (c < cols) out[c] = d * static_cast<float>(q - 8);
    }
  }
}

}  // namespace tessera::quant
