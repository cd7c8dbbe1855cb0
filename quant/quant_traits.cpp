// Reference (portable, scalar) quantization and dequantization of the quantized weight types.
//
// Round-to-nearest (RTN) rules, all scales stored as the fp16 (Q4/Q4A/NF4) or fp32 (Q8) value the kernels read,
// and every q computed against that stored (rounded) scale so the per-element error bounds hold for the stored
// data, not for an unrounded intermediate:
//   Q8   (per row):   scale = absmax / 127, q = round(x / scale) in [-127, 127]; |error| <= scale / 2.
//   Q4   (per group): two candidate scales, keep the one with the lower squared error of the group:
//                       (a) llama.cpp q4_0: d = M / -8 where M is the value of largest magnitude (with sign), so M
//                           maps exactly to q = 0 (value -8) and the 16 levels cover [-8d, 7d];
//                       (b) d = absmax / 7: levels -7..7 used, symmetric.
//                     (a) has a 12.5% finer step and wins on almost every group of real weights (and Gaussian
//                     data: ~20% lower MSE); (b) wins when the other extreme sits near -M, which (a) clamps to 7d.
//                     Bound: |error| <= |d| / 2 for every element except those clamped at q = 15, which are within
//                     |d| (q4_0's clamp), so |error| <= |d| always.
//   Q4A  (per group): m = min (rounded down to fp16), d = (max - m) / 15 (rounded up), q = round((x - m) / d);
//                     every value lies in [m, m + 15 d], so |error| <= d / 2.
//   NF4  (per group): d = absmax, q = index of the level nearest to x / d.
// Missing values of a ragged last block are encoded as the code that decodes (closest) to zero; they never enter
// the scale computation.
//
// With `importance` (per-input non-negative weights s_i), each group (each row for Q8) additionally tries a few
// candidate scales (clipping the range by up to ~20%, and for Q4A a weighted least-squares refit of d and m) and
// keeps the candidate with the smallest sum_i s_i * (x_i - dequant_i)^2. The RTN result is always a candidate and
// only a strictly smaller weighted error replaces it, so the search never increases the weighted error.
#include "quant/quant_traits.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "engine/core/check.h"
#include "engine/core/cpu_features.h"
#include "quant/blocks.h"
#include "quant/quantize_simd.h"
#include "quant/sparse_formats.h"

namespace tessera::quant {
namespace {

float fp16_round(float x) {
  return f16_to_f32(f32_to_f16(x));
}

// The largest fp16 value <= x (x finite, in fp16 range).
float fp16_round_down(float x) {
  uint16_t h = f32_to_f16(x);
  if (f16_to_f32(h) > x) {
    if (h == 0x0000u) {
      h = 0x8001u;  // +0 -> the negative subnormal closest to zero
    } else if (h & 0x8000u) {
      ++h;  // negative: larger magnitude
    } else {
      --h;
    }
  }
  return f16_to_f32(h);
}

// The smallest fp16 value >= x for x >= 0.
float fp16_round_up(float x) {
  uint16_t h = f32_to_f16(x);
  if (f16_to_f32(h) < x) ++h;
  return f16_to_f32(h);
}

bool valid_group(int g) {
  return g == 32 || g == 64 || g == 128;
}

// std::nearbyint (current rounding mode: ties to even), inline. Adding and subtracting 1.5 * 2^23 rounds a float
// below 2^22 in magnitude to an integer in the current mode; the libm call it replaces (one per weight per
// candidate scale) was most of a 1.1B model's quantization time. Checked equal to std::nearbyint for every float
// below 1e9 in magnitude.
int round_int(float x) {
  constexpr float kMagic = 12582912.0f;
  if (std::fabs(x) < 4194304.0f) return static_cast<int>((x + kMagic) - kMagic);
  return static_cast<int>(std::nearbyint(x));
}

// ---- Q8 (one fp32 scale per row) ----

// Quantizes x with a fixed scale; returns the weighted (or plain if w == null) squared error.
double q8_encode(const float* x, int64_t n, float scale, const float* w, int8_t* q) {
  const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
  double err = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const int v = std::clamp(round_int(x[i] * inv), -127, 127);
    if (q != nullptr) q[i] = static_cast<int8_t>(v);
    const double e = static_cast<double>(x[i]) - static_cast<double>(scale) * v;
    err += (w != nullptr ? w[i] : 1.0) * e * e;
  }
  return err;
}

void write_q8_row(const float* x, int64_t cols, float scale, void* row) {
  auto* out = static_cast<uint8_t*>(row);
  std::memcpy(out, &scale, sizeof scale);
  auto* q = reinterpret_cast<int8_t*>(out + 4);
  q8_encode(x, cols, scale, nullptr, q);
  const auto padded = static_cast<int64_t>(dtype_row_bytes(DType::Q8, cols, 0)) - 4;
  for (int64_t i = cols; i < padded; ++i) q[i] = 0;
}

void q8_quantize_row(const float* x, int64_t cols, int /*group*/, const float* importance, void* row) {
  float amax = 0.0f;
  for (int64_t i = 0; i < cols; ++i) amax = std::max(amax, std::fabs(x[i]));
  float scale = amax / 127.0f;
  if (importance != nullptr && amax > 0.0f) {
    double best = q8_encode(x, cols, scale, importance, nullptr);
    for (int k = 1; k <= 10; ++k) {
      const float s = amax * (1.0f - 0.02f * static_cast<float>(k)) / 127.0f;
      const double e = q8_encode(x, cols, s, importance, nullptr);
      if (e < best) {
        best = e;
        scale = s;
      }
    }
  }
  write_q8_row(x, cols, scale, row);
}

void q8_dequantize_row(const void* row, int64_t cols, int /*group*/, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  float scale;
  std::memcpy(&scale, p, sizeof scale);
  const auto* q = reinterpret_cast<const int8_t*>(p + 4);
  for (int64_t i = 0; i < cols; ++i) out[i] = scale * static_cast<float>(q[i]);
}

// ---- grouped 4-bit types ----

// Nibble packing: value j < G/2 in the low nibble of qs[j], value j + G/2 in the high nibble.
void pack_nibbles(const uint8_t* q, int g, uint8_t* qs) {
  for (int j = 0; j < g / 2; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0x0f) | ((q[j + g / 2] & 0x0f) << 4));
}
uint8_t nibble(const uint8_t* qs, int g, int j) {
  return j < g / 2 ? static_cast<uint8_t>(qs[j] & 0x0f) : static_cast<uint8_t>(qs[j - g / 2] >> 4);
}

double weighted_sq(const float* w, int i, double e) {
  return (w != nullptr ? w[i] : 1.0) * e * e;
}

// Q4 symmetric with a fixed (already fp16-rounded) d; returns the (weighted) squared error over n values.
double q4_encode(const float* x, int n, float d, const float* w, uint8_t* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  double err = 0.0;
  for (int i = 0; i < n; ++i) {
    const int v = std::clamp(round_int(x[i] * inv) + 8, 0, 15);
    if (q != nullptr) q[i] = static_cast<uint8_t>(v);
    err += weighted_sq(w, i, static_cast<double>(x[i]) - static_cast<double>(d) * (v - 8));
  }
  return err;
}

// q4_encode's codes without the error.
void q4_codes(const float* x, int n, float d, uint8_t* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(std::clamp(round_int(x[i] * inv) + 8, 0, 15));
}

// q4_encode's unweighted errors for two scales in one pass: two independent sums (each added in q4_encode's order,
// so the values are identical) instead of two dependent chains one after the other.
void q4_errors2(const float* x, int n, float da, float db, double* ea, double* eb) {
  const float ia = da != 0.0f ? 1.0f / da : 0.0f, ib = db != 0.0f ? 1.0f / db : 0.0f;
  double sa = 0.0, sb = 0.0;
  for (int i = 0; i < n; ++i) {
    const int va = std::clamp(round_int(x[i] * ia) + 8, 0, 15), vb = std::clamp(round_int(x[i] * ib) + 8, 0, 15);
    const double a = static_cast<double>(x[i]) - static_cast<double>(da) * (va - 8);
    const double b = static_cast<double>(x[i]) - static_cast<double>(db) * (vb - 8);
    sa += a * a;
    sb += b * b;
  }
  *ea = sa;
  *eb = sb;
}

float q4_choose_scale(const float* x, int n, const float* w) {
  float amax = 0.0f, maxv = 0.0f;
  for (int i = 0; i < n; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      maxv = x[i];
    }
  }
  if (amax == 0.0f) return 0.0f;
  const float da = fp16_round(maxv / -8.0f);
  const float db = fp16_round(amax / 7.0f);
  double ea, eb;
  q4_errors2(x, n, da, db, &ea, &eb);
  float d = eb < ea ? db : da;
  if (w != nullptr) {
    double best = q4_encode(x, n, d, w, nullptr);
    // Candidates: the (a)-style scale shrunk (clipping the extreme) and the (b)-style scale shrunk.
    for (int k = 1; k <= 8; ++k) {
      const float f = 1.0f - 0.025f * static_cast<float>(k);
      for (const float c : {fp16_round(da * f), fp16_round(db * f)}) {
        const double e = q4_encode(x, n, c, w, nullptr);
        if (e < best) {
          best = e;
          d = c;
        }
      }
    }
  }
  return d;
}

// One Q4 block of n <= group values (n < group only for a row's last block).
void q4_quantize_block(const float* x, int n, int group, const float* w, uint8_t* out) {
  uint8_t q[128];
  const float d = q4_choose_scale(x, n, w);
  q4_codes(x, n, d, q);
  for (int i = n; i < group; ++i) q[i] = 8;
  const uint16_t dh = f32_to_f16(d);
  std::memcpy(out, &dh, 2);
  pack_nibbles(q, group, out + 2);
}

void q4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row) {
  TESSERA_CHECK_MSG(valid_group(group), "Q4 group must be 32, 64 or 128, got " + std::to_string(group));
  auto* out = static_cast<uint8_t*>(row);
  const size_t block_bytes = 2 + static_cast<size_t>(group) / 2;
  for (int64_t b0 = 0; b0 < cols; b0 += group, out += block_bytes) {
    const int n = static_cast<int>(std::min<int64_t>(group, cols - b0));
    q4_quantize_block(x + b0, n, group, importance != nullptr ? importance + b0 : nullptr, out);
  }
}

// Expands a row of blocks that hold one fp16 scale d and G/2 nibble bytes (Q4 and NF4): out = d * level(q).
template <typename Level>
void dequantize_scaled_nibbles(const void* row, int64_t cols, int group, float* out, Level level) {
  TESSERA_CHECK(valid_group(group));
  const auto* p = static_cast<const uint8_t*>(row);
  const size_t block_bytes = 2 + static_cast<size_t>(group) / 2;
  for (int64_t b0 = 0; b0 < cols; b0 += group, p += block_bytes) {
    uint16_t dh;
    std::memcpy(&dh, p, 2);
    const float d = f16_to_f32(dh);
    const int n = static_cast<int>(std::min<int64_t>(group, cols - b0));
    if (n == group) {  // both nibbles of each byte at once (no per-value branch)
      for (int j = 0; j < group / 2; ++j) {
        out[b0 + j] = d * level(p[2 + j] & 0x0f);
        out[b0 + group / 2 + j] = d * level(p[2 + j] >> 4);
      }
      continue;
    }
    for (int j = 0; j < n; ++j) out[b0 + j] = d * level(nibble(p + 2, group, j));
  }
}

void q4_dequantize_row(const void* row, int64_t cols, int group, float* out) {
  dequantize_scaled_nibbles(row, cols, group, out, [](int q) { return static_cast<float>(q - 8); });
}

// Q4A with fixed (fp16-rounded) d and m.
double q4a_encode(const float* x, int n, float d, float m, const float* w, uint8_t* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  double err = 0.0;
  for (int i = 0; i < n; ++i) {
    const int v = std::clamp(round_int((x[i] - m) * inv), 0, 15);
    if (q != nullptr) q[i] = static_cast<uint8_t>(v);
    err += weighted_sq(w, i, static_cast<double>(x[i]) - (static_cast<double>(d) * v + m));
  }
  return err;
}

void q4a_choose(const float* x, int n, const float* w, float* d_out, float* m_out) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  // m rounds down and d up, so every value lies inside [m, m + 15 d] and RTN stays within d / 2.
  float m = fp16_round_down(lo);
  float d = fp16_round_up((hi - m) / 15.0f);
  if (w != nullptr && hi > lo) {
    double best = q4a_encode(x, n, d, m, w, nullptr);
    auto consider = [&](float cd, float cm) {
      cd = fp16_round(cd);
      cm = fp16_round(cm);
      if (!(cd >= 0.0f) || !std::isfinite(cm)) return;
      const double e = q4a_encode(x, n, cd, cm, w, nullptr);
      if (e < best) {
        best = e;
        d = cd;
        m = cm;
      }
    };
    const float range = hi - lo;
    uint8_t q[128];
    for (int k = 0; k <= 6; ++k) {
      // Shrink the range from the low end, the high end, and both (k = 0 is RTN, refit only).
      for (int side = 0; side < 3; ++side) {
        if (k == 0 && side > 0) break;
        const float cut = 0.03f * static_cast<float>(k) * range;
        const float clo = side == 1 ? lo : lo + cut;
        const float chi = side == 0 ? hi : hi - cut;
        if (k > 0) consider((chi - clo) / 15.0f, clo);
        // Weighted least-squares refit of (d, m) for the codes this candidate produces.
        const float cd = fp16_round((chi - clo) / 15.0f), cm = fp16_round(clo);
        q4a_encode(x, n, cd, cm, nullptr, q);
        double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
        for (int i = 0; i < n; ++i) {
          const double wi = w[i];
          sw += wi;
          sq += wi * q[i];
          sqq += wi * q[i] * q[i];
          sx += wi * x[i];
          sqx += wi * q[i] * x[i];
        }
        const double det = sw * sqq - sq * sq;
        if (det > 0.0)
          consider(static_cast<float>((sw * sqx - sq * sx) / det), static_cast<float>((sqq * sx - sq * sqx) / det));
      }
    }
  }
  *d_out = d;
  *m_out = m;
}

void q4a_quantize_block(const float* x, int n, int group, const float* w, uint8_t* out) {
  uint8_t q[128];
  float d, m;
  q4a_choose(x, n, w, &d, &m);
  q4a_encode(x, n, d, m, nullptr, q);
  const uint8_t zero = static_cast<uint8_t>(d > 0.0f ? std::clamp(round_int(-m / d), 0, 15) : 0);
  for (int i = n; i < group; ++i) q[i] = zero;
  const uint16_t dh = f32_to_f16(d), mh = f32_to_f16(m);
  std::memcpy(out, &dh, 2);
  std::memcpy(out + 2, &mh, 2);
  pack_nibbles(q, group, out + 4);
}

void q4a_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row) {
  TESSERA_CHECK_MSG(valid_group(group), "Q4A group must be 32, 64 or 128, got " + std::to_string(group));
  auto* out = static_cast<uint8_t*>(row);
  const size_t block_bytes = 4 + static_cast<size_t>(group) / 2;
  for (int64_t b0 = 0; b0 < cols; b0 += group, out += block_bytes) {
    const int n = static_cast<int>(std::min<int64_t>(group, cols - b0));
    q4a_quantize_block(x + b0, n, group, importance != nullptr ? importance + b0 : nullptr, out);
  }
}

void q4a_dequantize_row(const void* row, int64_t cols, int group, float* out) {
  TESSERA_CHECK(valid_group(group));
  const auto* p = static_cast<const uint8_t*>(row);
  const size_t block_bytes = 4 + static_cast<size_t>(group) / 2;
  for (int64_t b0 = 0; b0 < cols; b0 += group, p += block_bytes) {
    uint16_t dh, mh;
    std::memcpy(&dh, p, 2);
    std::memcpy(&mh, p + 2, 2);
    const float d = f16_to_f32(dh), m = f16_to_f32(mh);
    const int n = static_cast<int>(std::min<int64_t>(group, cols - b0));
    for (int j = 0; j < n; ++j) out[b0 + j] = d * static_cast<float>(nibble(p + 4, group, j)) + m;
  }
}

// Index of the NF4 level nearest to v (ties to the lower level).
int nf4_nearest(float v) {
  int q = 0;
  for (int k = 0; k < 15; ++k) {
    if (v > 0.5f * (kNf4Levels[k] + kNf4Levels[k + 1])) q = k + 1;
  }
  return q;
}

double nf4_encode(const float* x, int n, float d, const float* w, uint8_t* q) {
  const float inv = d != 0.0f ? 1.0f / d : 0.0f;
  double err = 0.0;
  for (int i = 0; i < n; ++i) {
    const int v = nf4_nearest(x[i] * inv);
    if (q != nullptr) q[i] = static_cast<uint8_t>(v);
    err += weighted_sq(w, i, static_cast<double>(x[i]) - static_cast<double>(d) * kNf4Levels[v]);
  }
  return err;
}

void nf4_quantize_block(const float* x, int n, int group, const float* w, uint8_t* out) {
  uint8_t q[128];
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  float d = fp16_round(amax);
  if (w != nullptr && amax > 0.0f) {
    double best = nf4_encode(x, n, d, w, nullptr);
    for (int k = 1; k <= 10; ++k) {
      const float c = fp16_round(amax * (1.0f - 0.02f * static_cast<float>(k)));
      const double e = nf4_encode(x, n, c, w, nullptr);
      if (e < best) {
        best = e;
        d = c;
      }
    }
  }
  nf4_encode(x, n, d, nullptr, q);
  for (int i = n; i < group; ++i) q[i] = 7;  // kNf4Levels[7] == 0
  const uint16_t dh = f32_to_f16(d);
  std::memcpy(out, &dh, 2);
  pack_nibbles(q, group, out + 2);
}

void nf4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row) {
  TESSERA_CHECK_MSG(valid_group(group), "NF4 group must be 32, 64 or 128, got " + std::to_string(group));
  auto* out = static_cast<uint8_t*>(row);
  const size_t block_bytes = 2 + static_cast<size_t>(group) / 2;
  for (int64_t b0 = 0; b0 < cols; b0 += group, out += block_bytes) {
    const int n = static_cast<int>(std::min<int64_t>(group, cols - b0));
    nf4_quantize_block(x + b0, n, group, importance != nullptr ? importance + b0 : nullptr, out);
  }
}

void nf4_dequantize_row(const void* row, int64_t cols, int group, float* out) {
  dequantize_scaled_nibbles(row, cols, group, out, [](int q) { return kNf4Levels[q]; });
}

// Whether the AVX2 quantizers (quantize_simd.h) may run here: the cpuid check, made once.
bool simd_quantizers_usable() {
  static const bool usable = cpu_features().has_avx2_fma();
  return usable;
}

// The traits' quantize_row: the AVX2 twin of the reference (byte for byte the same rows) where the CPU has it and
// the twin takes the case (it declines importance weights except for Q4 and NF4); the reference otherwise.
using SimdRowFn = bool (*)(const float* x, int64_t cols, int group, const float* importance, void* row);
template <QuantizeRowFn Reference, SimdRowFn Simd>
void quantize_row_fast(const float* x, int64_t cols, int group, const float* importance, void* row) {
  if (simd_quantizers_usable() && Simd(x, cols, group, importance, row)) return;
  Reference(x, cols, group, importance, row);
}

const QuantTraits kTraits[] = {
    {DType::Q8, "int8", false, quantize_row_fast<q8_quantize_row, avx2::q8_quantize_row>, q8_dequantize_row,
     q8_quantize_row},
    {DType::Q4, "int4", true, quantize_row_fast<q4_quantize_row, avx2::q4_quantize_row>, q4_dequantize_row,
     q4_quantize_row},
    {DType::Q4A, "int4-asym", true, quantize_row_fast<q4a_quantize_row, avx2::q4a_quantize_row>, q4a_dequantize_row,
     q4a_quantize_row},
    {DType::NF4, "nf4", true, quantize_row_fast<nf4_quantize_row, avx2::nf4_quantize_row>, nf4_dequantize_row,
     nf4_quantize_row},
    {DType::S24Q8, "int8-2:4", false, s24q8_quantize_row, s24q8_dequantize_row, s24q8_quantize_row},
    {DType::S24Q4, "int4-2:4", false, s24q4_quantize_row, s24q4_dequantize_row, s24q4_quantize_row},
};

}  // namespace

namespace reference {
void q8_row(const float* x, int64_t cols, void* row) {
  q8_quantize_row(x, cols, 0, nullptr, row);
}
void q8_row_with_amax(const float* x, int64_t cols, float amax, void* row) {
  write_q8_row(x, cols, amax / 127.0f, row);
}
void q4_block(const float* x, int n, int group, const float* w, uint8_t* out) {
  q4_quantize_block(x, n, group, w, out);
}
void q4a_block(const float* x, int n, int group, uint8_t* out) {
  q4a_quantize_block(x, n, group, nullptr, out);
}
void nf4_block(const float* x, int n, int group, const float* w, uint8_t* out) {
  nf4_quantize_block(x, n, group, w, out);
}
}  // namespace reference

const QuantTraits& quant_traits(DType t) {
  for (const auto& tr : kTraits) {
    if (tr.dtype == t) return tr;
  }
  check_failed(__FILE__, __LINE__, "is_quantized(t)",
               std::string("no quantization traits for plain type ") + std::string(dtype_name(t)));
}

void dequantize_matrix_row(const Matrix& w, int64_t r, float* out) {
  TESSERA_CHECK(r >= 0 && r < w.rows);
  const void* row = w.row(r);
  switch (w.dtype) {
    case DType::F32:
      std::memcpy(out, row, static_cast<size_t>(w.cols) * sizeof(float));
      return;
    case DType::F16:
    case DType::BF16:
      for (int64_t i = 0; i < w.cols; ++i) out[i] = load_as_f32(row, w.dtype, static_cast<size_t>(i));
      return;
    default:
      quant_traits(w.dtype).dequantize_row(row, w.cols, w.group, out);
  }
}

void quantize_q8_row_with_amax(const float* x, int64_t cols, float amax, void* row) {
  if (simd_quantizers_usable()) return avx2::q8_quantize_row_with_amax(x, cols, amax, row);
  reference::q8_row_with_amax(x, cols, amax, row);
}

void quantize_activations(const float* x, int64_t n, BlockQ8Act* out) {
  for (int64_t b0 = 0; b0 < n; b0 += 32, ++out) {
    const int cnt = static_cast<int>(std::min<int64_t>(32, n - b0));
    float amax = 0.0f;
    for (int i = 0; i < cnt; ++i) amax = std::max(amax, std::fabs(x[b0 + i]));
    const float scale = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int v = i < cnt ? std::clamp(round_int(x[b0 + i] * inv), -127, 127) : 0;
      out->q[i] = static_cast<int8_t>(v);
      sum += v;
    }
    out->scale = scale;
    out->sum = scale * static_cast<float>(sum);
  }
}

}  // namespace tessera::quant
