// AVX-512 decode kernels with int8 activations (quantized per 32 values to quant::BlockQ8Act): Q8 rows and Q4/Q4A
// panels. Compiled with the AVX-512 flags like kernels_avx512.cpp, entered only through avx512_kernels() (after the
// cpuid check), and calling no inline function or template of a shared header. Each kernel is its
// kernels_quant_avx2.cpp twin with the integer sums formed by vpdpbusd (unsigned bytes times signed bytes, four
// products per int32 lane) on 512-bit registers; the int32 lanes hold the same sums as the AVX2 lanes, converted,
// scaled and added in the same order, so every output is bit for bit the AVX2 kernel's.
#include <immintrin.h>

#include <cstdint>

// GCC 12 reports the deliberately undefined pass-through operand of some 512-bit intrinsics as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "engine/backend/cpu/kernels.h"
#include "quant/blocks.h"

namespace tessera::cpu {

namespace {

using quant::BlockQ8Act;

inline float float_at(const void* p) {
  float f;
  __builtin_memcpy(&f, p, 4);
  return f;
}

// kernels_quant_avx2.cpp's hsum, so each row's total rounds the same way.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 upper_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// ---- Q8 rows ----
//
// Two rows per zmm: row a's 32 int8 weights of a block in the low half, row b's in the high half, against the block's
// activations made unsigned (u = q + 128) in both halves. vpdpbusd(u, w) - vpdpbusd(128, w) leaves in lane k of each
// half the sum of the four products of bytes 4k..4k+3: the lane the AVX2 kernel's vpmaddubsw/vpmaddwd pair fills.

constexpr int64_t kPrefetchBytes = 768;  // the AVX2 kernel's distance

// R rows (1, or a multiple of 2); R = 1 runs the row in both halves.
template <int R>
void qdot_q8(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  constexpr int P = (R + 1) / 2;
  const int8_t* r[2 * P];
  for (int j = 0; j < 2 * P; ++j) r[j] = static_cast<const int8_t*>(rows[j < R ? j : 0]) + 4;
  __m512 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  const auto block = [&](const BlockQ8Act& xb, const auto& weights) {
    const __m512i u =
        _mm512_broadcast_i64x4(_mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q)), flip));
    const __m512 s = _mm512_set1_ps(xb.scale);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const __m512i w = weights(p);
      const __m512i sums = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, u, w), _mm512_dpbusd_epi32(zero, c128, w));
      acc[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), s, acc[p]);
    }
  };
  const int64_t full = cols / 32;
  for (int64_t b = 0; b < full; ++b) {
    const int64_t c = 32 * b;
    if ((b & 1) == 0) {
      const int64_t pc = c + kPrefetchBytes;
#pragma GCC unroll 8
      for (int j = 0; j < R; ++j) {
        if (pc < cols) {
          _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
        } else if (next != nullptr) {
          _mm_prefetch(static_cast<const char*>(next[j]) + (pc - cols), _MM_HINT_T0);
        }
      }
    }
    block(x[b], [&](int p) {
      return _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[2 * p] + c))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[2 * p + 1] + c)), 1);
    });
  }
  if (full * 32 < cols) {  // ragged last block: the rows end (padded to 4 bytes) before 32 values
    const int64_t c = full * 32;
    alignas(64) int8_t tail[2 * P][32] = {};
    for (int j = 0; j < 2 * P; ++j) {
      for (int64_t i = 0; i < cols - c; ++i) tail[j][i] = r[j][c + i];
    }
    block(x[full], [&](int p) { return _mm512_load_si512(tail[2 * p]); });
  }
  for (int j = 0; j < R; ++j) {
    const __m256 half = j % 2 == 0 ? _mm512_castps512_ps256(acc[j / 2]) : upper_half(acc[j / 2]);
    out[j] = float_at(rows[j]) * hsum(half);
  }
}

void qdot8_q8(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int /*group*/,
              float* out) {
  qdot_q8<8>(x, rows, next, cols, out);
}
void qdot4_q8(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int /*group*/,
              float* out) {
  qdot_q8<4>(x, rows, next, cols, out);
}
float qdot1_q8(const BlockQ8Act* x, const void* row, int64_t cols, int /*group*/) {
  float out;
  const void* rows[1] = {row};
  qdot_q8<1>(x, rows, nullptr, cols, &out);
  return out;
}

// ---- Q4 / Q4A decode over the panel layout (panel8.h) ----
//
// kernels_quant_avx2.cpp's qdot_panel with 64-byte loads: a load holds two 32-byte chunks, i.e. four columns of all
// eight rows per nibble half for each chunk, so dword r of the low 256 bits is row r and dword 8 + r row r again.
// The codes are unsigned nibbles, the activations signed bytes: exactly vpdpbusd's operands, four products per
// lane with no int16 stage. The activation quads each lane needs come from one vpermd of the block. Per 32 columns
// the two halves' int32 sums add up to each row's exact sum, which is then scaled and accumulated in 256-bit lanes
// as the AVX2 kernel does, so the results are its results bit for bit.

template <int DT>
constexpr int64_t kPanelHdr = DT == kQ4A ? 32 : 16;
constexpr int64_t kPanelPrefetchBytes = 2048;  // the AVX2 kernel's distance

template <int DT, int G>
void qdot_panel_g(const BlockQ8Act* x, const void* panel, int64_t cols, float* out) {
  constexpr int64_t kHdr = kPanelHdr<DT>;
  constexpr int64_t kGroupBytes = kHdr + 4 * G;
  constexpr int kPer = G / 32;
  const auto* p = static_cast<const uint8_t*>(panel);
  const int64_t act_blocks = (cols + 31) / 32;
  const __m512i mask = _mm512_set1_epi8(0x0f);
  // Activation quads per lane: chunk c's low nibbles read quad 2c, its high nibbles quad 2c + 1.
  const __m512i lo01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i hi01 = _mm512_add_epi32(lo01, _mm512_set1_epi32(1));
  const __m512i lo23 = _mm512_add_epi32(lo01, _mm512_set1_epi32(4));
  const __m512i hi23 = _mm512_add_epi32(lo01, _mm512_set1_epi32(5));
  __m256 acc = _mm256_setzero_ps(), corr = acc;
  for (int64_t b0 = 0; b0 < act_blocks; b0 += kPer, p += kGroupBytes) {
    const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    __m256 c8 = d8;
    if constexpr (DT == kQ4A) c8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
    const int per = static_cast<int>(act_blocks - b0 < kPer ? act_blocks - b0 : kPer);
    for (int t = 0; t < per; ++t) {
      const BlockQ8Act& xb = x[b0 + t];
      const uint8_t* codes = p + kHdr + 128 * t;
      _mm_prefetch(reinterpret_cast<const char*>(codes + kPanelPrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(codes + kPanelPrefetchBytes + 64), _MM_HINT_T0);
      const __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q)));
      const __m512i v0 = _mm512_loadu_si512(codes);
      const __m512i v1 = _mm512_loadu_si512(codes + 64);
      __m512i s0 =
          _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v0, mask), _mm512_permutexvar_epi32(lo01, a));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(v0, 4), mask),
                                       _mm512_permutexvar_epi32(hi01, a));
      s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v1, mask), _mm512_permutexvar_epi32(lo23, a));
      s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(v1, 4), mask), _mm512_permutexvar_epi32(hi23, a));
      const __m512i s = _mm512_add_epi32(s0, s1);
      const __m256i i8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8), _mm256_mul_ps(d8, _mm256_set1_ps(xb.scale)), acc);
      corr = _mm256_fmadd_ps(c8, _mm256_set1_ps(xb.sum), corr);
    }
  }
  const __m256 v = DT == kQ4 ? _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), corr, acc) : _mm256_add_ps(acc, corr);
  _mm256_storeu_ps(out, v);
}

template <int DT>
void qdot_panel(const BlockQ8Act* x, const void* panel, int64_t cols, int group, float* out) {
  switch (group) {
    case 32:
      return qdot_panel_g<DT, 32>(x, panel, cols, out);
    case 64:
      return qdot_panel_g<DT, 64>(x, panel, cols, out);
    default:
      return qdot_panel_g<DT, 128>(x, panel, cols, out);
  }
}

}  // namespace

void add_quant_avx512_kernels(Kernels& k) {
  k.qdot1[kQ8] = qdot1_q8;
  k.qdot4[kQ8] = qdot4_q8;
  k.qdot8[kQ8] = qdot8_q8;
  k.qdot_panel[kQ4] = qdot_panel<kQ4>;
  k.qdot_panel[kQ4A] = qdot_panel<kQ4A>;
}

}  // namespace tessera::cpu
