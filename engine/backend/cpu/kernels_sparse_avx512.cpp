// AVX-512 decode kernels for the 2:4 sparse weight types (S24Q8, S24Q4; layout in quant/blocks.h). Compiled with the
// AVX-512 flags like kernels_avx512.cpp, entered only through avx512_kernels() (after the cpuid check), and calling
// no inline function or template of a shared header.
//
// The arithmetic is kernels_sparse_avx2.cpp's, two weight rows per zmm: lanes 0-7 hold row j's eight int32 sums of
// a 64-input block, lanes 8-15 row j+1's. Each 256-bit half builds its shuffle controls from its own row's index
// bytes, gathers the kept slots' activations with the same in-lane vpshufb, and forms the same integer sums, now
// with vpdpbusd (unsigned bytes times signed bytes: int8 weights meet activations made unsigned by adding 128, the
// 128 * sum(w) that adds taken off with a second vpdpbusd; int4 codes are unsigned already). Integer sums are exact,
// and each half converts and accumulates them exactly as the AVX2 kernel does, so every output is bit for bit the AVX2
// kernel's. Per pair of rows this is about the instruction count the AVX2 kernel spends on one row: 2:4 decode is
// compute-bound on a core that streams 36 GB/s.
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
static_assert(sizeof(quant::BlockS24Q8) == 40 && sizeof(quant::BlockS24Q4) == 26);

constexpr int kS24Q8 = static_cast<int>(DType::S24Q8);
constexpr int kS24Q4 = static_cast<int>(DType::S24Q4);
constexpr int64_t kPrefetchBytes = 768;  // the AVX2 kernel's distance

template <int DT>
constexpr int64_t kBlockBytes = DT == kS24Q8 ? 40 : 26;
template <int DT>
constexpr int64_t kIdxOffset = DT == kS24Q8 ? 32 : 18;

inline float float_at(const void* p) {
  float f;
  __builtin_memcpy(&f, p, 4);
  return f;
}
inline long long i64_at(const uint8_t* p) {
  long long v;
  __builtin_memcpy(&v, p, 8);
  return v;
}
inline float half_at(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// kernels_sparse_avx2.cpp's hsum, so each row's total rounds the same way.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 16-byte pattern p repeated in all four 128-bit lanes.
inline __m512i lanes4(const __m128i p) {
  return _mm512_broadcast_i32x4(p);
}

// The AVX2 kernel's slot_offsets for row a (lanes 0-1) and row b (lanes 2-3) at once: within each 128-bit lane,
// byte q = 8 H + 2 j + e belongs to group nibble byte 4 H + j (even lanes: low nibbles, odd lanes: high nibbles);
// its field is bits 2e..2e+1 of that nibble; its activation sits at 4 j + field in the 16-byte lane of activation
// block H.
inline __m512i slot_offsets2(const uint8_t* a, const uint8_t* b) {
  const __m512i rep = lanes4(_mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
  const __m512i field = lanes4(_mm_setr_epi8(3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12));
  const __m512i lut = lanes4(_mm_setr_epi8(0, 1, 2, 3, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0));
  const __m512i base = lanes4(_mm_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12));
  // Odd lanes read the high nibbles: their copy of the index bytes shifted right by 4 (bits moving in from the
  // next byte land in bits 4..7, which the field mask clears).
  const __m512i idx = _mm512_mask_set1_epi64(_mm512_set1_epi64(i64_at(a)), 0xF0, i64_at(b));
  const __m512i v = _mm512_srlv_epi64(idx, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
  const __m512i masked = _mm512_and_si512(_mm512_shuffle_epi8(v, rep), field);
  return _mm512_add_epi8(_mm512_shuffle_epi8(lut, masked), base);
}

// Two rows' int32 sums (lanes 0-7: row a, 8-15: row b) of a block's 32 kept weights against the gathered
// activations xa. S24Q8: signed weights against unsigned activations u = x + 128, sum(u w) - sum(128 w). S24Q4:
// unsigned codes q against the signed activations, sum((q - 8) x) = sum(q x) - sum(8 x).
template <int DT>
inline __m512i block_dot2(const uint8_t* a, const uint8_t* b, __m512i xa) {
  const __m512i zero = _mm512_setzero_si512();
  if constexpr (DT == kS24Q8) {
    const __m512i w =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
    const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, xa, w), _mm512_dpbusd_epi32(zero, c128, w));
  } else {
    // Each row's 16 code bytes in both of its lanes, the odd lane shifted down a nibble: lane L holds slots 16 L ...
    const __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 2)))),
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))), 1);
    const __m512i q =
        _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0f));
    return _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, q, xa), _mm512_dpbusd_epi32(zero, _mm512_set1_epi8(8), xa));
  }
}

// R rows (1, or a multiple of 2) against the activation blocks. R = 1 runs the row in both halves.
template <int DT, int R>
void qdot_s24(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  constexpr int P = (R + 1) / 2;  // row pairs
  constexpr int64_t bb = kBlockBytes<DT>;
  const uint8_t* r[2 * P];
  for (int j = 0; j < 2 * P; ++j) r[j] = static_cast<const uint8_t*>(rows[j < R ? j : 0]) + (DT == kS24Q8 ? 4 : 0);
  __m512 acc[P];
  for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
  const int64_t act_blocks = (cols + 31) / 32;
  const int64_t blocks = (cols + 63) / 64;
  const int64_t row_bytes = blocks * bb;
  // S24Q8 wants unsigned activations (x + 128: a missing block then reads 128, i.e. x = 0); S24Q4 signed ones.
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(DT == kS24Q8 ? 0x80 : 0));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t off = b * bb;
    // A prefetch per block and row, so every cache line gets one (blocks are 40 or 26 bytes).
    const int64_t pc = off + kPrefetchBytes;
#pragma GCC unroll 8
    for (int j = 0; j < R; ++j) {
      if (pc < row_bytes) {
        _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
      } else if (next != nullptr) {
        _mm_prefetch(static_cast<const char*>(next[j]) + (pc - row_bytes), _MM_HINT_T0);
      }
    }
    const bool second = 2 * b + 1 < act_blocks;  // a ragged row may end inside the first activation block
    // A missing second activation block is x = 0 with scale 0.
    const __m256i x0 = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[2 * b].q)), flip);
    const __m256i x1 =
        second ? _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[2 * b + 1].q)), flip) : flip;
    const __m512i a0 = _mm512_broadcast_i64x4(x0), a1 = _mm512_broadcast_i64x4(x1);
    // Dwords 2-3 of every 128-bit lane hold activation block 2b + 1's sums.
    const __m512 s = _mm512_mask_blend_ps(0xCCCC, _mm512_set1_ps(x[2 * b].scale),
                                          _mm512_set1_ps(second ? x[2 * b + 1].scale : 0.0f));
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const uint8_t* ba = r[2 * p] + off;
      const uint8_t* bn = r[2 * p + 1] + off;
      const __m512i off2 = slot_offsets2(ba + kIdxOffset<DT>, bn + kIdxOffset<DT>);
      const __m512i u = _mm512_mask_blend_epi32(0xCCCC, _mm512_shuffle_epi8(a0, off2), _mm512_shuffle_epi8(a1, off2));
      const __m512 sums = _mm512_cvtepi32_ps(block_dot2<DT>(ba, bn, u));
      if constexpr (DT == kS24Q8) {
        acc[p] = _mm512_fmadd_ps(sums, s, acc[p]);
      } else {
        const __m512 d = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half_at(ba)), _mm512_set1_ps(half_at(bn)));
        acc[p] = _mm512_fmadd_ps(sums, _mm512_mul_ps(s, d), acc[p]);
      }
    }
  }
  for (int j = 0; j < R; ++j) {
    const __m512 a = acc[j / 2];
    const __m256 half =
        j % 2 == 0 ? _mm512_castps512_ps256(a) : _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    out[j] = (DT == kS24Q8 ? float_at(rows[j]) : 1.0f) * hsum(half);
  }
}

template <int DT>
void qdot8_s24(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int /*group*/,
               float* out) {
  qdot_s24<DT, 8>(x, rows, next, cols, out);
}
template <int DT>
void qdot4_s24(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, int /*group*/,
               float* out) {
  qdot_s24<DT, 4>(x, rows, next, cols, out);
}
template <int DT>
float qdot1_s24(const BlockQ8Act* x, const void* row, int64_t cols, int /*group*/) {
  float out;
  const void* rows[1] = {row};
  qdot_s24<DT, 1>(x, rows, nullptr, cols, &out);
  return out;
}

}  // namespace

void add_sparse_avx512_kernels(Kernels& k) {
  k.qdot1[kS24Q8] = qdot1_s24<kS24Q8>;
  k.qdot1[kS24Q4] = qdot1_s24<kS24Q4>;
  k.qdot4[kS24Q8] = qdot4_s24<kS24Q8>;
  k.qdot4[kS24Q4] = qdot4_s24<kS24Q4>;
  k.qdot8[kS24Q8] = qdot8_s24<kS24Q8>;
  k.qdot8[kS24Q4] = qdot8_s24<kS24Q4>;
}

}  // namespace tessera::cpu
