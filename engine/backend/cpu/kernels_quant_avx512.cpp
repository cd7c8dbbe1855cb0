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

#include "engine/backend/cpu/avx512_inline.h"
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
// lane with no int16 stage. The activation quads each lane needs come from the block by vpermd (four per 32 values).
// Per 32 columns the two halves' int32 sums add up to each row's exact sum, which is then scaled and accumulated in
// 256-bit lanes as the AVX2 kernel does, so the results are its results bit for bit.

template <int DT>
constexpr int64_t kPanelHdr = DT == kQ4A ? 32 : 16;
// How far ahead of the codes being read each stream prefetches. One stream: further than the AVX2 kernel's 2048
// (tuned on Zen 3): on the Zen 5 VM, 1.1B int4:g32 decode at 1 thread, tok/s: 1024 45.9, 2048 48.2-48.9, 4096 51.3,
// 8192 54.7-56.4, 12288 53.4, 16384 52.1-52.8, 32768 53.7, none 49.5. Four streams (qdot_panel4) keep the same
// 8 KiB in flight between them.
template <int K>
constexpr int64_t kPanelPrefetchBytes = 8192 / K;

// K panels against the same activations, walked in lockstep: K sequential read streams instead of one (on the
// Intel VM one stream kept too few cache misses in flight to reach the memory bandwidth: at 1 thread, a 5632 x 2048
// int4:g32 GEMV over four streams read 12.2-13.0 GB/s against one stream's 11.0-12.7), and the activation quads
// permuted once for all K. Each panel's arithmetic is the one-panel kernel's, so every output is too.
template <int DT, int G, int K>
void qdot_panels_g(const BlockQ8Act* x, const void* const* panels, int64_t cols, float* const* out) {
  constexpr int64_t kHdr = kPanelHdr<DT>;
  constexpr int64_t kGroupBytes = kHdr + 4 * G;
  constexpr int kPer = G / 32;
  const uint8_t* p[K];
  for (int k = 0; k < K; ++k) p[k] = static_cast<const uint8_t*>(panels[k]);
  const int64_t act_blocks = (cols + 31) / 32;
  const __m512i mask = _mm512_set1_epi8(0x0f);
  // Activation quads per lane: chunk c's low nibbles read quad 2c, its high nibbles quad 2c + 1.
  const __m512i lo01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  const __m512i hi01 = _mm512_add_epi32(lo01, _mm512_set1_epi32(1));
  const __m512i lo23 = _mm512_add_epi32(lo01, _mm512_set1_epi32(4));
  const __m512i hi23 = _mm512_add_epi32(lo01, _mm512_set1_epi32(5));
  __m256 acc[K], corr[K];
  for (int k = 0; k < K; ++k) acc[k] = corr[k] = _mm256_setzero_ps();
  for (int64_t b0 = 0; b0 < act_blocks; b0 += kPer) {
    __m256 d8[K], c8[K];
    for (int k = 0; k < K; ++k) {
      d8[k] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[k])));
      c8[k] = d8[k];
      if constexpr (DT == kQ4A) c8[k] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[k] + 16)));
    }
    const int per = static_cast<int>(act_blocks - b0 < kPer ? act_blocks - b0 : kPer);
    for (int t = 0; t < per; ++t) {
      const BlockQ8Act& xb = x[b0 + t];
      const __m512i a = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q)));
      const __m512i a0 = _mm512_permutexvar_epi32(lo01, a), a1 = _mm512_permutexvar_epi32(hi01, a);
      const __m512i a2 = _mm512_permutexvar_epi32(lo23, a), a3 = _mm512_permutexvar_epi32(hi23, a);
      const __m256 xs = _mm256_set1_ps(xb.scale), xsum = _mm256_set1_ps(xb.sum);
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) {
        const uint8_t* codes = p[k] + kHdr + 128 * t;
        _mm_prefetch(reinterpret_cast<const char*>(codes + kPanelPrefetchBytes<K>), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(codes + kPanelPrefetchBytes<K> + 64), _MM_HINT_T0);
        const __m512i v0 = _mm512_loadu_si512(codes);
        const __m512i v1 = _mm512_loadu_si512(codes + 64);
        __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v0, mask), a0);
        __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(v0, 4), mask), a1);
        s0 = _mm512_dpbusd_epi32(s0, _mm512_and_si512(v1, mask), a2);
        s1 = _mm512_dpbusd_epi32(s1, _mm512_and_si512(_mm512_srli_epi16(v1, 4), mask), a3);
        const __m512i s = _mm512_add_epi32(s0, s1);
        const __m256i i8 = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8), _mm256_mul_ps(d8[k], xs), acc[k]);
        corr[k] = _mm256_fmadd_ps(c8[k], xsum, corr[k]);
      }
    }
    for (int k = 0; k < K; ++k) p[k] += kGroupBytes;
  }
  for (int k = 0; k < K; ++k) {
    const __m256 v =
        DT == kQ4 ? _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), corr[k], acc[k]) : _mm256_add_ps(acc[k], corr[k]);
    _mm256_storeu_ps(out[k], v);
  }
}

template <int DT, int K>
void qdot_panels(const BlockQ8Act* x, const void* const* panels, int64_t cols, int group, float* const* out) {
  switch (group) {
    case 32:
      return qdot_panels_g<DT, 32, K>(x, panels, cols, out);
    case 64:
      return qdot_panels_g<DT, 64, K>(x, panels, cols, out);
    default:
      return qdot_panels_g<DT, 128, K>(x, panels, cols, out);
  }
}

template <int DT>
void qdot_panel(const BlockQ8Act* x, const void* panel, int64_t cols, int group, float* out) {
  qdot_panels<DT, 1>(x, &panel, cols, group, &out);
}

// ---- NF4 rows ----
//
// kernels_quant_avx2.cpp's qdot4_g for NF4 with vpdpbusd. The code -> level lookup (vpshufb) yields the levels as
// unsigned bytes kNf4Int8[q] + 128 against signed activations, so sum((level + 128) * x) - 128 * sum(x), where the
// second term depends on the activations only and is formed once per activation block for every row. The int32
// lanes hold the AVX2 kernel's lane sums: with 32-value blocks four lanes per row (values 4k.. and 16 + 4k..), four
// rows per zmm; with wider blocks eight lanes per row, two rows per zmm.

inline uint64_t load_u16(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return h;
}
// The fp16 words at p0..p3 as four floats (the AVX2 kernel's halves4, the same values).
inline __m128 halves4(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, const uint8_t* p3) {
  const uint64_t h = load_u16(p0) | load_u16(p1) << 16 | load_u16(p2) << 32 | load_u16(p3) << 48;
  return _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(h)));
}
inline __m128i load16(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}
inline __m512i nf4_levels_u8() {
  alignas(16) uint8_t lut[16];
  for (int i = 0; i < 16; ++i) lut[i] = static_cast<uint8_t>(kNf4Int8[i] + 128);
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(lut)));
}

// One prefetch per row and cache line, kPrefetchBytes ahead of block offset off (into the next rows past the end).
inline void prefetch_rows4(const uint8_t* const* r, const void* const* next, int64_t off, int64_t row_bytes,
                           int64_t& next_prefetch) {
  if (off < next_prefetch) return;
  next_prefetch = off + 64;
  const int64_t pc = off + kPrefetchBytes;
  for (int j = 0; j < 4; ++j) {
    if (pc < row_bytes) {
      _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
    } else if (next != nullptr) {
      _mm_prefetch(static_cast<const char*>(next[j]) + (pc - row_bytes), _MM_HINT_T0);
    }
  }
}

constexpr int64_t kNf4Qs = 2;  // block: fp16 scale, then G / 2 bytes of nibbles

// Four rows, 32-value blocks: lanes 4r..4r+3 are row r's.
void qdot4_nf4_g32(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  constexpr int64_t kBytes = kNf4Qs + 16;
  const uint8_t* r[4];
  for (int j = 0; j < 4; ++j) r[j] = static_cast<const uint8_t*>(rows[j]);
  const int64_t nb = (cols + 31) / 32;
  const int64_t row_bytes = nb * kBytes;
  const __m512i lut = nf4_levels_u8(), mask = _mm512_set1_epi8(0x0f);
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80)), zero = _mm512_setzero_si512();
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc = _mm512_setzero_ps();
  int64_t next_prefetch = 0;
  for (int64_t wb = 0; wb < nb; ++wb) {
    const int64_t off = wb * kBytes;
    prefetch_rows4(r, next, off, row_bytes, next_prefetch);
    const BlockQ8Act& xb = x[wb];
    const __m512i a_lo = _mm512_broadcast_i32x4(load16(reinterpret_cast<const uint8_t*>(xb.q)));
    const __m512i a_hi = _mm512_broadcast_i32x4(load16(reinterpret_cast<const uint8_t*>(xb.q + 16)));
    const __m512i bias = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, c128, a_lo), c128, a_hi);
    const __m512i v = _mm512_inserti32x4(
        _mm512_inserti32x4(
            _mm512_inserti32x4(_mm512_castsi128_si512(load16(r[0] + off + kNf4Qs)), load16(r[1] + off + kNf4Qs), 1),
            load16(r[2] + off + kNf4Qs), 2),
        load16(r[3] + off + kNf4Qs), 3);
    const __m512i w_lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, mask));
    const __m512i w_hi = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask));
    const __m512i sums = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, w_lo, a_lo), w_hi, a_hi), bias);
    const __m128 d4 = _mm_mul_ps(halves4(r[0] + off, r[1] + off, r[2] + off, r[3] + off), _mm_set1_ps(1.0f / 127.0f));
    const __m128 ds = _mm_mul_ps(d4, _mm_set1_ps(xb.scale));
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(ds)), acc);
  }
  // The AVX2 kernel's fold of [row 0 x4 | row 1 x4] and [row 2 | row 3].
  const __m256 h = _mm256_hadd_ps(_mm512_castps512_ps256(acc), upper_half(acc));  // [r0 r0 r2 r2 | r1 r1 r3 r3]
  const __m256 h2 = _mm256_hadd_ps(h, h);                                         // [r0 r2 r0 r2 | r1 r3 r1 r3]
  _mm_storeu_ps(out, _mm_unpacklo_ps(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1)));
}

// Four rows, G = 64 or 128: two rows per zmm, eight lanes each; per weight block the rows' sums over its activation
// blocks are scaled by the activation scales, then by the rows' block scales.
template <int G>
void qdot4_nf4_g(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  constexpr int64_t kBytes = kNf4Qs + G / 2;
  constexpr int kPer = G / 32, kHalf = G / 2;
  const uint8_t* r[4];
  for (int j = 0; j < 4; ++j) r[j] = static_cast<const uint8_t*>(rows[j]);
  const int64_t act_blocks = (cols + 31) / 32;
  const int64_t wblocks = (act_blocks + kPer - 1) / kPer;
  const int64_t row_bytes = wblocks * kBytes;
  const __m512i lut = nf4_levels_u8(), mask = _mm512_set1_epi8(0x0f);
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80)), zero = _mm512_setzero_si512();
  __m512 acc01 = _mm512_setzero_ps(), acc23 = acc01;
  int64_t next_prefetch = 0;
  for (int64_t wb = 0; wb < wblocks; ++wb) {
    const int64_t off = wb * kBytes;
    prefetch_rows4(r, next, off, row_bytes, next_prefetch);
    __m512 k01 = _mm512_setzero_ps(), k23 = k01;
    const int per = static_cast<int>(act_blocks - wb * kPer < kPer ? act_blocks - wb * kPer : kPer);
    for (int t = 0; t < per; ++t) {
      const BlockQ8Act& xb = x[wb * kPer + t];
      const __m512i a = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q)));
      const __m512i bias = _mm512_dpbusd_epi32(zero, c128, a);
      const __m512 s = _mm512_set1_ps(xb.scale);
      // Values [32t, 32t + 32): the low nibbles of bytes 32t.. for the first half of the block, else the high ones.
      const int64_t q = off + kNf4Qs + (32 * t) % kHalf;
      const auto pair = [&](int ja, int jb) {
        __m512i v =
            _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[ja] + q))),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[jb] + q)), 1);
        if (32 * t >= kHalf) v = _mm512_srli_epi16(v, 4);
        const __m512i w = _mm512_shuffle_epi8(lut, _mm512_and_si512(v, mask));
        return _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_dpbusd_epi32(zero, w, a), bias));
      };
      k01 = _mm512_fmadd_ps(pair(0, 1), s, k01);
      k23 = _mm512_fmadd_ps(pair(2, 3), s, k23);
    }
    const __m128 d4 = _mm_mul_ps(halves4(r[0] + off, r[1] + off, r[2] + off, r[3] + off), _mm_set1_ps(1.0f / 127.0f));
    const __m512 d = _mm512_castps128_ps512(d4);
    acc01 = _mm512_fmadd_ps(
        k01, _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), d), acc01);
    acc23 = _mm512_fmadd_ps(
        k23, _mm512_permutexvar_ps(_mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3), d), acc23);
  }
  _mm_storeu_ps(
      out, hsum4(_mm512_castps512_ps256(acc01), upper_half(acc01), _mm512_castps512_ps256(acc23), upper_half(acc23)));
}

void qdot4_nf4(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int group,
               float* out) {
  switch (group) {
    case 32:
      return qdot4_nf4_g32(x, rows, next, cols, out);
    case 64:
      return qdot4_nf4_g<64>(x, rows, next, cols, out);
    default:
      return qdot4_nf4_g<128>(x, rows, next, cols, out);
  }
}

}  // namespace

void add_quant_avx512_kernels(Kernels& k) {
  k.qdot1[kQ8] = qdot1_q8;
  k.qdot4[kQ8] = qdot4_q8;
  k.qdot8[kQ8] = qdot8_q8;
  k.qdot4[kNF4] = qdot4_nf4;
  k.qdot_panel[kQ4] = qdot_panel<kQ4>;
  k.qdot_panel[kQ4A] = qdot_panel<kQ4A>;
  k.qdot_panel4[kQ4] = qdot_panels<kQ4, 4>;
  k.qdot_panel4[kQ4A] = qdot_panels<kQ4A, 4>;
}

}  // namespace tessera::cpu
