// AVX2 decode kernels for the 2:4 sparse weight types (DType::S24Q8, DType::S24Q4; layout in quant/blocks.h).
// Like kernels_quant_avx2.cpp this translation unit is compiled with -mavx2 -mfma -mf16c, is only entered through
// avx2_kernels() (after the cpuid check), and calls no inline function or template of a shared header.
//
// Per 64-input block and row: the 8 index bytes become 32 byte offsets in six instructions (broadcast, a per-lane
// shift that brings lane 1's nibbles down, a shuffle that copies each group's nibble to its two slots, a mask of
// the slot's 2-bit field, a 16-entry table lookup that maps the field to its position, plus the group's base); two
// vpshufb then gather the activations of the kept slots from the two int8 activation blocks (each lane of an activation
// register holds 16 consecutive inputs, and the slot order puts every lane-half's kept values next to the inputs they
// read), and one vpmaddubsw / vpmaddwd pair forms the integer sums. Only the stored bytes (kept values and positions)
// are read from memory.
//
// Prefill (the dequantize-then-fp32-GEMM path) and embedding expand each 64-input block to 64 floats in registers
// and a table-driven scatter of the 32 kept values, then pack panels like the dense quantized types.
#include <immintrin.h>

#include <cstdint>

#include "engine/backend/cpu/kernels.h"

namespace tessera::cpu {

namespace {

using quant::BlockQ8Act;
using quant::kSparse24Block;
using quant::kSparse24Kept;
static_assert(sizeof(quant::BlockS24Q8) == 40 && sizeof(quant::BlockS24Q4) == 26);

constexpr int kS24Q8 = static_cast<int>(DType::S24Q8);
constexpr int kS24Q4 = static_cast<int>(DType::S24Q4);
constexpr int64_t kPrefetchBytes = 768;

inline float float_at(const void* p) {
  float f;
  __builtin_memcpy(&f, p, 4);
  return f;
}
inline uint64_t u64_at(const uint8_t* p) {
  uint64_t v;
  __builtin_memcpy(&v, p, 8);
  return v;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Signed int8 weights w against int8 activations a: 8 int32 sums of 4 products each.
inline __m256i dot_i8(__m256i w, __m256i a) {
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// The shuffle controls of the kept slots' activations, from a block's 8 index bytes at p. Within each lane, byte
// q = 8 H + 2 j + e belongs to group nibble byte 4 H + j (lane 0: low nibbles, lane 1: high nibbles); its field is
// bits 2e..2e+1 of that nibble; its activation sits at 4 j + field in the 16-byte lane of activation block H.
inline __m256i slot_offsets(const uint8_t* p) {
  const __m256i rep = _mm256_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,  //
                                       0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m256i field = _mm256_setr_epi8(3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12,  //
                                         3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12, 3, 12);
  // A masked field is i (e = 0) or 4 i (e = 1); both map to i (0 is 0 either way).
  const __m256i lut = _mm256_setr_epi8(0, 1, 2, 3, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0,  //
                                       0, 1, 2, 3, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
  const __m256i base = _mm256_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12,  //
                                        0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12);
  // Lane 1 reads the high nibbles: shift its copy of the index bytes right by 4. Bits that move in from the next
  // byte land in bits 4..7, which the field mask clears.
  const __m256i v =
      _mm256_srlv_epi64(_mm256_set1_epi64x(static_cast<long long>(u64_at(p))), _mm256_setr_epi64x(0, 0, 4, 4));
  const __m256i masked = _mm256_and_si256(_mm256_shuffle_epi8(v, rep), field);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, masked), base);
}

// The activations of the 32 kept slots: lane-half H of the result comes from activation block H (a0, a1).
inline __m256i gather_act(__m256i a0, __m256i a1, __m256i off) {
  return _mm256_blend_epi32(_mm256_shuffle_epi8(a0, off), _mm256_shuffle_epi8(a1, off), 0xCC);
}

// Integer sums (8 lanes of 4 products) of a block's 32 kept weights against the gathered activations xa.
// S24Q8: signed int8 weights (the sign moves onto the activations). S24Q4: the 16 code bytes are broadcast to both
// lanes and lane 1 shifted down a nibble, so lane L holds slots 16 L ..; sum((q - 8) x) = sum(q x) - sum(8 x).
template <int DT>
inline __m256i block_dot(const uint8_t* blk, __m256i xa) {
  if constexpr (DT == kS24Q8) {
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));
    return dot_i8(w, xa);
  } else {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
    const __m256i q = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
    const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, xa), _mm256_maddubs_epi16(_mm256_set1_epi8(8), xa));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
  }
}

// A block's fp16 scale broadcast to 8 floats.
inline __m256 block_scale(const uint8_t* blk) {
  uint16_t h;
  __builtin_memcpy(&h, blk, 2);
  return _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(h)));
}

template <int DT>
constexpr int64_t kBlockBytes = DT == kS24Q8 ? 40 : 26;
template <int DT>
constexpr int64_t kIdxOffset = DT == kS24Q8 ? 32 : 18;

template <int DT, int R>
void qdot_s24(const BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  constexpr int64_t bb = kBlockBytes<DT>;
  const uint8_t* r[R];
  for (int j = 0; j < R; ++j) r[j] = static_cast<const uint8_t*>(rows[j]) + (DT == kS24Q8 ? 4 : 0);
  __m256 acc[R];
  for (int j = 0; j < R; ++j) acc[j] = _mm256_setzero_ps();
  const int64_t act_blocks = (cols + 31) / 32;
  const int64_t blocks = (cols + 63) / 64;
  const int64_t row_bytes = blocks * bb;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t off = b * bb;
    // A prefetch per block, so every cache line gets one (blocks are 40 or 26 bytes); prefetching every other
    // 40-byte block left lines unfetched and made the int8 kernel 40% slower.
    const int64_t pc = off + kPrefetchBytes;
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) {
      if (pc < row_bytes) {
        _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
      } else if (next != nullptr) {
        _mm_prefetch(static_cast<const char*>(next[j]) + (pc - row_bytes), _MM_HINT_T0);
      }
    }
    const bool second = 2 * b + 1 < act_blocks;  // a ragged row may end inside the first activation block
    const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[2 * b].q));
    const __m256i a1 =
        second ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[2 * b + 1].q)) : _mm256_setzero_si256();
    const __m256 s =
        _mm256_blend_ps(_mm256_set1_ps(x[2 * b].scale), _mm256_set1_ps(second ? x[2 * b + 1].scale : 0.0f), 0xCC);
    // Unrolled so the accumulators stay in registers (a rolled loop keeps them on the stack).
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) {
      const uint8_t* blk = r[j] + off;
      const __m256i xa = gather_act(a0, a1, slot_offsets(blk + kIdxOffset<DT>));
      const __m256 sums = _mm256_cvtepi32_ps(block_dot<DT>(blk, xa));
      if constexpr (DT == kS24Q8) {
        acc[j] = _mm256_fmadd_ps(sums, s, acc[j]);
      } else {
        acc[j] = _mm256_fmadd_ps(sums, _mm256_mul_ps(s, block_scale(blk)), acc[j]);
      }
    }
  }
  for (int j = 0; j < R; ++j) out[j] = (DT == kS24Q8 ? float_at(rows[j]) : 1.0f) * hsum(acc[j]);
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

// ---- Prefill: dequantize for the fp32 GEMM ----

// For each index byte k and half h (0: low nibble, 1: high): the group the nibble describes and the slots of its two
// kept values (quant/blocks.h).
struct NibbleTarget {
  int group;
  int slot0, slot1;
};
constexpr NibbleTarget nibble_target(int k, int h) {
  const int g = h == 0 ? quant::kSparse24LoGroup[k] : quant::kSparse24HiGroup[k];
  // Slot p = 16 L + 8 H + 2 j + e holds the e-th kept value of group g = 8 H + 4 L + j.
  const int hh = g / 8, l = (g / 4) % 2, j = g % 4;
  return {g, 16 * l + 8 * hh + 2 * j, 16 * l + 8 * hh + 2 * j + 1};
}
constexpr NibbleTarget kNibbleTargets[8][2] = {
    {nibble_target(0, 0), nibble_target(0, 1)}, {nibble_target(1, 0), nibble_target(1, 1)},
    {nibble_target(2, 0), nibble_target(2, 1)}, {nibble_target(3, 0), nibble_target(3, 1)},
    {nibble_target(4, 0), nibble_target(4, 1)}, {nibble_target(5, 0), nibble_target(5, 1)},
    {nibble_target(6, 0), nibble_target(6, 1)}, {nibble_target(7, 0), nibble_target(7, 1)}};

// Block b of a row as 64 floats (zeros where pruned): the 32 kept values are converted in registers (in slot
// order) and scattered to their positions.
template <int DT>
void expand_block(const void* row, int64_t b, float* out) {
  const auto* p = static_cast<const uint8_t*>(row);
  alignas(32) float kept[kSparse24Kept];
  const uint8_t* idx;
  if constexpr (DT == kS24Q8) {
    const uint8_t* blk = p + 4 + b * 40;  // BlockS24Q8: 32 int8 values, 8 index bytes
    const __m256 d = _mm256_set1_ps(float_at(p));
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk));
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_store_ps(kept, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_store_ps(kept + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_store_ps(kept + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_store_ps(kept + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
    idx = blk + 32;
  } else {
    const uint8_t* blk = p + b * 26;  // BlockS24Q4: fp16 scale, 16 bytes of nibbles, 8 index bytes
    uint16_t h;
    __builtin_memcpy(&h, blk, 2);
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
    const __m128i qs = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i mask = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
    const __m128i lo = _mm_sub_epi8(_mm_and_si128(qs, mask), eight);                     // slots 0..15
    const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), mask), eight);  // slots 16..31
    _mm256_store_ps(kept, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_store_ps(kept + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_store_ps(kept + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_store_ps(kept + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
    idx = blk + 18;
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < kSparse24Block; i += 8) _mm256_storeu_ps(out + i, zero);
  for (int k = 0; k < 8; ++k) {
    const int nibs[2] = {idx[k] & 0x0f, idx[k] >> 4};
    for (int h = 0; h < 2; ++h) {
      const NibbleTarget& t = kNibbleTargets[k][h];
      out[4 * t.group + (nibs[h] & 3)] = kept[t.slot0];
      out[4 * t.group + (nibs[h] >> 2)] = kept[t.slot1];
    }
  }
}

// out[i] = value k0 + i of the row for i < kc; k0 is a multiple of 64 (the GEMM's k blocks are).
template <int DT>
void dequant_s24(const void* row, int /*group*/, int64_t k0, int64_t kc, float* out) {
  alignas(32) float tmp[kSparse24Block];
  for (int64_t b = k0 / kSparse24Block; b * kSparse24Block < k0 + kc; ++b) {
    const int64_t c0 = b * kSparse24Block - k0;
    if (c0 + kSparse24Block <= kc) {
      expand_block<DT>(row, b, out + c0);
    } else {  // the ragged end of the range
      expand_block<DT>(row, b, tmp);
      for (int64_t c = c0; c < kc; ++c) out[c] = tmp[c - c0];
    }
  }
}

template <int DT>
void pack_s24(const void* w, size_t row_bytes, int group, int nr, int width, int64_t k0, int64_t kc, float* panel) {
  pack_dequantized_avx2(dequant_s24<DT>, w, row_bytes, group, nr, width, k0, kc, panel);
}

}  // namespace

void add_sparse_avx2_kernels(Kernels& k) {
  add_sparse_portable_kernels(k);
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
