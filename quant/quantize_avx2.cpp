// AVX2 + F16C row quantizers (round to nearest, and Q4's and NF4's importance-weighted scale searches), byte for byte
// the reference ones in quant_traits.cpp (see quantize_simd.h). Built with -mavx2 -mf16c and without -mfma, so no
// multiply-add is ever fused and every float operation rounds as the reference's does. Like the CPU backend's AVX2
// kernels it calls no inline function or template from a shared header (std::min, dtype.h's converters...): the linker
// could keep the AVX copy of such a function for the whole program. Everything it uses lives in the anonymous
// namespace; the headers it includes contribute declarations and constant data only.
//
// Why the results are the reference's: maxima, minima, fp16 conversions (F16C, round to nearest even, subnormals
// kept) and the float products and quotients are exact or rounded once, as in the reference; vcvtps2dq rounds to
// nearest even as the reference's round_int does (both under the default MXCSR). The one judgment the reference
// makes in double precision is the choice among candidate scales by (weighted) squared error over the block; here
// Q4's sums are float and NF4's double, summed in another order, and decide only when clearly apart (clearly_ordered,
// clearly_ordered_double); closer calls go to the reference.
#include <immintrin.h>

#include <cstdint>

#include "quant/blocks.h"
#include "quant/quantize_simd.h"

namespace tessera::quant::avx2 {

namespace {

// Blocks with a larger magnitude go to the reference: their fp16 scales would sit near the format's range limit.
constexpr float kLargestFastValue = 1.0e4f;
constexpr float kFloatMax = 3.40282347e38f;

inline float abs_f(float v) {
  return __builtin_fabsf(v);
}

inline __m256 abs_ps(__m256 v) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

inline float hmin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_movehdup_ps(m)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// fp16 bits of x rounded to nearest even, and back: what dtype.h's f32_to_f16 / f16_to_f32 compute.
inline uint16_t f16_bits(float x) {
  return static_cast<uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT));
}
inline float f16_value(uint16_t h) {
  return _cvtsh_ss(h);
}
inline float f16_round(float x) {
  return f16_value(f16_bits(x));
}
// The reference's fp16_round_down / fp16_round_up.
inline float f16_round_down(float x) {
  uint16_t h = f16_bits(x);
  if (f16_value(h) > x) {
    if (h == 0x0000u) {
      h = 0x8001u;
    } else if (h & 0x8000u) {
      ++h;
    } else {
      --h;
    }
  }
  return f16_value(h);
}
inline float f16_round_up(float x) {
  uint16_t h = f16_bits(x);
  if (f16_value(h) < x) ++h;
  return f16_value(h);
}

inline void store_u16(uint8_t* p, uint16_t v) {
  __builtin_memcpy(p, &v, 2);
}

// Codes 0..15 clamped from a rounded float.
inline __m256i code4(__m256 v, __m256i offset) {
  const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(v), offset);
  return _mm256_min_epi32(_mm256_max_epi32(q, _mm256_setzero_si256()), _mm256_set1_epi32(15));
}

// The reference's nibble packing for a full block of `chunks` x 8 codes (int32 lanes): byte j holds code j in its
// low nibble and code j + group / 2 in its high one.
template <int chunks>
inline void pack_nibbles(const __m256i* q, uint8_t* out) {
  constexpr int half = chunks / 2;
  for (int c = 0; c < half; c += 2) {
    const __m256i lo = _mm256_or_si256(q[c], _mm256_slli_epi32(q[c + half], 4));
    const __m256i hi = _mm256_or_si256(q[c + 1], _mm256_slli_epi32(q[c + 1 + half], 4));
    // Two lanes of four uint16 each per input, then bytes in order.
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 8 * c),
                     _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
  }
}

// Loads a full block (chunks x 8 values), returning false when a value is not finite or exceeds `limit` in
// magnitude. amax: the largest magnitude.
template <int chunks>
inline bool load_block(const float* x, float limit, __m256* xv, float* amax) {
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  const __m256 lim = _mm256_set1_ps(limit);
  for (int c = 0; c < chunks; ++c) {
    xv[c] = _mm256_loadu_ps(x + 8 * c);
    const __m256 a = abs_ps(xv[c]);
    vmax = _mm256_max_ps(vmax, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, lim, _CMP_NLE_UQ));  // > limit, or NaN
  }
  *amax = hmax(vmax);
  return _mm256_movemask_ps(bad) == 0;
}

// ---- Q4: two candidate scales, the one with the smaller squared error ----

// Whether two float error sums order as the reference's double sums do. Each term w * (x - d q)^2 is rounded at most
// four times (d q is exact: an fp16 scale times a 4-bit code), each of the eight lanes adds at most 16 non-negative
// terms and the horizontal sum three more levels, so a sum is within (16 + 6) float ulps, 1.3e-6 relative, of the
// exact one (the double sums are within 1e-14). Apart by more than 1e-5 relative, plus 1e-30 for terms lost to
// underflow, and neither overflowed, the two orders agree.
inline bool clearly_ordered(float a, float b) {
  return a <= kFloatMax && b <= kFloatMax && abs_f(a - b) > 1e-5f * (a + b) + 1e-30f;
}

// Index of the first smallest of n candidate errors, as the reference's strict < keeps it, or -1 when some candidate
// with a different scale is not clearly worse (apart: the test for two sums of this precision). A candidate equal to
// the winner (for Q4, absmax / 7 shrunk by 12.5% is often the q4_0 scale) has the same error in both computations,
// and both keep the earlier one.
template <typename T, typename Apart>
int clear_minimum(const float* cand, const T* err, int n, Apart apart) {
  int best = 0;
  for (int j = 1; j < n; ++j) best = err[j] < err[best] ? j : best;
  for (int j = 0; j < n; ++j) {
    if (cand[j] != cand[best] && !apart(err[best], err[j])) return -1;
  }
  return best;
}

// Loads a block's importance weights; false when one is negative or not finite (the error bounds assume neither).
template <int chunks>
inline bool load_weights(const float* w, __m256* wv) {
  __m256 bad = _mm256_setzero_ps();
  for (int c = 0; c < chunks; ++c) {
    wv[c] = _mm256_loadu_ps(w + 8 * c);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(wv[c], _mm256_setzero_ps(), _CMP_NGE_UQ));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(wv[c], _mm256_set1_ps(kFloatMax), _CMP_NLE_UQ));
  }
  return _mm256_movemask_ps(bad) == 0;
}

// An all-zero Q4 block: scale 0, every code 8 (the value 0).
inline void store_zero_q4(int group, uint8_t* out) {
  store_u16(out, 0);
  __builtin_memset(out + 2, 0x88, static_cast<size_t>(group) / 2);
}

// The round-to-nearest choice of a full Q4 block, as the reference's q4_choose_scale makes it without importance:
// the two candidate scales da (llama.cpp q4_0's, from the first value of largest magnitude) and db (absmax / 7),
// whether db wins, and both candidates' codes. False (nothing decided) when the block must go to the reference:
// a non-finite or too large value, or errors too close to order from float sums.
template <int kGroup>
struct Q4Choice {
  static constexpr int kChunks = kGroup / 8;
  __m256 xv[kChunks];
  __m256i qa[kChunks], qb[kChunks];
  float amax, da, db;
  bool use_b;
};

template <int kGroup>
bool q4_rtn_choice(const float* x, Q4Choice<kGroup>& ch) {
  constexpr int chunks = Q4Choice<kGroup>::kChunks;
  if (!load_block<chunks>(x, kLargestFastValue, ch.xv, &ch.amax)) return false;
  if (ch.amax == 0.0f) return true;
  // The first value of the largest magnitude, with its sign (the reference keeps the first under a strict >); found
  // from one bit mask per 64 values rather than a data-dependent loop exit.
  const __m256 am = _mm256_set1_ps(ch.amax);
  uint64_t hits[(chunks + 7) / 8] = {};
  for (int c = 0; c < chunks; ++c) {
    const auto mask = static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(abs_ps(ch.xv[c]), am, _CMP_EQ_OQ)));
    hits[c / 8] |= mask << (8 * (c % 8));
  }
  int first = 0;
  if constexpr (chunks > 8) first = hits[0] != 0 ? 0 : 64;
  const float maxv = x[first + __builtin_ctzll(hits[first / 64])];
  // Dividing by 8 and multiplying by 1/8 round the same real number, so the product is the reference's quotient.
  ch.da = f16_round(maxv * -0.125f);
  ch.db = f16_round(ch.amax / 7.0f);
  const __m256 ia = _mm256_set1_ps(ch.da != 0.0f ? 1.0f / ch.da : 0.0f);
  const __m256 ib = _mm256_set1_ps(ch.db != 0.0f ? 1.0f / ch.db : 0.0f);
  const __m256 dav = _mm256_set1_ps(ch.da), dbv = _mm256_set1_ps(ch.db);
  const __m256i eight = _mm256_set1_epi32(8);
  __m256 ea = _mm256_setzero_ps(), eb = _mm256_setzero_ps();
  for (int c = 0; c < chunks; ++c) {
    ch.qa[c] = code4(_mm256_mul_ps(ch.xv[c], ia), eight);
    ch.qb[c] = code4(_mm256_mul_ps(ch.xv[c], ib), eight);
    const __m256 ra =
        _mm256_sub_ps(ch.xv[c], _mm256_mul_ps(dav, _mm256_cvtepi32_ps(_mm256_sub_epi32(ch.qa[c], eight))));
    const __m256 rb =
        _mm256_sub_ps(ch.xv[c], _mm256_mul_ps(dbv, _mm256_cvtepi32_ps(_mm256_sub_epi32(ch.qb[c], eight))));
    ea = _mm256_add_ps(ea, _mm256_mul_ps(ra, ra));
    eb = _mm256_add_ps(eb, _mm256_mul_ps(rb, rb));
  }
  const float sa = hsum(ea), sb = hsum(eb);
  if (!clearly_ordered(sa, sb)) return false;
  ch.use_b = sb < sa;
  return true;
}

template <int kGroup>
void q4_block(const float* x, uint8_t* out) {
  Q4Choice<kGroup> ch;
  if (!q4_rtn_choice(x, ch)) return reference::q4_block(x, kGroup, kGroup, nullptr, out);
  if (ch.amax == 0.0f) return store_zero_q4(kGroup, out);
  store_u16(out, f16_bits(ch.use_b ? ch.db : ch.da));
  pack_nibbles<Q4Choice<kGroup>::kChunks>(ch.use_b ? ch.qb : ch.qa, out + 2);
}

// Q4 with importance weights w (>= 0): the reference tries the round-to-nearest scale, then the two candidates shrunk
// by 2.5% steps to 80%, keeping the first with the smallest weighted squared error. Here all 17 errors are float sums;
// the block is decided only when one candidate is clearly below every other, else it goes to the reference.
template <int kGroup>
void q4_block_weighted(const float* x, const float* w, uint8_t* out) {
  constexpr int chunks = Q4Choice<kGroup>::kChunks;
  Q4Choice<kGroup> ch;
  __m256 wv[chunks];
  if (!load_weights<chunks>(w, wv) || !q4_rtn_choice(x, ch)) return reference::q4_block(x, kGroup, kGroup, w, out);
  if (ch.amax == 0.0f) return store_zero_q4(kGroup, out);
  constexpr int kCandidates = 17;
  float cand[kCandidates], err[kCandidates];
  cand[0] = ch.use_b ? ch.db : ch.da;
  for (int k = 1; k <= 8; ++k) {
    const float f = 1.0f - 0.025f * static_cast<float>(k);
    cand[2 * k - 1] = f16_round(ch.da * f);
    cand[2 * k] = f16_round(ch.db * f);
  }
  const __m256i eight = _mm256_set1_epi32(8);
  for (int j = 0; j < kCandidates; ++j) {
    const __m256 inv = _mm256_set1_ps(cand[j] != 0.0f ? 1.0f / cand[j] : 0.0f), dv = _mm256_set1_ps(cand[j]);
    __m256 e = _mm256_setzero_ps();
    for (int c = 0; c < chunks; ++c) {
      const __m256i q = code4(_mm256_mul_ps(ch.xv[c], inv), eight);
      const __m256 r = _mm256_sub_ps(ch.xv[c], _mm256_mul_ps(dv, _mm256_cvtepi32_ps(_mm256_sub_epi32(q, eight))));
      e = _mm256_add_ps(e, _mm256_mul_ps(wv[c], _mm256_mul_ps(r, r)));
    }
    err[j] = hsum(e);
  }
  const int best = clear_minimum(cand, err, kCandidates, clearly_ordered);
  if (best < 0) return reference::q4_block(x, kGroup, kGroup, w, out);
  const __m256 inv = _mm256_set1_ps(cand[best] != 0.0f ? 1.0f / cand[best] : 0.0f);
  __m256i q[chunks];
  for (int c = 0; c < chunks; ++c) q[c] = code4(_mm256_mul_ps(ch.xv[c], inv), eight);
  store_u16(out, f16_bits(cand[best]));
  pack_nibbles<chunks>(q, out + 2);
}

// ---- Q4A: offset m = min rounded down, step d = (max - m) / 15 rounded up ----

template <int kGroup>
void q4a_block(const float* x, uint8_t* out) {
  constexpr int chunks = kGroup / 8;
  __m256 xv[chunks];
  float amax;
  if (!load_block<chunks>(x, kLargestFastValue, xv, &amax)) return reference::q4a_block(x, kGroup, kGroup, out);
  __m256 vlo = _mm256_set1_ps(kLargestFastValue), vhi = _mm256_set1_ps(-kLargestFastValue);
  for (int c = 0; c < chunks; ++c) {
    vlo = _mm256_min_ps(vlo, xv[c]);
    vhi = _mm256_max_ps(vhi, xv[c]);
  }
  const float lo = hmin(vlo), hi = hmax(vhi);
  if (lo == 0.0f) return reference::q4a_block(x, kGroup, kGroup, out);
  const float m = f16_round_down(lo);
  const float d = f16_round_up((hi - m) / 15.0f);
  const __m256 inv = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f), mv = _mm256_set1_ps(m);
  __m256i q[chunks];
  for (int c = 0; c < chunks; ++c) q[c] = code4(_mm256_mul_ps(_mm256_sub_ps(xv[c], mv), inv), _mm256_setzero_si256());
  store_u16(out, f16_bits(d));
  store_u16(out + 2, f16_bits(m));
  pack_nibbles<chunks>(q, out + 4);
}

// ---- NF4: d = absmax, the level nearest to x / d ----

struct Nf4Midpoints {
  __m256 mid[15];
};

Nf4Midpoints nf4_midpoints() {
  Nf4Midpoints m;
  for (int k = 0; k < 15; ++k) m.mid[k] = _mm256_set1_ps(0.5f * (kNf4Levels[k] + kNf4Levels[k + 1]));
  return m;
}

// NF4 level indices of x / d for a chunk: the number of midpoints below (the reference's ties go to the lower level).
inline __m256i nf4_codes(__m256 v, const Nf4Midpoints& mids) {
  __m256i n = _mm256_setzero_si256();
  for (int k = 0; k < 15; ++k) n = _mm256_sub_epi32(n, _mm256_castps_si256(_mm256_cmp_ps(v, mids.mid[k], _CMP_GT_OQ)));
  return n;
}

template <int kGroup>
void nf4_block(const float* x, const Nf4Midpoints& mids, uint8_t* out) {
  constexpr int chunks = kGroup / 8;
  __m256 xv[chunks];
  float amax;
  if (!load_block<chunks>(x, kLargestFastValue, xv, &amax))
    return reference::nf4_block(x, kGroup, kGroup, nullptr, out);
  const float d = f16_round(amax);
  const __m256 inv = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
  __m256i q[chunks];
  for (int c = 0; c < chunks; ++c) q[c] = nf4_codes(_mm256_mul_ps(xv[c], inv), mids);
  store_u16(out, f16_bits(d));
  pack_nibbles<chunks>(q, out + 2);
}

// Sum over a chunk of w (x - d L[q])^2 in double, as the reference computes each term (d L[q] is exact in double,
// not in float, so float sums could not be bounded relative to small errors); only the order of the additions
// differs, so sums within 1e-12 relative order as the reference's do.
inline __m256d nf4_weighted_error(__m256 x, __m256 w, __m256i q, __m256d d, __m256d acc) {
  const __m256 lo_levels = _mm256_loadu_ps(kNf4Levels), hi_levels = _mm256_loadu_ps(kNf4Levels + 8);
  const __m256 level = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo_levels, q), _mm256_permutevar8x32_ps(hi_levels, q),
                                        _mm256_castsi256_ps(_mm256_cmpgt_epi32(q, _mm256_set1_epi32(7))));
  for (int half = 0; half < 2; ++half) {
    const __m128 xs = half == 0 ? _mm256_castps256_ps128(x) : _mm256_extractf128_ps(x, 1);
    const __m128 ws = half == 0 ? _mm256_castps256_ps128(w) : _mm256_extractf128_ps(w, 1);
    const __m128 ls = half == 0 ? _mm256_castps256_ps128(level) : _mm256_extractf128_ps(level, 1);
    const __m256d e = _mm256_sub_pd(_mm256_cvtps_pd(xs), _mm256_mul_pd(d, _mm256_cvtps_pd(ls)));
    acc = _mm256_add_pd(acc, _mm256_mul_pd(_mm256_mul_pd(_mm256_cvtps_pd(ws), e), e));
  }
  return acc;
}

inline double hsum_pd(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

inline bool clearly_ordered_double(double a, double b) {
  return a <= 1.7e308 && b <= 1.7e308 && __builtin_fabs(a - b) > 1e-12 * (a + b) + 1e-300;
}

// NF4 with importance weights: the reference tries d = absmax, then absmax shrunk by 2% steps to 80%, keeping the
// first with the smallest weighted squared error.
template <int kGroup>
void nf4_block_weighted(const float* x, const float* w, const Nf4Midpoints& mids, uint8_t* out) {
  constexpr int chunks = kGroup / 8;
  __m256 xv[chunks], wv[chunks];
  float amax;
  if (!load_weights<chunks>(w, wv) || !load_block<chunks>(x, kLargestFastValue, xv, &amax))
    return reference::nf4_block(x, kGroup, kGroup, w, out);
  if (amax == 0.0f) return nf4_block<kGroup>(x, mids, out);  // no search: every code is level 0
  constexpr int kCandidates = 11;
  float cand[kCandidates];
  double err[kCandidates];
  cand[0] = f16_round(amax);
  for (int k = 1; k < kCandidates; ++k) cand[k] = f16_round(amax * (1.0f - 0.02f * static_cast<float>(k)));
  for (int j = 0; j < kCandidates; ++j) {
    const __m256 inv = _mm256_set1_ps(cand[j] != 0.0f ? 1.0f / cand[j] : 0.0f);
    const __m256d dv = _mm256_set1_pd(cand[j]);
    __m256d e = _mm256_setzero_pd();
    for (int c = 0; c < chunks; ++c)
      e = nf4_weighted_error(xv[c], wv[c], nf4_codes(_mm256_mul_ps(xv[c], inv), mids), dv, e);
    err[j] = hsum_pd(e);
  }
  const int best = clear_minimum(cand, err, kCandidates, clearly_ordered_double);
  if (best < 0) return reference::nf4_block(x, kGroup, kGroup, w, out);
  const __m256 inv = _mm256_set1_ps(cand[best] != 0.0f ? 1.0f / cand[best] : 0.0f);
  __m256i q[chunks];
  for (int c = 0; c < chunks; ++c) q[c] = nf4_codes(_mm256_mul_ps(xv[c], inv), mids);
  store_u16(out, f16_bits(cand[best]));
  pack_nibbles<chunks>(q, out + 2);
}

// Calls block(b0, out) for a row's full blocks and tail(b0, n, out) for a ragged last one (b0: first column).
template <int kGroup, size_t kHeaderBytes, typename Block, typename Tail>
void for_each_block(int64_t cols, void* row, Block block, Tail tail) {
  auto* out = static_cast<uint8_t*>(row);
  int64_t b0 = 0;
  for (; b0 + kGroup <= cols; b0 += kGroup, out += kHeaderBytes + kGroup / 2) block(b0, out);
  if (b0 < cols) tail(b0, static_cast<int>(cols - b0), out);
}

// Calls f.template operator()<group>() for the group size; false for one the formats do not have.
template <typename F>
bool with_group(int group, F f) {
  switch (group) {
    case 32:
      f.template operator()<32>();
      return true;
    case 64:
      f.template operator()<64>();
      return true;
    case 128:
      f.template operator()<128>();
      return true;
    default:
      return false;
  }
}

// The largest |x| of a row; false when a value is not finite.
bool row_amax(const float* x, int64_t cols, float* amax_out) {
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  const __m256 lim = _mm256_set1_ps(kFloatMax);
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    const __m256 a = abs_ps(_mm256_loadu_ps(x + i));
    vmax = _mm256_max_ps(vmax, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, lim, _CMP_NLE_UQ));
  }
  float amax = hmax(vmax);
  bool finite = _mm256_movemask_ps(bad) == 0;
  for (; i < cols; ++i) {
    const float a = abs_f(x[i]);
    finite = finite && a <= kFloatMax;
    amax = a > amax ? a : amax;
  }
  *amax_out = amax;
  return finite;
}

// A Q8 row with the given scale: the scale, the codes round(x / scale) clamped to +-127, zero padding.
void write_q8_row(const float* x, int64_t cols, float scale, void* row) {
  auto* out = static_cast<uint8_t*>(row);
  const float inv_s = scale != 0.0f ? 1.0f / scale : 0.0f;
  __builtin_memcpy(out, &scale, sizeof scale);
  auto* q = reinterpret_cast<int8_t*>(out + 4);
  const __m256 inv = _mm256_set1_ps(inv_s);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  auto codes = [&](int64_t at) {
    const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + at), inv));
    return _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
  };
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= cols; i += 32) {
    const __m256i w01 = _mm256_packs_epi32(codes(i), codes(i + 8));
    const __m256i w23 = _mm256_packs_epi32(codes(i + 16), codes(i + 24));
    const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), b);
  }
  for (; i < cols; ++i) {
    const int v = _mm_cvtss_si32(_mm_set_ss(x[i] * inv_s));
    q[i] = static_cast<int8_t>(v < -127 ? -127 : v > 127 ? 127 : v);
  }
  for (const int64_t padded = (cols + 3) / 4 * 4; i < padded; ++i) q[i] = 0;
}

}  // namespace

bool q8_quantize_row(const float* x, int64_t cols, int /*group*/, const float* importance, void* row) {
  if (importance != nullptr) return false;
  float amax;
  if (!row_amax(x, cols, &amax)) {
    reference::q8_row(x, cols, row);
    return true;
  }
  write_q8_row(x, cols, amax / 127.0f, row);
  return true;
}

void q8_quantize_row_with_amax(const float* x, int64_t cols, float amax, void* row) {
  float own;
  if (!row_amax(x, cols, &own) || !(amax <= kFloatMax)) return reference::q8_row_with_amax(x, cols, amax, row);
  write_q8_row(x, cols, amax / 127.0f, row);
}

bool q4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row) {
  return with_group(group, [&]<int kGroup>() {
    if (importance == nullptr) {
      for_each_block<kGroup, 2>(
          cols, row, [&](int64_t b, uint8_t* out) { q4_block<kGroup>(x + b, out); },
          [&](int64_t b, int n, uint8_t* out) { reference::q4_block(x + b, n, kGroup, nullptr, out); });
    } else {
      for_each_block<kGroup, 2>(
          cols, row, [&](int64_t b, uint8_t* out) { q4_block_weighted<kGroup>(x + b, importance + b, out); },
          [&](int64_t b, int n, uint8_t* out) { reference::q4_block(x + b, n, kGroup, importance + b, out); });
    }
  });
}

bool q4a_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row) {
  if (importance != nullptr) return false;
  return with_group(group, [&]<int kGroup>() {
    for_each_block<kGroup, 4>(
        cols, row, [&](int64_t b, uint8_t* out) { q4a_block<kGroup>(x + b, out); },
        [&](int64_t b, int n, uint8_t* out) { reference::q4a_block(x + b, n, kGroup, out); });
  });
}

bool nf4_quantize_row(const float* x, int64_t cols, int group, const float* importance, void* row) {
  const Nf4Midpoints mids = nf4_midpoints();
  return with_group(group, [&]<int kGroup>() {
    if (importance == nullptr) {
      for_each_block<kGroup, 2>(
          cols, row, [&](int64_t b, uint8_t* out) { nf4_block<kGroup>(x + b, mids, out); },
          [&](int64_t b, int n, uint8_t* out) { reference::nf4_block(x + b, n, kGroup, nullptr, out); });
    } else {
      for_each_block<kGroup, 2>(
          cols, row, [&](int64_t b, uint8_t* out) { nf4_block_weighted<kGroup>(x + b, importance + b, mids, out); },
          [&](int64_t b, int n, uint8_t* out) { reference::nf4_block(x + b, n, kGroup, importance + b, out); });
    }
  });
}

}  // namespace tessera::quant::avx2
