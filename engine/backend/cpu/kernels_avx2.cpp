// AVX2 + FMA + F16C kernel set. This translation unit alone is compiled with -mavx2 -mfma -mf16c; nothing in it
// may run before cpu_features().has_avx2_fma() has been checked (CpuBackend does that before asking for it).
//
// It deliberately calls no inline function or template from a shared header (std::min, std::exp, dtype.h's
// converters...): the copy compiled here would contain AVX instructions, and the linker may keep that copy for the
// whole program, which would then fault on CPUs without AVX2. Everything used here lives in the anonymous namespace.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "engine/backend/cpu/kernels.h"

namespace tessera::cpu {

namespace {

inline int min_int(int a, int b) {
  return a < b ? a : b;
}
inline float max_f(float a, float b) {
  return a > b ? a : b;
}
inline float exp_scalar(float x) {
  return __builtin_expf(x);
}

inline float f16_scalar(uint16_t h) {
  return _cvtsh_ss(h);
}
inline float bf16_scalar(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

// ---- Weight loaders: 8 elements of the storage type to 8 fp32 lanes, converted in registers. ----

struct LoadF32 {
  using T = float;
  static __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static float cvt(float v) { return v; }
};
struct LoadF16 {
  using T = uint16_t;
  static __m256 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float cvt(uint16_t v) { return f16_scalar(v); }
};
struct LoadBF16 {
  using T = uint16_t;
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place.
  static __m256 load8(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static float cvt(uint16_t v) { return bf16_scalar(v); }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The four horizontal sums of a..d, as one 128-bit vector [sum a, sum b, sum c, sum d].
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// exp(x) for x <= 88 (Cephes expf polynomial, ~1-2 ulp); inputs below about -87.3 give 0 or a tiny normal, which
// is all softmax needs.
inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.33654f));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // x - n*ln2 with ln2 split in two so the reduction is exact enough.
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// ---- GEMV ----

// How far ahead of the loads each weight row is prefetched. The hardware prefetchers alone leave DRAM bandwidth on
// the table with four concurrent streams per core (about 10% on a Zen 3 EPYC); a software prefetch per row and
// cache line keeps more misses in flight. 512-1024 bytes measured best there.
constexpr int64_t kGemvPrefetchBytes = 768;

// The ragged end (cols % 8 values) of one dot, added in order to s. Every decode kernel ends a row with this one
// function, so the same row gets the same bits from each of them. The fused multiply-add is explicit: left as
// `s += x * w`, GCC contracts it in some inlined copies and vectorizes the multiplies apart in others.
template <typename L>
inline float dot_tail(float s, const float* x, const typename L::T* r, int64_t c, int64_t cols) {
  for (; c < cols; ++c) s = __builtin_fmaf(x[c], L::cvt(r[c]), s);
  return s;
}

// W weight rows (4: dot4 / dot4x2; 2: the dot2xm batch tile) against M x rows. Each group of 8 weight values is
// loaded and converted once and multiplied into all M x rows. Per (x row, weight row) the arithmetic is the same for
// every W and M (one accumulator over 8 lanes, hsum4's reduction tree, then dot_tail), so a row's dots are bit for
// bit the same whether it is computed alone, paired or in a tile, and drivers may group a batch's rows any way.
// Rows are streamed one cache line per row per step with software prefetch. dot4x2 (W = 4, M = 2) keeps 8
// accumulators in registers; the tile (W = 2, M = 6) 12, converting each weight vector once per six x rows.
// next: with kWholeNext (the tile) rows to bring into cache line by line alongside (see Kernels::dot2xm), else the
// rows of the following call, whose first lines are prefetched near the end.
template <typename L, int W, int M, bool kWholeNext = false>
void dotwxm(const float* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
            int64_t ldo) {
  static_assert(W == 2 || W == 4);
  using T = typename L::T;
  constexpr int64_t kLine = 64 / sizeof(T);  // elements per cache line: 16 (f32) or 32 (16-bit types)
  constexpr int64_t kAhead = kGemvPrefetchBytes / sizeof(T);
  const T* r[W];
  for (int j = 0; j < W; ++j) r[j] = static_cast<const T*>(rows[j]);
  __m256 acc[M][W];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < W; ++j) acc[m][j] = _mm256_setzero_ps();
  const auto step = [&](int64_t c) {
    __m256 w[W];
    for (int j = 0; j < W; ++j) w[j] = L::load8(r[j] + c);
    for (int m = 0; m < M; ++m) {
      __m256 xv = _mm256_loadu_ps(x + m * ldx + c);
      // Keep xv in a register: folded into each FMA as a memory operand it would be loaded W times, and with
      // M * W FMAs per step the loads, not the FMAs, would set the pace (two 256-bit loads per cycle on Zen 3).
      __asm__("" : "+x"(xv));
      for (int j = 0; j < W; ++j) acc[m][j] = _mm256_fmadd_ps(xv, w[j], acc[m][j]);
    }
  };
  int64_t c = 0;
  for (; c + kLine <= cols; c += kLine) {
    const int64_t pc = c + kAhead;
    if (kWholeNext && next != nullptr) {
      for (int j = 0; j < W; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const T*>(next[j]) + c), _MM_HINT_T0);
    }
    if (pc < cols) {
      for (int j = 0; j < W; ++j) _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
    } else if (!kWholeNext && next != nullptr) {
      // Near the end of the rows: start on the next group's rows, whose first lines the hardware prefetchers
      // would only find after a few misses (they do not cross into new pages).
      for (int j = 0; j < W; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const T*>(next[j]) + (pc - cols)), _MM_HINT_T0);
      }
    }
    for (int64_t u = 0; u < kLine; u += 8) step(c + u);
  }
  for (; c + 8 <= cols; c += 8) step(c);
  alignas(16) float sums[4];
  for (int m = 0; m < M; ++m) {
    // hsum4 reduces each of its four vectors with the same tree whatever the other three are.
    if constexpr (W == 4) {
      _mm_store_ps(sums, hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
    } else {
      _mm_store_ps(sums, hsum4(acc[m][0], acc[m][1], acc[m][0], acc[m][1]));
    }
    const float* xm = x + m * ldx;
    for (int j = 0; j < W; ++j) out[m * ldo + j] = dot_tail<L>(sums[j], xm, r[j], c, cols);
  }
}

template <typename L>
void dot2xm(const float* x, int64_t ldx, int m, const void* const* rows, const void* const* next, int64_t cols,
            float* out, int64_t ldo) {
  switch (m) {
    case 1:
      return dotwxm<L, 2, 1, true>(x, ldx, rows, next, cols, out, ldo);
    case 2:
      return dotwxm<L, 2, 2, true>(x, ldx, rows, next, cols, out, ldo);
    case 3:
      return dotwxm<L, 2, 3, true>(x, ldx, rows, next, cols, out, ldo);
    case 4:
      return dotwxm<L, 2, 4, true>(x, ldx, rows, next, cols, out, ldo);
    case 5:
      return dotwxm<L, 2, 5, true>(x, ldx, rows, next, cols, out, ldo);
    default:
      return dotwxm<L, 2, 6, true>(x, ldx, rows, next, cols, out, ldo);
  }
}

template <typename L>
void dot4(const float* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  dotwxm<L, 4, 1>(x, 0, rows, next, cols, out, 0);
}

template <typename L>
void dot4x2(const float* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
            int64_t ldo) {
  dotwxm<L, 4, 2>(x, ldx, rows, next, cols, out, ldo);
}

template <typename L>
float dot1(const float* x, const void* row, int64_t cols) {
  const auto* r = static_cast<const typename L::T*>(row);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t c = 0;
  for (; c + 32 <= cols; c += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), L::load8(r + c), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 8), L::load8(r + c + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 16), L::load8(r + c + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 24), L::load8(r + c + 24), a3);
  }
  for (; c + 8 <= cols; c += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), L::load8(r + c), a0);
  float acc = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; c < cols; ++c) acc += x[c] * L::cvt(r[c]);
  return acc;
}

// ---- GEMM ----

// Transposes 8 vectors (rows) so out[j] holds element j of every row.
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

template <typename L>
void pack(const void* w, size_t row_bytes, int /*group*/, int nr, int width, int64_t k0, int64_t kc, float* panel) {
  using T = typename L::T;
  const auto ld = static_cast<int64_t>(row_bytes / sizeof(T));
  const T* base = static_cast<const T*>(w) + k0;
  for (int g = 0; g < width; g += 8) {
    const int valid = nr - g < 0 ? 0 : min_int(nr - g, 8);
    float* dst = panel + g;
    int64_t k = 0;
    if (valid == 8) {
      // Full group of 8 rows: convert 8x8 blocks in registers and transpose them into panel order.
      const T* src[8];
      for (int r = 0; r < 8; ++r) src[r] = base + (g + r) * ld;
      for (; k + 8 <= kc; k += 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = L::load8(src[r] + k);
        transpose8(v);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (k + j) * kGemmNR, v[j]);
      }
    }
    // Column tail and ragged groups (missing rows are zero).
    for (; k < kc; ++k) {
      for (int r = 0; r < 8; ++r) dst[k * kGemmNR + r] = r < valid ? L::cvt(base[(g + r) * ld + k]) : 0.0f;
    }
  }
}

// MR rows of x times a 16-wide panel: 2*MR accumulators stay in registers for the whole k loop; per k, two panel
// loads and MR broadcasts feed 2*MR FMAs. The accumulators are named variables, not an array: GCC otherwise spills
// the array to the stack on every iteration.
template <int MR>
void gemm_tile_mr(const float* x, int64_t ldx, const float* panel, int64_t kc, const float* init, float* c,
                  int64_t ldc) {
  __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
  c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
  const float* x0 = x;
  const float* x1 = x + ldx;
  const float* x2 = x + 2 * ldx;
  const float* x3 = x + 3 * ldx;
  const float* x4 = x + 4 * ldx;
  const float* x5 = x + 5 * ldx;
  // Rows r < MR of C (or of init) into their accumulator pair.
#define TESSERA_LOAD_ROW(r)                                       \
  if constexpr (MR > r) {                                         \
    c##r##0 = _mm256_loadu_ps(init ? init : c + r * ldc);         \
    c##r##1 = _mm256_loadu_ps(init ? init + 8 : c + r * ldc + 8); \
  }
  TESSERA_LOAD_ROW(0)
  TESSERA_LOAD_ROW(1)
  TESSERA_LOAD_ROW(2)
  TESSERA_LOAD_ROW(3)
  TESSERA_LOAD_ROW(4)
  TESSERA_LOAD_ROW(5)
#undef TESSERA_LOAD_ROW
#define TESSERA_FMA_ROW(r)                           \
  if constexpr (MR > r) {                            \
    const __m256 xb = _mm256_broadcast_ss(x##r + k); \
    c##r##0 = _mm256_fmadd_ps(xb, p0, c##r##0);      \
    c##r##1 = _mm256_fmadd_ps(xb, p1, c##r##1);      \
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 p0 = _mm256_loadu_ps(panel + k * kGemmNR);
    const __m256 p1 = _mm256_loadu_ps(panel + k * kGemmNR + 8);
    TESSERA_FMA_ROW(0)
    TESSERA_FMA_ROW(1)
    TESSERA_FMA_ROW(2)
    TESSERA_FMA_ROW(3)
    TESSERA_FMA_ROW(4)
    TESSERA_FMA_ROW(5)
  }
#undef TESSERA_FMA_ROW
#define TESSERA_STORE_ROW(r)                    \
  if constexpr (MR > r) {                       \
    _mm256_storeu_ps(c + r * ldc, c##r##0);     \
    _mm256_storeu_ps(c + r * ldc + 8, c##r##1); \
  }
  TESSERA_STORE_ROW(0)
  TESSERA_STORE_ROW(1)
  TESSERA_STORE_ROW(2)
  TESSERA_STORE_ROW(3)
  TESSERA_STORE_ROW(4)
  TESSERA_STORE_ROW(5)
#undef TESSERA_STORE_ROW
}

void gemm_tile(const float* x, int64_t ldx, int mr, const float* panel, int64_t kc, const float* init, float* c,
               int64_t ldc) {
  static_assert(kGemmMR == 6 && kGemmNR == 16);
  switch (mr) {
    case 6:
      return gemm_tile_mr<6>(x, ldx, panel, kc, init, c, ldc);
    case 5:
      return gemm_tile_mr<5>(x, ldx, panel, kc, init, c, ldc);
    case 4:
      return gemm_tile_mr<4>(x, ldx, panel, kc, init, c, ldc);
    case 3:
      return gemm_tile_mr<3>(x, ldx, panel, kc, init, c, ldc);
    case 2:
      return gemm_tile_mr<2>(x, ldx, panel, kc, init, c, ldc);
    case 1:
      return gemm_tile_mr<1>(x, ldx, panel, kc, init, c, ldc);
    default:
      return;
  }
}

// ---- Attention ----

// Scores of four keys at once (four accumulator chains, one horizontal reduction for all four).
inline __m128 dot_q_k4(const float* q, const float* k, int64_t stride, int hd) {
  const float* k0 = k;
  const float* k1 = k + stride;
  const float* k2 = k + 2 * stride;
  const float* k3 = k + 3 * stride;
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int d = 0;
  for (; d + 8 <= hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
    a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + d), a1);
    a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + d), a2);
    a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + d), a3);
  }
  __m128 s = hsum4(a0, a1, a2, a3);
  if (d < hd) {
    alignas(16) float t[4] = {0, 0, 0, 0};
    for (; d < hd; ++d) {
      t[0] += q[d] * k0[d];
      t[1] += q[d] * k1[d];
      t[2] += q[d] * k2[d];
      t[3] += q[d] * k3[d];
    }
    s = _mm_add_ps(s, _mm_load_ps(t));
  }
  return s;
}

// Scores of eight keys at once: eight independent FMA chains, enough to cover the FMA latency.
inline __m256 dot_q_k8(const float* q, const float* k, int64_t stride, int hd) {
  __m256 a[8];
  for (auto& x : a) x = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + j * stride + d), a[j]);
  }
  __m128 lo = hsum4(a[0], a[1], a[2], a[3]);
  __m128 hi = hsum4(a[4], a[5], a[6], a[7]);
  if (d < hd) {
    alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; d < hd; ++d) {
      for (int j = 0; j < 8; ++j) t[j] += q[d] * k[j * stride + d];
    }
    lo = _mm_add_ps(lo, _mm_load_ps(t));
    hi = _mm_add_ps(hi, _mm_load_ps(t + 4));
  }
  return _mm256_set_m128(hi, lo);
}

inline float dot_q_k1(const float* q, const float* k, int hd) {
  __m256 a = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= hd; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a);
  float s = hsum(a);
  for (; d < hd; ++d) s += q[d] * k[d];
  return s;
}

// One query against one block of nb <= kAttendBlock keys, updating its online-softmax state: the block's scores go
// to a small stack buffer, the running max m / sum l and the output accumulator are rescaled once per block (not
// per key), then the block's values are accumulated with the output held in registers 64 dims at a time.
constexpr int kAttendBlock = 64;
static_assert(attend_block_keys(1) <= kAttendBlock);

void attend_block(const float* q, const float* kb, const float* vb, int64_t kv_stride, int nb, int hd, float scale,
                  float* out, float& m, float& l) {
  alignas(32) float s[kAttendBlock];
  int j = 0;
  for (; j + 8 <= nb; j += 8) {
    _mm256_store_ps(s + j, _mm256_mul_ps(dot_q_k8(q, kb + j * kv_stride, kv_stride, hd), _mm256_set1_ps(scale)));
  }
  for (; j + 4 <= nb; j += 4) {
    _mm_store_ps(s + j, _mm_mul_ps(dot_q_k4(q, kb + j * kv_stride, kv_stride, hd), _mm_set1_ps(scale)));
  }
  for (; j < nb; ++j) s[j] = dot_q_k1(q, kb + j * kv_stride, hd) * scale;

  float bm = s[0];
  for (j = 1; j < nb; ++j) bm = max_f(bm, s[j]);
  if (bm > m) {
    const float alpha = exp_scalar(m - bm);  // 0 on the first block (m = -inf), and out is still zero then
    for (int d = 0; d < hd; ++d) out[d] *= alpha;
    l *= alpha;
    m = bm;
  }
  const __m256 mv = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= nb; j += 8) {
    const __m256 p = exp8(_mm256_sub_ps(_mm256_load_ps(s + j), mv));
    _mm256_store_ps(s + j, p);
    sum = _mm256_add_ps(sum, p);
  }
  l += hsum(sum);
  for (; j < nb; ++j) l += (s[j] = exp_scalar(s[j] - m));

  int d = 0;
  for (; d + 64 <= hd; d += 64) {  // eight accumulator chains
    __m256 o[8];
    for (int c = 0; c < 8; ++c) o[c] = _mm256_loadu_ps(out + d + 8 * c);
    for (j = 0; j < nb; ++j) {
      const __m256 p = _mm256_broadcast_ss(s + j);
      const float* vj = vb + j * kv_stride + d;
      for (int c = 0; c < 8; ++c) o[c] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8 * c), o[c]);
    }
    for (int c = 0; c < 8; ++c) _mm256_storeu_ps(out + d + 8 * c, o[c]);
  }
  for (; d + 32 <= hd; d += 32) {
    __m256 o0 = _mm256_loadu_ps(out + d), o1 = _mm256_loadu_ps(out + d + 8);
    __m256 o2 = _mm256_loadu_ps(out + d + 16), o3 = _mm256_loadu_ps(out + d + 24);
    for (j = 0; j < nb; ++j) {
      const __m256 p = _mm256_broadcast_ss(s + j);
      const float* vj = vb + j * kv_stride + d;
      o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj), o0);
      o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8), o1);
      o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 16), o2);
      o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 24), o3);
    }
    _mm256_storeu_ps(out + d, o0);
    _mm256_storeu_ps(out + d + 8, o1);
    _mm256_storeu_ps(out + d + 16, o2);
    _mm256_storeu_ps(out + d + 24, o3);
  }
  for (; d + 8 <= hd; d += 8) {
    __m256 o = _mm256_loadu_ps(out + d);
    for (j = 0; j < nb; ++j)
      o = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j), _mm256_loadu_ps(vb + j * kv_stride + d), o);
    _mm256_storeu_ps(out + d, o);
  }
  for (; d < hd; ++d) {
    float o = out[d];
    for (j = 0; j < nb; ++j) o += s[j] * vb[j * kv_stride + d];
    out[d] = o;
  }
}

// Short row copies: inline vector moves (libc memcpy is a call plus a size dispatch per row).
inline void copy_floats(const float* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}

// A batch whose queries each have a kv head to themselves: copying blocks would only add traffic, so each query
// reads its head's rows in place. Blocks start at fixed multiples of kAttendDirectKeys whatever the cache layout, so
// a paged cache gives the bits of a contiguous one; a block split across pages (pages shorter than a block) is
// gathered into scratch first.
void attend_direct(const AttendBatch& batch, const KvLayer& kv, int hd, float scale, float* scratch) {
  float* k_copy = scratch;
  float* v_copy = scratch + kAttendDirectKeys * hd;
  for (int b = 0; b < batch.count; ++b) {
    float* out = batch.out[b];
    for (int d = 0; d < hd; ++d) out[d] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    const size_t head = static_cast<size_t>(batch.kv_head[b]) * static_cast<size_t>(hd);
    for (int j0 = 0; j0 < batch.n_keys[b]; j0 += kAttendDirectKeys) {
      const int nb = min_int(kAttendDirectKeys, batch.n_keys[b] - j0);
      if (kv_contiguous_rows(kv, j0, nb) == nb) {
        const size_t row = kv_row_offset(kv, j0) + head;
        attend_block(batch.q[b], kv.k + row, kv.v + row, kv.stride, nb, hd, scale, out, m, l);
        continue;
      }
      for (int j = 0; j < nb; ++j) {
        const size_t row = kv_row_offset(kv, j0 + j) + head;
        copy_floats(kv.k + row, hd, k_copy + j * hd);
        copy_floats(kv.v + row, hd, v_copy + j * hd);
      }
      attend_block(batch.q[b], k_copy, v_copy, hd, nb, hd, scale, out, m, l);
    }
    const float inv_l = 1.0f / l;
    const __m256 inv = _mm256_set1_ps(inv_l);
    int d = 0;
    for (; d + 8 <= hd; d += 8) _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(out + d), inv));
    for (; d < hd; ++d) out[d] *= inv_l;
  }
}

bool one_query_per_kv_head(const AttendBatch& batch) {
  if (batch.count != batch.kv_count) return false;
  for (int b = 0; b < batch.count; ++b) {
    if (batch.kv_head[b] != batch.kv_first + b) return false;
  }
  return true;
}

void attend(const AttendBatch& batch, const KvLayer& kv, int head_dim, float scale, float* scratch) {
  if (one_query_per_kv_head(batch)) return attend_direct(batch, kv, head_dim, scale, scratch);
  const int hd = head_dim;
  const int64_t span = static_cast<int64_t>(batch.kv_count) * hd;
  const int block = attend_block_keys(span);
  // Copies are laid out [kv head][row][head_dim], so one head's block is contiguous.
  float* k_copy = scratch;
  float* v_copy = scratch + block * span;
  const size_t span_offset = static_cast<size_t>(batch.kv_first) * static_cast<size_t>(hd);
  float m[kMaxAttendBatch], l[kMaxAttendBatch];
  int max_keys = 0;
  for (int b = 0; b < batch.count; ++b) {
    for (int d = 0; d < hd; ++d) batch.out[b][d] = 0.0f;
    m[b] = -INFINITY;
    l[b] = 0.0f;
    max_keys = batch.n_keys[b] > max_keys ? batch.n_keys[b] : max_keys;
  }
  for (int j0 = 0; j0 < max_keys; j0 += block) {
    const int rows = min_int(block, max_keys - j0);
    for (int j = 0; j < rows; ++j) {
      const size_t row = kv_row_offset(kv, j0 + j) + span_offset;  // paged or not: the copy gathers the rows
      const float* ks = kv.k + row;
      const float* vs = kv.v + row;
      for (int c = 0; c < batch.kv_count; ++c) {
        copy_floats(ks + c * hd, hd, k_copy + (static_cast<int64_t>(c) * block + j) * hd);
        copy_floats(vs + c * hd, hd, v_copy + (static_cast<int64_t>(c) * block + j) * hd);
      }
    }
    for (int b = 0; b < batch.count; ++b) {
      const int nb = min_int(rows, batch.n_keys[b] - j0);  // causal: later rows of the batch see more keys
      if (nb <= 0) continue;
      const int64_t c = batch.kv_head[b] - batch.kv_first;
      attend_block(batch.q[b], k_copy + c * block * hd, v_copy + c * block * hd, hd, nb, hd, scale, batch.out[b], m[b],
                   l[b]);
    }
  }
  for (int b = 0; b < batch.count; ++b) {
    float* out = batch.out[b];
    const float inv_l = 1.0f / l[b];
    const __m256 inv = _mm256_set1_ps(inv_l);
    int d = 0;
    for (; d + 8 <= hd; d += 8) _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(out + d), inv));
    for (; d < hd; ++d) out[d] *= inv_l;
  }
}

// ---- Element-wise ----

float sum_squares(const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    const __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
    a2 = _mm256_fmadd_ps(v2, v2, a2);
    a3 = _mm256_fmadd_ps(v3, v3, a3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    a0 = _mm256_fmadd_ps(v, v, a0);
  }
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

void scale_mul(const float* x, const float* w, float s, int64_t n, float* y) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _mm256_loadu_ps(w + i)));
  }
  for (; i < n; ++i) y[i] = x[i] * s * w[i];
}

void add(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  for (; i < n; ++i) y[i] += x[i];
}

template <typename L>
void dequant(const void* row, int /*group*/, int64_t k0, int64_t n, float* out) {
  const auto* r = static_cast<const typename L::T*>(row) + k0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, L::load8(r + i));
  for (; i < n; ++i) out[i] = L::cvt(r[i]);
}

float max_value(const float* x, int64_t n) {
  // vmaxps returns its second operand when either is NaN, so NaN inputs never replace the running max.
  __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
  }
  m0 = _mm256_max_ps(m0, m1);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m0);
  float m = -INFINITY;
  for (float v : lanes) m = v > m ? v : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

Kernels make() {
  Kernels k{};
  k.name = "avx2";
  k.dot4[kF32] = dot4<LoadF32>;
  k.dot4[kF16] = dot4<LoadF16>;
  k.dot4[kBF16] = dot4<LoadBF16>;
  k.dot4x2[kF32] = dot4x2<LoadF32>;
  k.dot4x2[kF16] = dot4x2<LoadF16>;
  k.dot4x2[kBF16] = dot4x2<LoadBF16>;
  k.dot2xm[kF32] = dot2xm<LoadF32>;
  k.dot2xm[kF16] = dot2xm<LoadF16>;
  k.dot2xm[kBF16] = dot2xm<LoadBF16>;
  k.dot_tile_rows = 6;
  k.gemm_tile_rows = kGemmMR;
  k.dot1[kF32] = dot1<LoadF32>;
  k.dot1[kF16] = dot1<LoadF16>;
  k.dot1[kBF16] = dot1<LoadBF16>;
  k.pack[kF32] = pack<LoadF32>;
  k.pack[kF16] = pack<LoadF16>;
  k.pack[kBF16] = pack<LoadBF16>;
  k.gemm_tile = gemm_tile;
  k.attend = attend;
  k.sum_squares = sum_squares;
  k.scale_mul = scale_mul;
  k.add = add;
  k.dequant[kF32] = dequant<LoadF32>;
  k.dequant[kF16] = dequant<LoadF16>;
  k.dequant[kBF16] = dequant<LoadBF16>;
  k.max_value = max_value;
  add_quant_avx2_kernels(k);
  add_sparse_avx2_kernels(k);
  return k;
}

}  // namespace

const Kernels& avx2_kernels() {
  static const Kernels kernels = make();
  return kernels;
}

}  // namespace tessera::cpu
