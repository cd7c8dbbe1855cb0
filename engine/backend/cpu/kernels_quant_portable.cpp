// Portable kernels for the quantized weight types (plain C++, baseline x86-64): the reference the AVX2 variants in
// kernels_quant_avx2.cpp are tested against, with the same arithmetic (integer sums per 32 values, the same float
// scale products), so the two agree to rounding.
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/panel8.h"
#include "quant/quant_traits.h"

namespace tessera::cpu {

namespace {

using quant::BlockQ8Act;

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// ---- Q8 rows: fp32 scale, then int8 values ----

inline float q8_scale(const void* row) {
  float s;
  std::memcpy(&s, row, sizeof s);
  return s;
}
inline const int8_t* q8_values(const void* row) {
  return static_cast<const int8_t*>(row) + 4;
}

float dot1_q8(const float* x, const void* row, int64_t cols) {
  const int8_t* q = q8_values(row);
  float acc[4] = {0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 4 <= cols; c += 4) {
    for (int u = 0; u < 4; ++u) acc[u] += x[c + u] * static_cast<float>(q[c + u]);
  }
  float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  for (; c < cols; ++c) s += x[c] * static_cast<float>(q[c]);
  return q8_scale(row) * s;
}

void dot4_q8(const float* x, const void* const* rows, const void* const* /*next*/, int64_t cols, float* out) {
  for (int j = 0; j < 4; ++j) out[j] = dot1_q8(x, rows[j], cols);
}

// ---- Grouped 4-bit rows ----

// Bytes of one block and the offset of its nibbles.
struct BlockShape {
  size_t bytes;
  size_t qs;
};
inline BlockShape block_shape(int dt, int group) {
  const size_t half = static_cast<size_t>(group) / 2;
  return dt == kQ4A ? BlockShape{4 + half, 4} : BlockShape{2 + half, 2};
}

// Nibble j of a block of `group` values (value j < group/2 is the low nibble of qs[j], j + group/2 the high one).
inline int nibble(const uint8_t* qs, int group, int j) {
  const int h = group / 2;
  return j < h ? qs[j] & 0x0f : qs[j - h] >> 4;
}

// ---- int8-activation dot products ----

float qdot1_q8(const BlockQ8Act* x, const void* row, int64_t cols, int /*group*/) {
  const int8_t* q = q8_values(row);
  float acc = 0.0f;
  for (int64_t b = 0; b * 32 < cols; ++b) {
    const int n = static_cast<int>(min64(32, cols - b * 32));
    int32_t isum = 0;
    for (int i = 0; i < n; ++i) isum += static_cast<int32_t>(q[b * 32 + i]) * x[b].q[i];
    acc += x[b].scale * static_cast<float>(isum);
  }
  return q8_scale(row) * acc;
}

// Q4 / Q4A / NF4: per weight block (scale d, offset m) and per activation block inside it (scale s, sum):
//   Q4:  d * s * sum(q * qa) - 8 * d * sum   (w = d * (q - 8))
//   Q4A: d * s * sum(q * qa) + m * sum       (w = d * q + m)
//   NF4: (d / 127) * s * sum(kNf4Int8[q] * qa)
template <int DT>
float qdot1_grouped(const BlockQ8Act* x, const void* row, int64_t cols, int group) {
  const BlockShape shape = block_shape(DT, group);
  const auto* p = static_cast<const uint8_t*>(row);
  const int64_t act_blocks = (cols + 31) / 32;
  const int per = group / 32;
  float acc = 0.0f, corr = 0.0f;
  for (int64_t wb = 0; wb * per < act_blocks; ++wb, p += shape.bytes) {
    const float d = half_at(p);
    const float m = DT == kQ4A ? half_at(p + 2) : 0.0f;
    const float dn = d * (1.0f / 127.0f);
    const uint8_t* qs = p + shape.qs;
    for (int t = 0; t < per && wb * per + t < act_blocks; ++t) {
      const BlockQ8Act& a = x[wb * per + t];
      int32_t isum = 0;
      for (int i = 0; i < 32; ++i) {
        const int q = nibble(qs, group, 32 * t + i);
        isum += (DT == kNF4 ? kNf4Int8[q] : q) * a.q[i];
      }
      if constexpr (DT == kNF4) {
        acc += dn * a.scale * static_cast<float>(isum);
      } else {
        acc += d * a.scale * static_cast<float>(isum);
        corr += (DT == kQ4A ? m : d) * a.sum;
      }
    }
  }
  if constexpr (DT == kQ4) return acc - 8.0f * corr;
  if constexpr (DT == kQ4A) return acc + corr;
  return acc;
}

template <float (*Dot1)(const BlockQ8Act*, const void*, int64_t, int)>
void qdot4(const BlockQ8Act* x, const void* const* rows, const void* const* /*next*/, int64_t cols, int group,
           float* out) {
  for (int j = 0; j < 4; ++j) out[j] = Dot1(x, rows[j], cols, group);
}

void quantize_act(const float* x, int64_t n, BlockQ8Act* out) {
  quant::quantize_activations(x, n, out);
}

// ---- Dequantization ----

void dequant_q8(const void* row, int /*group*/, int64_t k0, int64_t kc, float* out) {
  const float s = q8_scale(row);
  const int8_t* q = q8_values(row) + k0;
  for (int64_t i = 0; i < kc; ++i) out[i] = s * static_cast<float>(q[i]);
}

template <int DT>
void dequant_grouped(const void* row, int group, int64_t k0, int64_t kc, float* out) {
  const BlockShape shape = block_shape(DT, group);
  const auto* p = static_cast<const uint8_t*>(row) + static_cast<size_t>(k0 / group) * shape.bytes;
  for (int64_t b0 = 0; b0 < kc; b0 += group, p += shape.bytes) {
    const float d = half_at(p);
    const float m = DT == kQ4A ? half_at(p + 2) : 0.0f;
    const int n = static_cast<int>(min64(group, kc - b0));
    for (int j = 0; j < n; ++j) {
      const int q = nibble(p + shape.qs, group, j);
      if constexpr (DT == kQ4) out[b0 + j] = d * static_cast<float>(q - 8);
      if constexpr (DT == kQ4A) out[b0 + j] = d * static_cast<float>(q) + m;
      if constexpr (DT == kNF4) out[b0 + j] = d * quant::kNf4Levels[q];
    }
  }
}

// Dequantizes each row's [k0, k0 + kc) and scatters it into panel order, 256 columns at a time.
template <void (*Dequant)(const void*, int, int64_t, int64_t, float*)>
void pack_dequant(const void* w, size_t row_bytes, int group, int nr, int width, int64_t k0, int64_t kc, float* panel) {
  float buf[256];
  for (int r = 0; r < width; ++r) {
    if (r >= nr) {
      for (int64_t k = 0; k < kc; ++k) panel[k * kGemmNR + r] = 0.0f;
      continue;
    }
    const void* row = static_cast<const uint8_t*>(w) + static_cast<size_t>(r) * row_bytes;
    for (int64_t c0 = 0; c0 < kc; c0 += 256) {
      const int64_t n = min64(256, kc - c0);
      Dequant(row, group, k0 + c0, n, buf);
      for (int64_t k = 0; k < n; ++k) panel[(c0 + k) * kGemmNR + r] = buf[k];
    }
  }
}

// ---- Q4 / Q4A panels (panel8.h) ----

template <int DT>
int panel_code(const uint8_t* panel, int group, int r, int64_t k) {
  const PanelCodePos pos = panel_code_pos(static_cast<DType>(DT), group, r, k);
  return pos.high ? panel[pos.byte] >> 4 : panel[pos.byte] & 0x0f;
}

// Each row as qdot1_grouped computes it (same products, same order).
template <int DT>
void qdot_panel(const BlockQ8Act* x, const void* panel, int64_t cols, int group, float* out) {
  constexpr auto dt = static_cast<DType>(DT);
  const auto* p = static_cast<const uint8_t*>(panel);
  const int64_t act_blocks = (cols + 31) / 32;
  const int per = group / 32;
  for (int r = 0; r < kPanelRows; ++r) {
    float acc = 0.0f, corr = 0.0f;
    for (int64_t b = 0; b < act_blocks; ++b) {
      const int64_t g = b / per;
      const float d = half_at(p + panel_scale_pos(dt, group, r, g));
      const float m = DT == kQ4A ? half_at(p + panel_min_pos(group, r, g)) : 0.0f;
      int32_t isum = 0;
      for (int i = 0; i < 32; ++i) isum += panel_code<DT>(p, group, r, 32 * b + i) * x[b].q[i];
      acc += d * x[b].scale * static_cast<float>(isum);
      corr += (DT == kQ4A ? m : d) * x[b].sum;
    }
    out[r] = DT == kQ4 ? acc - 8.0f * corr : acc + corr;
  }
}

template <int DT>
void pack_panel(const void* panel, int group, int64_t k0, int64_t kc, float* out) {
  constexpr auto dt = static_cast<DType>(DT);
  const auto* p = static_cast<const uint8_t*>(panel);
  for (int64_t k = 0; k < kc; ++k) {
    const int64_t col = k0 + k, g = col / group;
    for (int r = 0; r < kPanelRows; ++r) {
      const float d = half_at(p + panel_scale_pos(dt, group, r, g));
      const auto q = static_cast<float>(panel_code<DT>(p, group, r, col));
      out[k * kGemmNR + r] = DT == kQ4A ? d * q + half_at(p + panel_min_pos(group, r, g)) : d * (q - 8.0f);
    }
  }
}

// ---- Integer GEMM ----

void expand_act(const BlockQ8Act* x, int64_t nblocks, int16_t* x16, float* xs) {
  for (int64_t b = 0; b < nblocks; ++b) {
    xs[b] = x[b].scale;
    for (int i = 0; i < 32; ++i) x16[b * 32 + i] = x[b].q[i];
  }
}

void pack_i8(const void* w, size_t row_bytes, int64_t cols, int nr, int width, int64_t k0, int64_t kc, int16_t* panel,
             float* scales) {
  for (int j = 0; j < width; ++j) {
    const void* row = static_cast<const uint8_t*>(w) + static_cast<size_t>(j) * row_bytes;
    const int8_t* q = j < nr ? q8_values(row) : nullptr;
    scales[j] = j < nr ? q8_scale(row) : 0.0f;
    for (int64_t k = 0; k < kc; ++k) {
      const int64_t col = k0 + k;
      panel[(k / 2) * 2 * kGemmNR + 2 * j + k % 2] = static_cast<int16_t>(q != nullptr && col < cols ? q[col] : 0);
    }
  }
}

void gemm_i8_tile(const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs, int mr, const int16_t* panel,
                  int64_t kc, bool first, float* c, int64_t ldc) {
  for (int i = 0; i < mr; ++i) {
    float acc[kGemmNR];
    for (int j = 0; j < kGemmNR; ++j) acc[j] = first ? 0.0f : c[i * ldc + j];
    for (int64_t b = 0; b < kc / 32; ++b) {
      int32_t isum[kGemmNR] = {};
      for (int64_t k = 32 * b; k < 32 * b + 32; ++k) {
        const int32_t xv = x[i * ldx + k];
        const int16_t* p = panel + (k / 2) * 2 * kGemmNR + k % 2;
        for (int j = 0; j < kGemmNR; ++j) isum[j] += xv * p[2 * j];
      }
      const float s = xs[i * ldxs + b];
      for (int j = 0; j < kGemmNR; ++j) acc[j] += s * static_cast<float>(isum[j]);
    }
    for (int j = 0; j < kGemmNR; ++j) c[i * ldc + j] = acc[j];
  }
}

}  // namespace

void add_quant_portable_kernels(Kernels& k) {
  k.dot4[kQ8] = dot4_q8;
  k.dot1[kQ8] = dot1_q8;
  k.qdot1[kQ8] = qdot1_q8;
  k.qdot1[kQ4] = qdot1_grouped<kQ4>;
  k.qdot1[kQ4A] = qdot1_grouped<kQ4A>;
  k.qdot1[kNF4] = qdot1_grouped<kNF4>;
  k.qdot4[kQ8] = qdot4<qdot1_q8>;
  k.qdot4[kQ4] = qdot4<qdot1_grouped<kQ4>>;
  k.qdot4[kQ4A] = qdot4<qdot1_grouped<kQ4A>>;
  k.qdot4[kNF4] = qdot4<qdot1_grouped<kNF4>>;
  k.qdot_panel[kQ4] = qdot_panel<kQ4>;
  k.qdot_panel[kQ4A] = qdot_panel<kQ4A>;
  k.pack_panel[kQ4] = pack_panel<kQ4>;
  k.pack_panel[kQ4A] = pack_panel<kQ4A>;
  k.quantize_act = quantize_act;
  k.dequant[kQ8] = dequant_q8;
  k.dequant[kQ4] = dequant_grouped<kQ4>;
  k.dequant[kQ4A] = dequant_grouped<kQ4A>;
  k.dequant[kNF4] = dequant_grouped<kNF4>;
  k.pack[kQ8] = pack_dequant<dequant_q8>;
  k.pack[kQ4] = pack_dequant<dequant_grouped<kQ4>>;
  k.pack[kQ4A] = pack_dequant<dequant_grouped<kQ4A>>;
  k.pack[kNF4] = pack_dequant<dequant_grouped<kNF4>>;
  k.expand_act = expand_act;
  k.pack_i8 = pack_i8;
  k.gemm_i8_tile = gemm_i8_tile;
}

}  // namespace tessera::cpu
