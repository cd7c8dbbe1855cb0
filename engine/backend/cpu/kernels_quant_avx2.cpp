// AVX2 + FMA + F16C kernels for the quantized weight types. Like kernels_avx2.cpp, this translation unit is
// compiled with -mavx2 -mfma -mf16c, is only entered through avx2_kernels() (after the cpuid check), and calls no
// inline function or template from a shared header (std::min, dtype.h's converters...): the linker could keep the
// AVX copy of such a function for the whole program. Everything it uses lives in the anonymous namespace; the
// headers it includes contribute types and constant data only.
//
// Integer dot products (int8 activations, quant::BlockQ8Act): per 32 values, vpmaddubsw multiplies unsigned
// weight codes (Q4/Q4A nibbles 0..15, or |w| for signed weights with the sign moved onto the activation) by the
// int8 activations into int16 pair sums (at most 2 * 127 * 127, no saturation), vpmaddwd against ones widens to
// int32, and one float multiply-add per (row, activation block) applies the activation scale. The weight block
// scale multiplies a block's partial sum once per weight block. Q4's -8 and Q4A's offset m are applied through the
// activation block sums (quant::BlockQ8Act::sum), for four or eight rows with one vector multiply-add.
//
// Measured on Zen 3 (the reference machine), the decode kernels are limited by vector-pipe throughput rather than by
// arithmetic: 256-bit loads, GPR-to-vector moves and word inserts share two pipes, vpmaddubsw/vpmaddwd two others,
// vphaddw costs two cycles. Hence the scale gathering through general-purpose registers (gather4_u16), the two-rows-
// per-register layout of 32-value blocks, and the eight-row kernel that folds rows with vphaddw before widening.
//
// The integer GEMM micro-kernel's inner loop is inline assembly (see i8_block6).
#include <immintrin.h>

#include <cstdint>

#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/panel8.h"

namespace tessera::cpu {

namespace {

using quant::BlockQ8Act;

inline int64_t min64(int64_t a, int64_t b) {
  return a < b ? a : b;
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return h;
}
inline float half_at(const uint8_t* p) {
  return _cvtsh_ss(load_u16(p));
}
inline float float_at(const void* p) {
  float f;
  __builtin_memcpy(&f, p, 4);
  return f;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// [sum a, sum b, sum c, sum d].
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

constexpr int64_t kPrefetchBytes = 768;  // as the bf16 GEMV: 512-1024 bytes ahead measured best on Zen 3

// ---- Block geometry of the grouped types ----

template <int DT, int G>
struct Geo {
  static constexpr int64_t kBytes = (DT == kQ4A ? 4 : 2) + G / 2;  // bytes per block
  static constexpr int64_t kQs = DT == kQ4A ? 4 : 2;               // offset of the nibbles
  static constexpr int kPer = G / 32;                              // activation blocks per weight block
};

// The 32 codes (0..15, one per byte, in value order) of values [32t, 32t + 32) of a block's nibbles.
// Value j < G/2 is the low nibble of qs[j], value j + G/2 the high nibble.
template <int G>
inline __m256i nibbles32(const uint8_t* qs, int t) {
  const __m256i mask = _mm256_set1_epi8(0x0f);
  if constexpr (G == 32) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), mask);
  } else {
    constexpr int kHalf = G / 2;
    const int off = (32 * t) % kHalf;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + off));
    return 32 * t < kHalf ? _mm256_and_si256(v, mask) : _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  }
}

// ---- Activation quantization (bit-identical to quant::quantize_activations) ----

inline void quantize_block(const float* x, BlockQ8Act* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
  const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
  __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                           _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float scale = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  const __m256 iv = _mm256_set1_ps(inv);
  // Default MXCSR rounding: to nearest, ties to even, like std::nearbyint in the reference.
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, iv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, iv));
  const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, iv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, iv));
  const __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  const int sum = _mm_cvtsi128_si32(s4);
  // packs interleave the 128-bit lanes; the permute restores value order.
  const __m256i p16a = _mm256_packs_epi32(i0, i1), p16b = _mm256_packs_epi32(i2, i3);
  const __m256i p8 = _mm256_packs_epi16(p16a, p16b);
  const __m256i q = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->q), q);
  out->scale = scale;
  out->sum = scale * static_cast<float>(sum);
}

void quantize_act(const float* x, int64_t n, BlockQ8Act* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) quantize_block(x + i, out++);
  if (i < n) {
    alignas(32) float tail[32];
    for (int j = 0; j < 32; ++j) tail[j] = i + j < n ? x[i + j] : 0.0f;
    quantize_block(tail, out);
  }
}

// ---- Q8 with fp32 activations ----

inline __m256 q8_load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

void dot4_q8(const float* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  const int8_t* r0 = static_cast<const int8_t*>(rows[0]) + 4;
  const int8_t* r1 = static_cast<const int8_t*>(rows[1]) + 4;
  const int8_t* r2 = static_cast<const int8_t*>(rows[2]) + 4;
  const int8_t* r3 = static_cast<const int8_t*>(rows[3]) + 4;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t c = 0;
  for (; c + 64 <= cols; c += 64) {
    const int64_t pc = c + kPrefetchBytes;
    if (pc < cols) {
      _mm_prefetch(reinterpret_cast<const char*>(r0 + pc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r1 + pc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r2 + pc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(r3 + pc), _MM_HINT_T0);
    } else if (next != nullptr) {
      for (int j = 0; j < 4; ++j) {
        _mm_prefetch(static_cast<const char*>(next[j]) + (pc - cols), _MM_HINT_T0);
      }
    }
    for (int64_t u = 0; u < 64; u += 16) {
      const __m256 x0 = _mm256_loadu_ps(x + c + u), x1 = _mm256_loadu_ps(x + c + u + 8);
      a0 = _mm256_fmadd_ps(x0, q8_load8(r0 + c + u), a0);
      a1 = _mm256_fmadd_ps(x0, q8_load8(r1 + c + u), a1);
      a2 = _mm256_fmadd_ps(x0, q8_load8(r2 + c + u), a2);
      a3 = _mm256_fmadd_ps(x0, q8_load8(r3 + c + u), a3);
      b0 = _mm256_fmadd_ps(x1, q8_load8(r0 + c + u + 8), b0);
      b1 = _mm256_fmadd_ps(x1, q8_load8(r1 + c + u + 8), b1);
      b2 = _mm256_fmadd_ps(x1, q8_load8(r2 + c + u + 8), b2);
      b3 = _mm256_fmadd_ps(x1, q8_load8(r3 + c + u + 8), b3);
    }
  }
  for (; c + 8 <= cols; c += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + c);
    a0 = _mm256_fmadd_ps(x0, q8_load8(r0 + c), a0);
    a1 = _mm256_fmadd_ps(x0, q8_load8(r1 + c), a1);
    a2 = _mm256_fmadd_ps(x0, q8_load8(r2 + c), a2);
    a3 = _mm256_fmadd_ps(x0, q8_load8(r3 + c), a3);
  }
  alignas(16) float s[4];
  _mm_store_ps(s, hsum4(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1), _mm256_add_ps(a2, b2), _mm256_add_ps(a3, b3)));
  for (; c < cols; ++c) {
    s[0] += x[c] * static_cast<float>(r0[c]);
    s[1] += x[c] * static_cast<float>(r1[c]);
    s[2] += x[c] * static_cast<float>(r2[c]);
    s[3] += x[c] * static_cast<float>(r3[c]);
  }
  for (int j = 0; j < 4; ++j) out[j] = float_at(rows[j]) * s[j];
}

float dot1_q8(const float* x, const void* row, int64_t cols) {
  const int8_t* r = static_cast<const int8_t*>(row) + 4;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), q8_load8(r + c), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 8), q8_load8(r + c + 8), a1);
  }
  for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), q8_load8(r + c), a0);
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; c < cols; ++c) s += x[c] * static_cast<float>(r[c]);
  return float_at(row) * s;
}

// ---- int8-activation dot products ----

// Signed int8 weights w against int8 activations a: 8 int32 partial sums of w * a (32 products).
inline __m256i dot_i8(__m256i w, __m256i a) {
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}
// Unsigned codes q (0..127) against int8 activations.
inline __m256i dot_u8(__m256i q, __m256i a) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1));
}

// Q8 rows: R rows (1 or 4) against the activation blocks.
template <int R>
void qdot_q8(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  const int8_t* r[R];
  for (int j = 0; j < R; ++j) r[j] = static_cast<const int8_t*>(rows[j]) + 4;
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  const int64_t full = cols / 32;
  for (int64_t b = 0; b < full; ++b) {
    const int64_t c = 32 * b;
    if ((b & 1) == 0) {
      const int64_t pc = c + kPrefetchBytes;
      for (int j = 0; j < R; ++j) {
        if (pc < cols) {
          _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
        } else if (next != nullptr) {
          _mm_prefetch(static_cast<const char*>(next[j]) + (pc - cols), _MM_HINT_T0);
        }
      }
    }
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
    const __m256 s = _mm256_set1_ps(x[b].scale);
    for (int j = 0; j < R; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[j] + c));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(w, a)), s, acc[j]);
    }
  }
  if (full * 32 < cols) {  // ragged last block: the rows end (padded to 4 bytes) before 32 values
    const int64_t c = full * 32;
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[full].q));
    const __m256 s = _mm256_set1_ps(x[full].scale);
    for (int j = 0; j < R; ++j) {
      alignas(32) int8_t tail[32] = {};
      for (int64_t i = 0; i < cols - c; ++i) tail[i] = r[j][c + i];
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(w, a)), s, acc[j]);
    }
  }
  for (int j = 0; j < R; ++j) out[j] = float_at(rows[j]) * hsum(acc[j]);
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

// Q4 / Q4A / NF4 rows (group G) against the activation blocks:
//   Q4:  sum_b d * (s * sum(q * qa)) - 8 * d * sum_b      Q4A: ... + m * sum_b
//   NF4: sum_b (d / 127) * (s * sum(kNf4Int8[q] * qa))

// Integer partial sums (8 lanes) of 32 codes q (bytes 0..15) against one activation block a.
template <int DT>
inline __m256i codes_dot(__m256i q, __m256i a) {
  if constexpr (DT == kNF4) {
    const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kNf4Int8)));
    return dot_i8(_mm256_shuffle_epi8(lut, q), a);
  } else {
    return dot_u8(q, a);
  }
}

// Two rows of 32-value blocks in one register: the 16 code bytes of row A in the low 128-bit lane, row B in the
// high one. Their low nibbles (values 0..15 of each row) meet the activation's values 0..15 duplicated in both
// lanes, their high nibbles values 16..31: 4 int32 partial sums per row, row A in lanes 0..3, row B in 4..7.
template <int DT>
inline __m256i dot_pair_g32(const uint8_t* qs_a, const uint8_t* qs_b, __m256i a_lo, __m256i a_hi) {
  const __m256i mask = _mm256_set1_epi8(0x0f);
  const __m256i v = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs_b)),
                                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs_a)));
  const __m256i lo = _mm256_and_si256(v, mask);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  if constexpr (DT == kNF4) {
    return _mm256_add_epi32(codes_dot<DT>(lo, a_lo), codes_dot<DT>(hi, a_hi));
  } else {
    // Code x activation pair sums are at most 2 * 15 * 127, so two of them still fit in int16.
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_maddubs_epi16(hi, a_hi));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
  }
}

// The fp16 words at p0..p3 packed into one 64-bit integer (p0 lowest). Built in general-purpose registers on
// purpose: on Zen 3 the moves and inserts that feed vector registers compete with the vector loads for two pipes,
// and inserting four words one by one cost as much as the whole dot product of a block. The empty asm keeps the
// compiler from turning the shifts back into vpinsrw.
inline uint64_t gather4_u16(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, const uint8_t* p3) {
  uint64_t h = static_cast<uint64_t>(load_u16(p0)) | static_cast<uint64_t>(load_u16(p1)) << 16 |
               static_cast<uint64_t>(load_u16(p2)) << 32 | static_cast<uint64_t>(load_u16(p3)) << 48;
  asm("" : "+r"(h));
  return h;
}

// The fp16 words at p0..p3 as four floats.
inline __m128 halves4(const uint8_t* p0, const uint8_t* p1, const uint8_t* p2, const uint8_t* p3) {
  return _mm_cvtph_ps(_mm_cvtsi64_si128(static_cast<long long>(gather4_u16(p0, p1, p2, p3))));
}

// Four rows. Per weight block: the four block scales (and Q4A offsets) are converted together; Q4's -8 and Q4A's
// m go into one vector of corrections per activation block (their weight times the block's activation sum).
template <int DT, int G>
void qdot4_g(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  using B = Geo<DT, G>;
  const uint8_t* r0 = static_cast<const uint8_t*>(rows[0]);
  const uint8_t* r1 = static_cast<const uint8_t*>(rows[1]);
  const uint8_t* r2 = static_cast<const uint8_t*>(rows[2]);
  const uint8_t* r3 = static_cast<const uint8_t*>(rows[3]);
  const int64_t act_blocks = (cols + 31) / 32;
  const int64_t wblocks = (act_blocks + B::kPer - 1) / B::kPer;
  const int64_t row_bytes = wblocks * B::kBytes;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  __m128 corr = _mm_setzero_ps();
  int64_t next_prefetch = 0;
  for (int64_t wb = 0; wb < wblocks; ++wb) {
    const int64_t off = wb * B::kBytes;
    if (off >= next_prefetch) {  // one prefetch per row and cache line
      next_prefetch = off + 64;
      const int64_t pc = off + kPrefetchBytes;
      if (pc < row_bytes) {
        _mm_prefetch(reinterpret_cast<const char*>(r0 + pc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(r1 + pc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(r2 + pc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(r3 + pc), _MM_HINT_T0);
      } else if (next != nullptr) {
        for (int j = 0; j < 4; ++j) _mm_prefetch(static_cast<const char*>(next[j]) + (pc - row_bytes), _MM_HINT_T0);
      }
    }
    const uint8_t* b0 = r0 + off;
    const uint8_t* b1 = r1 + off;
    const uint8_t* b2 = r2 + off;
    const uint8_t* b3 = r3 + off;
    __m128 d4 = halves4(b0, b1, b2, b3);
    if constexpr (DT == kNF4) d4 = _mm_mul_ps(d4, _mm_set1_ps(1.0f / 127.0f));
    __m128 c4 = d4;  // weight of the activation sums in the correction
    if constexpr (DT == kQ4A) c4 = halves4(b0 + 2, b1 + 2, b2 + 2, b3 + 2);
    const __m256 d8 = _mm256_castps128_ps256(d4);
    if constexpr (G == 32) {
      const BlockQ8Act& xb = x[wb];
      const __m256i a_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.q)));
      const __m256i a_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.q + 16)));
      const __m256 ds = _mm256_mul_ps(d8, _mm256_set1_ps(xb.scale));
      const __m256 s01 = _mm256_permutevar8x32_ps(ds, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
      const __m256 s23 = _mm256_permutevar8x32_ps(ds, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3));
      const __m256i i01 = dot_pair_g32<DT>(b0 + B::kQs, b1 + B::kQs, a_lo, a_hi);
      const __m256i i23 = dot_pair_g32<DT>(b2 + B::kQs, b3 + B::kQs, a_lo, a_hi);
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i01), s01, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i23), s23, acc1);
      if constexpr (DT != kNF4) corr = _mm_fmadd_ps(c4, _mm_set1_ps(xb.sum), corr);
    } else {
      __m256 k0 = _mm256_setzero_ps(), k1 = k0, k2 = k0, k3 = k0;
      const int per = static_cast<int>(min64(B::kPer, act_blocks - wb * B::kPer));
      const auto step = [&](int t) {
        const BlockQ8Act& xb = x[wb * B::kPer + t];
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
        const __m256 s = _mm256_set1_ps(xb.scale);
        k0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(codes_dot<DT>(nibbles32<G>(b0 + B::kQs, t), a)), s, k0);
        k1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(codes_dot<DT>(nibbles32<G>(b1 + B::kQs, t), a)), s, k1);
        k2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(codes_dot<DT>(nibbles32<G>(b2 + B::kQs, t), a)), s, k2);
        k3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(codes_dot<DT>(nibbles32<G>(b3 + B::kQs, t), a)), s, k3);
        if constexpr (DT != kNF4) corr = _mm_fmadd_ps(c4, _mm_set1_ps(xb.sum), corr);
      };
      if (per == B::kPer) {  // full block: compile-time trip count and nibble offsets
#pragma GCC unroll 4
        for (int t = 0; t < B::kPer; ++t) step(t);
      } else {  // ragged last block
        for (int t = 0; t < per; ++t) step(t);
      }
      acc0 = _mm256_fmadd_ps(k0, _mm256_permutevar8x32_ps(d8, _mm256_set1_epi32(0)), acc0);
      acc1 = _mm256_fmadd_ps(k1, _mm256_permutevar8x32_ps(d8, _mm256_set1_epi32(1)), acc1);
      acc2 = _mm256_fmadd_ps(k2, _mm256_permutevar8x32_ps(d8, _mm256_set1_epi32(2)), acc2);
      acc3 = _mm256_fmadd_ps(k3, _mm256_permutevar8x32_ps(d8, _mm256_set1_epi32(3)), acc3);
    }
  }
  __m128 sums;
  if constexpr (G == 32) {
    // acc0 = [row 0 x4 | row 1 x4], acc1 = [row 2 | row 3].
    const __m256 h = _mm256_hadd_ps(acc0, acc1);  // [r0 r0 r2 r2 | r1 r1 r3 r3]
    const __m256 h2 = _mm256_hadd_ps(h, h);       // [r0 r2 r0 r2 | r1 r3 r1 r3]
    const __m128 lo = _mm256_castps256_ps128(h2), hi = _mm256_extractf128_ps(h2, 1);
    sums = _mm_unpacklo_ps(lo, hi);  // [r0 r1 r2 r3]
  } else {
    sums = hsum4(acc0, acc1, acc2, acc3);
  }
  if constexpr (DT == kQ4) sums = _mm_fnmadd_ps(_mm_set1_ps(8.0f), corr, sums);
  if constexpr (DT == kQ4A) sums = _mm_add_ps(sums, corr);
  _mm_storeu_ps(out, sums);
}

// Q4 / Q4A with 32-value blocks, eight rows: the pair sums of rows A..H (two rows per register as in
// dot_pair_g32) are folded by three vphaddw into one int16 per row and lane half (at most 8 * 2 * 15 * 127 =
// 30480, no overflow), so one vpmaddwd, one conversion and one multiply-add cover all eight rows, and the eight
// block scales are converted together. Lane order after the folds: [A C E G | B D F H].
template <int DT>
void qdot8_g32(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  static_assert(DT == kQ4 || DT == kQ4A);
  using B = Geo<DT, 32>;
  const uint8_t* r[8];
  for (int j = 0; j < 8; ++j) r[j] = static_cast<const uint8_t*>(rows[j]);
  const int64_t nb = (cols + 31) / 32;
  const int64_t row_bytes = nb * B::kBytes;
  const __m256i mask = _mm256_set1_epi8(0x0f);
  __m256 acc = _mm256_setzero_ps(), corr = acc;
  int64_t next_prefetch = 0;
  for (int64_t wb = 0; wb < nb; ++wb) {
    const int64_t off = wb * B::kBytes;
    if (off >= next_prefetch) {
      next_prefetch = off + 64;
      const int64_t pc = off + kPrefetchBytes;
      if (pc < row_bytes) {
        for (int j = 0; j < 8; ++j) _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
      } else if (next != nullptr) {
        for (int j = 0; j < 8; ++j) _mm_prefetch(static_cast<const char*>(next[j]) + (pc - row_bytes), _MM_HINT_T0);
      }
    }
    const uint64_t d_lo = gather4_u16(r[0] + off, r[2] + off, r[4] + off, r[6] + off);
    const uint64_t d_hi = gather4_u16(r[1] + off, r[3] + off, r[5] + off, r[7] + off);
    const __m256 d8 = _mm256_cvtph_ps(_mm_set_epi64x(static_cast<long long>(d_hi), static_cast<long long>(d_lo)));
    __m256 c8 = d8;
    if constexpr (DT == kQ4A) {
      const uint64_t m_lo = gather4_u16(r[0] + off + 2, r[2] + off + 2, r[4] + off + 2, r[6] + off + 2);
      const uint64_t m_hi = gather4_u16(r[1] + off + 2, r[3] + off + 2, r[5] + off + 2, r[7] + off + 2);
      c8 = _mm256_cvtph_ps(_mm_set_epi64x(static_cast<long long>(m_hi), static_cast<long long>(m_lo)));
    }
    const BlockQ8Act& xb = x[wb];
    const __m256i a_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.q)));
    const __m256i a_hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.q + 16)));
    const auto pair = [&](int ra, int rb) {  // int16 pair sums: row ra in the low lane, rb in the high one
      const __m256i v = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r[rb] + off + B::kQs)),
                                         _mm_loadu_si128(reinterpret_cast<const __m128i*>(r[ra] + off + B::kQs)));
      const __m256i lo = _mm256_and_si256(v, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      return _mm256_add_epi16(_mm256_maddubs_epi16(lo, a_lo), _mm256_maddubs_epi16(hi, a_hi));
    };
    const __m256i h0 = _mm256_hadd_epi16(pair(0, 1), pair(2, 3));  // [A C | B D], 4 sums each
    const __m256i h1 = _mm256_hadd_epi16(pair(4, 5), pair(6, 7));  // [E G | F H]
    const __m256i i8 = _mm256_madd_epi16(_mm256_hadd_epi16(h0, h1), _mm256_set1_epi16(1));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8), _mm256_mul_ps(d8, _mm256_set1_ps(xb.scale)), acc);
    corr = _mm256_fmadd_ps(c8, _mm256_set1_ps(xb.sum), corr);
  }
  __m256 v = DT == kQ4 ? _mm256_fnmadd_ps(_mm256_set1_ps(8.0f), corr, acc) : _mm256_add_ps(acc, corr);
  v = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // -> [A B C D E F G H]
  _mm256_storeu_ps(out, v);
}

// One row (ragged row counts): the straightforward loop.
template <int DT, int G>
float qdot1_g(const BlockQ8Act* x, const void* row, int64_t cols) {
  using B = Geo<DT, G>;
  const uint8_t* r = static_cast<const uint8_t*>(row);
  const int64_t act_blocks = (cols + 31) / 32;
  __m256 acc = _mm256_setzero_ps();
  float corr = 0.0f;
  for (int64_t wb = 0; wb * B::kPer < act_blocks; ++wb) {
    const uint8_t* b = r + wb * B::kBytes;
    float d = half_at(b);
    if constexpr (DT == kNF4) d *= 1.0f / 127.0f;
    const float c = DT == kQ4A ? half_at(b + 2) : d;
    __m256 k = _mm256_setzero_ps();
    const int per = static_cast<int>(min64(B::kPer, act_blocks - wb * B::kPer));
    for (int t = 0; t < per; ++t) {
      const BlockQ8Act& xb = x[wb * B::kPer + t];
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
      k = _mm256_fmadd_ps(_mm256_cvtepi32_ps(codes_dot<DT>(nibbles32<G>(b + B::kQs, t), a)), _mm256_set1_ps(xb.scale),
                          k);
      corr += c * xb.sum;
    }
    acc = _mm256_fmadd_ps(k, _mm256_set1_ps(d), acc);
  }
  const float v = hsum(acc);
  return DT == kQ4 ? v - 8.0f * corr : DT == kQ4A ? v + corr : v;
}

template <int DT>
void qdot4_grouped(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int group,
                   float* out) {
  switch (group) {
    case 32:
      return qdot4_g<DT, 32>(x, rows, next, cols, out);
    case 64:
      return qdot4_g<DT, 64>(x, rows, next, cols, out);
    default:
      return qdot4_g<DT, 128>(x, rows, next, cols, out);
  }
}
template <int DT>
float qdot1_grouped(const BlockQ8Act* x, const void* row, int64_t cols, int group) {
  switch (group) {
    case 32:
      return qdot1_g<DT, 32>(x, row, cols);
    case 64:
      return qdot1_g<DT, 64>(x, row, cols);
    default:
      return qdot1_g<DT, 128>(x, row, cols);
  }
}

// Eight rows: the folded kernel for 32-value blocks, two four-row calls otherwise (wider blocks already share
// their scale work across activation blocks).
template <int DT>
void qdot8_grouped(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int group,
                   float* out) {
  if (group == 32) return qdot8_g32<DT>(x, rows, next, cols, out);
  qdot4_grouped<DT>(x, rows, rows + 4, cols, group, out);
  qdot4_grouped<DT>(x, rows + 4, next, cols, group, out + 4);
}

// ---- Q4 / Q4A panels (panel8.h) ----
// Only panel8.h's constants are used here (its inline helpers stay out of this translation unit); the layout
// arithmetic is repeated and checked against them at compile time.

template <int DT>
constexpr int64_t kPanelHdr = DT == kQ4A ? 32 : 16;
// How far ahead of the codes being read each stream prefetches. One stream, further ahead than the row kernels'
// eight: 1.1B int4:g32 decode at 1 thread, two alternating runs each (a noisy Zen 3 VM): 768 bytes 25.7 tok/s, 2048
// 28.4, 4096 28.5, no prefetch 24.2. Four streams (qdot_panel4), on the Intel VM (TESSERA_CPU_FEATURES=avx2), four
// alternating runs: 512 bytes each 18.2-20.7 tok/s, 2048 each 18.7-22.2 (one stream of 2048: 16.3-18.3).
constexpr int64_t kPanelPrefetchBytes = 2048;  // per stream, whatever the number of streams
static_assert(kPanelHdr<kQ4> == panel_header_bytes(DType::Q4) && kPanelHdr<kQ4A> == panel_header_bytes(DType::Q4A));
static_assert(panel_code_pos(DType::Q4, 64, 3, 64 + 32 + 13).byte == (16 + 4 * 64) + 16 + 128 + 32 + 12 + 1);

inline __m256i broadcast_i32(const int8_t* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Eight rows of a panel against the activation blocks: per 32 columns, four 32-byte loads give four columns of every
// row per nibble half; vpmaddubsw against a broadcast of those four activations leaves per row two int16 pair sums,
// eight of which add up in int16 (at most 8 * 2 * 15 * 127 = 30480) before one vpmaddwd makes the row's int32 sum,
// already one per lane: no folding across rows. The float part is qdot8_g32's: acc += i * (d * s), corr += c * sum.
// K panels are walked in lockstep (K sequential read streams, for qdot_panel4), each with the one-panel arithmetic.
template <int DT, int G, int K>
void qdot_panels_g(const BlockQ8Act* x, const void* const* panels, int64_t cols, float* const* out) {
  constexpr int64_t kHdr = kPanelHdr<DT>;
  constexpr int64_t kGroupBytes = kHdr + 4 * G;
  constexpr int kPer = G / 32;
  const uint8_t* p[K];
  for (int k = 0; k < K; ++k) p[k] = static_cast<const uint8_t*>(panels[k]);
  const int64_t act_blocks = (cols + 31) / 32;
  const __m256i mask = _mm256_set1_epi8(0x0f);
  __m256 acc[K], corr[K];
  for (int k = 0; k < K; ++k) acc[k] = corr[k] = _mm256_setzero_ps();
  for (int64_t b0 = 0; b0 < act_blocks; b0 += kPer) {
    __m256 d8[K], c8[K];
    for (int k = 0; k < K; ++k) {
      d8[k] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[k])));
      c8[k] = d8[k];
      if constexpr (DT == kQ4A) c8[k] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p[k] + 16)));
    }
    const int per = static_cast<int>(min64(kPer, act_blocks - b0));
    for (int t = 0; t < per; ++t) {
      const BlockQ8Act& xb = x[b0 + t];
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) {
        const uint8_t* codes = p[k] + kHdr + 128 * t;
        _mm_prefetch(reinterpret_cast<const char*>(codes + kPanelPrefetchBytes), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(codes + kPanelPrefetchBytes + 64), _MM_HINT_T0);
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * c));
          const __m256i lo = _mm256_and_si256(v, mask);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
          s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(lo, broadcast_i32(xb.q + 8 * c)));
          s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(hi, broadcast_i32(xb.q + 8 * c + 4)));
        }
        const __m256i i8 = _mm256_madd_epi16(_mm256_add_epi16(s0, s1), _mm256_set1_epi16(1));
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i8), _mm256_mul_ps(d8[k], _mm256_set1_ps(xb.scale)), acc[k]);
        corr[k] = _mm256_fmadd_ps(c8[k], _mm256_set1_ps(xb.sum), corr[k]);
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

// GEMM packing from a panel. Per 32 columns: each 32-byte load of codes, split into nibbles, is reordered in lane
// (byte 4r + i -> 4i + r) and across lanes (dwords 0 4 1 5 2 6 3 7) so that each 8-byte part holds one column of
// all eight rows, then widened, converted and scaled: Q4 fma(q, d, -8d) = d * (q - 8) and Q4A fma(q, d, m) = d * q + m
// round like the canonical dequantization (d * q is exact in both).
template <int DT>
void pack_panel(const void* panel, int group, int64_t k0, int64_t kc, float* out) {
  constexpr int64_t kHdr = kPanelHdr<DT>;
  const int64_t group_bytes = kHdr + 4 * static_cast<int64_t>(group);
  const auto* p = static_cast<const uint8_t*>(panel);
  const __m256i mask = _mm256_set1_epi8(0x0f);
  const __m256i in_lane = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9,
                                           13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i across = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  alignas(32) float tail[32 * kGemmNR];
  for (int64_t k = 0; k < kc; k += 32) {
    const int64_t col = k0 + k;
    const uint8_t* pg = p + (col / group) * group_bytes;
    const __m256 d8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pg)));
    const __m256 o8 = DT == kQ4A ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pg + 16)))
                                 : _mm256_mul_ps(d8, _mm256_set1_ps(-8.0f));
    const uint8_t* codes = pg + kHdr + 128 * ((col % group) / 32);
    const bool full = k + 32 <= kc;
    float* dst = full ? out + k * kGemmNR : tail;
    for (int c = 0; c < 4; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * c));
      const __m256i halves[2] = {_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask)};
      for (int h = 0; h < 2; ++h) {
        const __m256i cols4 = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(halves[h], in_lane), across);
        const __m128i lo = _mm256_castsi256_si128(cols4), hi = _mm256_extracti128_si256(cols4, 1);
        const __m128i parts[4] = {lo, _mm_unpackhi_epi64(lo, lo), hi, _mm_unpackhi_epi64(hi, hi)};
        for (int i = 0; i < 4; ++i) {
          const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i]));
          _mm256_storeu_ps(dst + (8 * c + 4 * h + i) * kGemmNR, _mm256_fmadd_ps(q, d8, o8));
        }
      }
    }
    if (!full) {
      for (int64_t j = 0; j < kc - k; ++j) {
        for (int r = 0; r < kPanelRows; ++r) out[(k + j) * kGemmNR + r] = tail[j * kGemmNR + r];
      }
    }
  }
}

// ---- Dequantization ----

void dequant_q8(const void* row, int /*group*/, int64_t k0, int64_t kc, float* out) {
  const __m256 s = _mm256_set1_ps(float_at(row));
  const int8_t* q = static_cast<const int8_t*>(row) + 4 + k0;
  int64_t i = 0;
  for (; i + 8 <= kc; i += 8) _mm256_storeu_ps(out + i, _mm256_mul_ps(s, q8_load8(q + i)));
  const float sc = float_at(row);
  for (; i < kc; ++i) out[i] = sc * static_cast<float>(q[i]);
}

// 32 codes of one block to 32 floats: Q4 d * (q - 8), Q4A d * q + m (exact: d * q needs at most 15 bits, so the
// FMA and the reference's multiply-then-add round identically), NF4 d * level.
template <int DT>
inline void decode32(__m256i q, float d, float m, float* out) {
  const __m256 dv = _mm256_set1_ps(d);
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int p = 0; p < 4; ++p) {
    const __m256i qi = _mm256_cvtepu8_epi32(parts[p]);
    __m256 v;
    if constexpr (DT == kQ4) {
      v = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_sub_epi32(qi, _mm256_set1_epi32(8))));
    } else if constexpr (DT == kQ4A) {
      v = _mm256_fmadd_ps(dv, _mm256_cvtepi32_ps(qi), _mm256_set1_ps(m));
    } else {
      const __m256 lo_levels = _mm256_loadu_ps(quant::kNf4Levels);
      const __m256 hi_levels = _mm256_loadu_ps(quant::kNf4Levels + 8);
      const __m256 l0 = _mm256_permutevar8x32_ps(lo_levels, qi);
      const __m256 l1 = _mm256_permutevar8x32_ps(hi_levels, qi);
      const __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(qi, _mm256_set1_epi32(7)));
      v = _mm256_mul_ps(dv, _mm256_blendv_ps(l0, l1, upper));
    }
    _mm256_storeu_ps(out + 8 * p, v);
  }
}

template <int DT, int G>
void dequant_g(const void* row, int64_t k0, int64_t kc, float* out) {
  using B = Geo<DT, G>;
  const uint8_t* p = static_cast<const uint8_t*>(row) + (k0 / G) * B::kBytes;
  for (int64_t b0 = 0; b0 < kc; b0 += G, p += B::kBytes) {
    const float d = half_at(p);
    const float m = DT == kQ4A ? half_at(p + 2) : 0.0f;
    for (int t = 0; t < B::kPer; ++t) {
      const int64_t c = b0 + 32 * t;
      if (c >= kc) break;
      const __m256i q = nibbles32<G>(p + B::kQs, t);
      if (c + 32 <= kc) {
        decode32<DT>(q, d, m, out + c);
      } else {
        float tmp[32];
        decode32<DT>(q, d, m, tmp);
        for (int64_t i = 0; i < kc - c; ++i) out[c + i] = tmp[i];
      }
    }
  }
}

template <int DT>
void dequant_grouped(const void* row, int group, int64_t k0, int64_t kc, float* out) {
  switch (group) {
    case 32:
      return dequant_g<DT, 32>(row, k0, kc, out);
    case 64:
      return dequant_g<DT, 64>(row, k0, kc, out);
    default:
      return dequant_g<DT, 128>(row, k0, kc, out);
  }
}

}  // namespace

// Panel packing of quantized rows: each group of 8 rows is dequantized into a row-major scratch, then transposed
// 8x8 at a time into panel order (the fp32 micro-kernel's layout).
void pack_dequantized_avx2(DequantRowFn dequant, const void* w, size_t row_bytes, int group, int nr, int width,
                           int64_t k0, int64_t kc, float* panel) {
  constexpr int64_t kChunk = 256;
  alignas(32) float buf[8][kChunk];
  for (int g = 0; g < width; g += 8) {
    const int valid = nr - g < 0 ? 0 : (nr - g < 8 ? nr - g : 8);
    for (int64_t c0 = 0; c0 < kc; c0 += kChunk) {
      const int64_t n = min64(kChunk, kc - c0);
      for (int r = 0; r < 8; ++r) {
        if (r < valid) {
          dequant(static_cast<const uint8_t*>(w) + static_cast<size_t>(g + r) * row_bytes, group, k0 + c0, n, buf[r]);
        } else {
          for (int64_t k = 0; k < n; ++k) buf[r][k] = 0.0f;
        }
      }
      float* dst = panel + c0 * kGemmNR + g;
      int64_t k = 0;
      for (; k + 8 <= n; k += 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = _mm256_load_ps(buf[r] + k);
        transpose8(v);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (k + j) * kGemmNR, v[j]);
      }
      for (; k < n; ++k) {
        for (int r = 0; r < 8; ++r) dst[k * kGemmNR + r] = buf[r][k];
      }
    }
  }
}

namespace {

template <void (*Dequant)(const void*, int, int64_t, int64_t, float*)>
void pack_dequant(const void* w, size_t row_bytes, int group, int nr, int width, int64_t k0, int64_t kc, float* panel) {
  pack_dequantized_avx2(Dequant, w, row_bytes, group, nr, width, k0, kc, panel);
}

// ---- Integer GEMM ----

void expand_act(const BlockQ8Act* x, int64_t nblocks, int16_t* x16, float* xs) {
  for (int64_t b = 0; b < nblocks; ++b) {
    xs[b] = x[b].scale;
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x16 + 32 * b), _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x16 + 32 * b + 16),
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1)));
  }
}

// Panel of int16 pairs: viewed as 32-bit units, unit (k/2) * kGemmNR + j holds the pair (k, k+1) of output j.
// Sixteen columns of a row widen to eight such units; eight rows of them transpose 8x8 like fp32 lanes.
void pack_i8(const void* w, size_t row_bytes, int64_t cols, int nr, int width, int64_t k0, int64_t kc, int16_t* panel,
             float* scales) {
  for (int g = 0; g < width; g += 8) {
    const int valid = nr - g < 0 ? 0 : (nr - g < 8 ? nr - g : 8);
    const int8_t* src[8];
    for (int r = 0; r < 8; ++r) {
      const auto* row = static_cast<const uint8_t*>(w) + static_cast<size_t>(g + r) * row_bytes;
      src[r] = r < valid ? reinterpret_cast<const int8_t*>(row) + 4 : nullptr;
      scales[g + r] = r < valid ? float_at(row) : 0.0f;
    }
    for (int64_t k = 0; k < kc; k += 16) {
      __m256 v[8];
      const int64_t c = k0 + k;
      for (int r = 0; r < 8; ++r) {
        __m128i q;
        if (src[r] == nullptr || c >= cols) {
          q = _mm_setzero_si128();
        } else if (c + 16 <= cols) {
          q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src[r] + c));
        } else {
          alignas(16) int8_t tail[16] = {};
          for (int64_t i = 0; i < cols - c; ++i) tail[i] = src[r][c + i];
          q = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
        }
        v[r] = _mm256_castsi256_ps(_mm256_cvtepi8_epi16(q));
      }
      transpose8(v);
      int16_t* dst = panel + (k / 2) * 2 * kGemmNR + 2 * g;
      for (int u = 0; u < 8; ++u) _mm256_storeu_ps(reinterpret_cast<float*>(dst + u * 2 * kGemmNR), v[u]);
    }
  }
}

// MR rows of widened activations times the int16 panel. Per pair of k: two panel loads, MR broadcasts of an
// activation pair, 2*MR vpmaddwd + vpaddd into int32 accumulators; after each 32 values the integer sums are
// scaled by the rows' activation scales and added into C (kept in memory: the tile is in L1).
//
// The full-height step is inline assembly: GCC's register allocation of the intrinsic version (12 accumulators,
// two panel vectors, a broadcast and a product temporary: all 16 ymm registers) spilled accumulators on every
// step and ran at 70% of this speed.
template <int MR>
inline void i8_step(const int16_t* x, int64_t ldx, const int16_t* p, __m256i (&c)[2 * MR]) {
  for (int r = 0; r < MR; ++r) {
    int32_t pair;
    __builtin_memcpy(&pair, x + r * ldx, 4);
    const __m256i xv = _mm256_set1_epi32(pair);
    c[2 * r] =
        _mm256_add_epi32(c[2 * r], _mm256_madd_epi16(xv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
    c[2 * r + 1] = _mm256_add_epi32(
        c[2 * r + 1], _mm256_madd_epi16(xv, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16))));
  }
}

// 16 steps (32 values of k) for six rows, accumulating into c (row r in c[2r], c[2r+1]); rows are ldx apart.
// The loop lives inside the asm so the twelve accumulators stay in registers throughout (GCC allows 30 operands:
// 12 read-write accumulators count twice, so the row addresses are formed from one base and the stride).
inline void i8_block6(const int16_t* x, int64_t ldx, const int16_t* p, __m256i (&c)[12]) {
  static_assert(2 * kGemmNR * sizeof(int16_t) == 64, "panel step of the asm");
  const int64_t ldx2 = ldx * 2;  // bytes
  const char* x0 = reinterpret_cast<const char*>(x);
  const char* pp = reinterpret_cast<const char*>(p);
  const char* pend = pp + 16 * 64;
  __m256i c00 = c[0], c01 = c[1], c10 = c[2], c11 = c[3], c20 = c[4], c21 = c[5];
  __m256i c30 = c[6], c31 = c[7], c40 = c[8], c41 = c[9], c50 = c[10], c51 = c[11];
  asm("lea (%[ld],%[ld],2), %%r11\n\t"
      "lea (%[ld],%[ld],4), %%r10\n\t"
      "1:\n\t"
      "vmovdqu (%[p]), %%ymm12\n\t"
      "vmovdqu 32(%[p]), %%ymm13\n\t"
      "vpbroadcastd (%[x0]), %%ymm14\n\t"
      "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c00], %[c00]\n\t"
      "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c01], %[c01]\n\t"
      "vpbroadcastd (%[x0],%[ld]), %%ymm14\n\t"
      "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c10], %[c10]\n\t"
      "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c11], %[c11]\n\t"
      "vpbroadcastd (%[x0],%[ld],2), %%ymm14\n\t"
      "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c20], %[c20]\n\t"
      "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c21], %[c21]\n\t"
      "vpbroadcastd (%[x0],%%r11), %%ymm14\n\t"
      "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c30], %[c30]\n\t"
      "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c31], %[c31]\n\t"
      "vpbroadcastd (%[x0],%[ld],4), %%ymm14\n\t"
      "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c40], %[c40]\n\t"
      "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c41], %[c41]\n\t"
      "vpbroadcastd (%[x0],%%r10), %%ymm14\n\t"
      "vpmaddwd %%ymm12, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c50], %[c50]\n\t"
      "vpmaddwd %%ymm13, %%ymm14, %%ymm15\n\t"
      "vpaddd %%ymm15, %[c51], %[c51]\n\t"
      "add $64, %[p]\n\t"
      "add $4, %[x0]\n\t"
      "cmp %[pend], %[p]\n\t"
      "jne 1b"
      : [c00] "+x"(c00), [c01] "+x"(c01), [c10] "+x"(c10), [c11] "+x"(c11), [c20] "+x"(c20), [c21] "+x"(c21),
        [c30] "+x"(c30), [c31] "+x"(c31), [c40] "+x"(c40), [c41] "+x"(c41), [c50] "+x"(c50), [c51] "+x"(c51),
        [p] "+r"(pp), [x0] "+r"(x0)
      : [ld] "r"(ldx2), [pend] "r"(pend)
      : "r10", "r11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
  c[0] = c00, c[1] = c01, c[2] = c10, c[3] = c11, c[4] = c20, c[5] = c21;
  c[6] = c30, c[7] = c31, c[8] = c40, c[9] = c41, c[10] = c50, c[11] = c51;
}

template <int MR>
void gemm_i8_tile_mr(const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs, const int16_t* panel, int64_t kc,
                     bool first, float* c, int64_t ldc) {
  for (int64_t b = 0; b < kc / 32; ++b) {
    __m256i acc[2 * MR];
    for (auto& a : acc) a = _mm256_setzero_si256();
    const int16_t* p = panel + b * 32 * kGemmNR;
    const int16_t* xb = x + 32 * b;
    if constexpr (MR == 6) {
      i8_block6(xb, ldx, p, acc);
    } else {
      for (int kp = 0; kp < 16; ++kp) i8_step<MR>(xb + 2 * kp, ldx, p + kp * 2 * kGemmNR, acc);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256 s = _mm256_set1_ps(xs[r * ldxs + b]);
      float* cr = c + r * ldc;
      const __m256 lo = _mm256_cvtepi32_ps(acc[2 * r]), hi = _mm256_cvtepi32_ps(acc[2 * r + 1]);
      if (first && b == 0) {
        _mm256_storeu_ps(cr, _mm256_mul_ps(lo, s));
        _mm256_storeu_ps(cr + 8, _mm256_mul_ps(hi, s));
      } else {
        _mm256_storeu_ps(cr, _mm256_fmadd_ps(lo, s, _mm256_loadu_ps(cr)));
        _mm256_storeu_ps(cr + 8, _mm256_fmadd_ps(hi, s, _mm256_loadu_ps(cr + 8)));
      }
    }
  }
}

void gemm_i8_tile(const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs, int mr, const int16_t* panel,
                  int64_t kc, bool first, float* c, int64_t ldc) {
  static_assert(kGemmI8MR <= 6 && kGemmNR == 16);
  switch (mr) {
    case 6:
      return gemm_i8_tile_mr<6>(x, ldx, xs, ldxs, panel, kc, first, c, ldc);
    case 5:
      return gemm_i8_tile_mr<5>(x, ldx, xs, ldxs, panel, kc, first, c, ldc);
    case 4:
      return gemm_i8_tile_mr<4>(x, ldx, xs, ldxs, panel, kc, first, c, ldc);
    case 3:
      return gemm_i8_tile_mr<3>(x, ldx, xs, ldxs, panel, kc, first, c, ldc);
    case 2:
      return gemm_i8_tile_mr<2>(x, ldx, xs, ldxs, panel, kc, first, c, ldc);
    case 1:
      return gemm_i8_tile_mr<1>(x, ldx, xs, ldxs, panel, kc, first, c, ldc);
    default:
      return;
  }
}

}  // namespace

void add_quant_avx2_kernels(Kernels& k) {
  k.dot4[kQ8] = dot4_q8;
  k.dot1[kQ8] = dot1_q8;
  k.qdot4[kQ8] = qdot4_q8;
  k.qdot1[kQ8] = qdot1_q8;
  k.qdot4[kQ4] = qdot4_grouped<kQ4>;
  k.qdot1[kQ4] = qdot1_grouped<kQ4>;
  k.qdot4[kQ4A] = qdot4_grouped<kQ4A>;
  k.qdot1[kQ4A] = qdot1_grouped<kQ4A>;
  k.qdot4[kNF4] = qdot4_grouped<kNF4>;
  k.qdot8[kQ4] = qdot8_grouped<kQ4>;
  k.qdot8[kQ4A] = qdot8_grouped<kQ4A>;
  k.qdot_panel[kQ4] = qdot_panel<kQ4>;
  k.qdot_panel[kQ4A] = qdot_panel<kQ4A>;
  k.qdot_panel4[kQ4] = qdot_panels<kQ4, 4>;
  k.qdot_panel4[kQ4A] = qdot_panels<kQ4A, 4>;
  k.pack_panel[kQ4] = pack_panel<kQ4>;
  k.pack_panel[kQ4A] = pack_panel<kQ4A>;
  k.qdot1[kNF4] = qdot1_grouped<kNF4>;
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
