// AVX-512 kernel set (F, BW, VL, VNNI): the AVX2 set with the GEMM micro-kernels, the Q8 fp32-activation GEMV and the
// fp32-activation decode kernels for f32/f16/bf16 weights (dot4, dot4x2 and the batched tile dot2xm) replaced by
// 512-bit ones here, and the int8-activation GEMVs (kernels_quant_avx512.cpp: Q8, Q4/Q4A panels) and 2:4 sparse
// GEMVs (kernels_sparse_avx512.cpp) there. These three translation units alone are compiled with the AVX-512 flags
// and are only entered through avx512_kernels(), after cpu_features().has_avx512() (CpuBackend checks). As in
// kernels_avx2.cpp it calls no inline function or template with external linkage from a shared header: the linker
// could keep this copy, with its AVX-512 instructions, for the whole program (avx512_inline.h's helpers have
// internal linkage, a copy per unit).
//
// A kGemmNR-wide panel row (16 fp32, or 16 outputs' int8 quads) is exactly one zmm register, so each tile row needs
// one accumulator where AVX2 needs two. The GEMM tiles and the Q8 GEMV give their AVX2 twins' results bit for bit:
// the fp32 tile and the GEMV perform the same fused multiply-adds per lane in the same order, and the integer tile's
// int32 sums are exact whatever the order, converted and scaled per 32 values exactly as the AVX2 tile does. The
// f32/f16/bf16 decode kernels accumulate 16 lanes per row instead of 8 and so round differently from AVX2's; they
// agree bit for bit with one another, which is what batched decode needs.
#include <immintrin.h>

#include <cstdint>

// GCC 12 reports the deliberately undefined pass-through operand of some 512-bit intrinsics (_mm512_cvtepi32_ps,
// _mm512_shuffle_f32x4) as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "engine/backend/cpu/avx512_inline.h"
#include "engine/backend/cpu/kernels.h"
#include "quant/blocks.h"

namespace tessera::cpu {

namespace {

// ---- fp32 GEMM tile ----

// MR rows of x times a 16-wide panel, one zmm accumulator per row kept in registers over all of k. Up to 12 rows:
// with 6, the six dependent FMA chains could not keep two FMA pipes busy through the FMA latency.
template <int MR>
void gemm_tile_mr(const float* x, int64_t ldx, const float* panel, int64_t kc, const float* init, float* c,
                  int64_t ldc) {
  __m512 acc[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_loadu_ps(init != nullptr ? init : c + r * ldc);
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 p = _mm512_loadu_ps(panel + k * kGemmNR);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + k]), p, acc[r]);
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) _mm512_storeu_ps(c + r * ldc, acc[r]);
}

void gemm_tile(const float* x, int64_t ldx, int mr, const float* panel, int64_t kc, const float* init, float* c,
               int64_t ldc) {
  static_assert(kGemmNR == 16);
  with_rows<kMaxGemmMR>(mr, [&](auto rows) { gemm_tile_mr<decltype(rows)::value>(x, ldx, panel, kc, init, c, ldc); });
}

// ---- Integer GEMM (int8 weights x int8 activations) with vpdpbusd ----
//
// vpdpbusd multiplies unsigned bytes by signed bytes, four products per int32 lane: 64 per instruction, twice
// vpdpwssd's 32. The activations become unsigned by adding 128 (u = q + 128, 1..255); the 128 * sum(w) that adds is
// taken off per 32 values with the panel's column sums, leaving exactly the integer sum of q * w the AVX2 tile
// computes, so the result is bit for bit the same. These formats live in the storage the Kernels interface gives
// the int16 ones (kernels.h) and are only ever produced and consumed by the three functions below:
//   activations: block b of a row (32 values) is the 32 bytes u at byte 64 b of the row's int16 storage;
//   panel: the 32 values k of a block are the 1024 bytes at int16 offset 32 * kGemmNR * b; its first 512 bytes
//   hold quad t (values 4t..4t+3) of output j at byte 64 t + 4 j, then 16 int32 column sums sum_k w(k, j).
// A width-8 pack at panel + kGemmNR (32 bytes on) thus fills outputs 8..15 of both parts, as the interface wants.
constexpr int64_t kI8BlockStride = 32 * kGemmNR * 2;  // bytes between blocks of the panel (the int16 format's)
constexpr int64_t kI8SumsOffset = 8 * 64;

void expand_act_u8(const quant::BlockQ8Act* x, int64_t nblocks, int16_t* x16, float* xs) {
  auto* out = reinterpret_cast<uint8_t*>(x16);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int64_t b = 0; b < nblocks; ++b) {
    xs[b] = x[b].scale;
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 64 * b), _mm256_xor_si256(q, bias));  // q + 128 as u8
  }
}

void pack_u8(const void* w, size_t row_bytes, int64_t cols, int nr, int width, int64_t k0, int64_t kc, int16_t* panel,
             float* scales) {
  auto* base = reinterpret_cast<uint8_t*>(panel);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int j = 0; j < width; ++j) {
    const auto* row = static_cast<const uint8_t*>(w) + static_cast<size_t>(j) * row_bytes;
    float scale = 0.0f;
    if (j < nr) __builtin_memcpy(&scale, row, 4);
    scales[j] = scale;
  }
  for (int64_t b = 0; b < kc / 32; ++b) {
    uint8_t* p = base + b * kI8BlockStride;
    const int64_t c = k0 + 32 * b;
    for (int j = 0; j < width; ++j) {
      alignas(32) int8_t v[32] = {};
      if (j < nr && c < cols) {
        const auto* q = reinterpret_cast<const int8_t*>(static_cast<const uint8_t*>(w) + j * row_bytes + 4) + c;
        __builtin_memcpy(v, q, static_cast<size_t>(cols - c < 32 ? cols - c : 32));
      }
      for (int t = 0; t < 8; ++t) __builtin_memcpy(p + 64 * t + 4 * j, v + 4 * t, 4);
    }
    // Column sums over the quads just written: vpdpbusd against all-ones bytes adds each lane's four values.
    __m512i sums = _mm512_setzero_si512();
    for (int t = 0; t < 8; ++t) sums = _mm512_dpbusd_epi32(sums, ones, _mm512_loadu_si512(p + 64 * t));
    alignas(64) int32_t lanes[16];
    _mm512_store_si512(lanes, sums);
    __builtin_memcpy(p + kI8SumsOffset, lanes, 4 * static_cast<size_t>(width));
  }
}

// Per quad of k: one panel load (16 outputs x 4 values) and per row a broadcast of the four activation bytes and
// one vpdpbusd. Even and odd quads go to separate accumulators (two independent chains per row); per 32 values,
// 128 * column sum is taken off, and the exact integer sums are converted and scaled as in the AVX2 tile.
template <int MR>
void gemm_u8_tile_mr(const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs, const int16_t* panel, int64_t kc,
                     bool first, float* c, int64_t ldc) {
  const auto* xbytes = reinterpret_cast<const uint8_t*>(x);
  const int64_t ldx_bytes = 2 * ldx;
  for (int64_t b = 0; b < kc / 32; ++b) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(panel) + b * kI8BlockStride;
    const uint8_t* xb = xbytes + 64 * b;
    __m512i even[MR], odd[MR];
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) even[r] = odd[r] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int t = 0; t < 8; t += 2) {
      const __m512i p0 = _mm512_loadu_si512(p + 64 * t);
      const __m512i p1 = _mm512_loadu_si512(p + 64 * (t + 1));
#pragma GCC unroll 6
      for (int r = 0; r < MR; ++r) {
        int32_t quad0, quad1;
        __builtin_memcpy(&quad0, xb + r * ldx_bytes + 4 * t, 4);
        __builtin_memcpy(&quad1, xb + r * ldx_bytes + 4 * t + 4, 4);
        even[r] = _mm512_dpbusd_epi32(even[r], _mm512_set1_epi32(quad0), p0);
        odd[r] = _mm512_dpbusd_epi32(odd[r], _mm512_set1_epi32(quad1), p1);
      }
    }
    const __m512i offset = _mm512_slli_epi32(_mm512_loadu_si512(p + kI8SumsOffset), 7);  // 128 * sum_k w
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 s = _mm512_set1_ps(xs[r * ldxs + b]);
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(even[r], odd[r]), offset));
      float* cr = c + r * ldc;
      _mm512_storeu_ps(cr, first && b == 0 ? _mm512_mul_ps(v, s) : _mm512_fmadd_ps(v, s, _mm512_loadu_ps(cr)));
    }
  }
}

void gemm_u8_tile(const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs, int mr, const int16_t* panel,
                  int64_t kc, bool first, float* c, int64_t ldc) {
  static_assert(kGemmI8MR <= 6 && kGemmNR == 16);
  with_rows<kGemmI8MR>(
      mr, [&](auto rows) { gemm_u8_tile_mr<decltype(rows)::value>(x, ldx, xs, ldxs, panel, kc, first, c, ldc); });
}

// ---- Q8 decode with fp32 activations ----

constexpr int64_t kPrefetchBytes = 768;  // the AVX2 kernel's distance

inline __m512 q8_load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// The AVX2 dot4_q8 with its two 8-lane accumulators per row (columns 16i..16i+7 and 16i+8..16i+15) as the two
// halves of one zmm: the same fused multiply-adds per lane, the same tail and reduction, so the same bits, with half
// the instructions for the int8 -> fp32 conversion that makes the AVX2 kernel barely faster than memory.
void dot4_q8(const float* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  const int8_t* r[4];
  for (int j = 0; j < 4; ++j) r[j] = static_cast<const int8_t*>(rows[j]) + 4;
  __m512 acc[4];
  for (auto& v : acc) v = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 64 <= cols; c += 64) {
    const int64_t pc = c + kPrefetchBytes;
    for (int j = 0; j < 4; ++j) {
      if (pc < cols) {
        _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
      } else if (next != nullptr) {
        _mm_prefetch(static_cast<const char*>(next[j]) + (pc - cols), _MM_HINT_T0);
      }
    }
#pragma GCC unroll 4
    for (int64_t u = 0; u < 64; u += 16) {
      const __m512 xv = _mm512_loadu_ps(x + c + u);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = _mm512_fmadd_ps(xv, q8_load16(r[j] + c + u), acc[j]);
    }
  }
  __m256 a[4], b[4];
  for (int j = 0; j < 4; ++j) {
    a[j] = _mm512_castps512_ps256(acc[j]);
    b[j] = _mm512_castps512_ps256(_mm512_shuffle_f32x4(acc[j], acc[j], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (; c + 8 <= cols; c += 8) {
    const __m256 x0 = _mm256_loadu_ps(x + c);
    for (int j = 0; j < 4; ++j) {
      const __m256 w =
          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r[j] + c))));
      a[j] = _mm256_fmadd_ps(x0, w, a[j]);
    }
  }
  alignas(16) float s[4];
  _mm_store_ps(s, hsum4(_mm256_add_ps(a[0], b[0]), _mm256_add_ps(a[1], b[1]), _mm256_add_ps(a[2], b[2]),
                        _mm256_add_ps(a[3], b[3])));
  for (; c < cols; ++c) {
    for (int j = 0; j < 4; ++j) s[j] += x[c] * static_cast<float>(r[j][c]);
  }
  for (int j = 0; j < 4; ++j) {
    float scale;
    __builtin_memcpy(&scale, rows[j], 4);
    out[j] = scale * s[j];
  }
}

// ---- Decode with fp32 activations: f32, f16 and bf16 weights ----
//
// One 16-lane accumulator per (x row, weight row), so every x load and every weight load feeds full 512-bit FMAs
// (the AVX2 kernels' 8-lane accumulators would need each x row's 8 values broadcast to both halves: one load per
// FMA, which bounds the batched tile at about one FMA per cycle on Zen 5). dot4, dot4x2 and the batched tile
// dot2xm below share this per-row arithmetic (16-lane FMAs in column order, fold16 then hsum4's tree, then the tail
// value by value with fused multiply-adds), so a row's result is bit for bit the same whichever of them computes it
// (the contract in kernels.h); it differs from the AVX2 set's in float rounding only.

inline float f16_scalar(uint16_t h) {
  return _cvtsh_ss(h);
}
inline float bf16_scalar(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

// Weight loaders: 16 elements of the storage type to 16 fp32 lanes, converted in registers.
struct Load16F32 {
  using T = float;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static float cvt(float v) { return v; }
};
struct Load16F16 {
  using T = uint16_t;
  static __m512 load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static float cvt(uint16_t v) { return f16_scalar(v); }
};
struct Load16BF16 {
  using T = uint16_t;
  // bf16 is the top half of an fp32: widen to 32 bits and shift into place.
  static __m512 load(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static float cvt(uint16_t v) { return bf16_scalar(v); }
};

// W weight rows against M x rows. Rows are streamed one cache line per row per step with software prefetch. next:
// with kWholeNext (the tile) rows to bring into cache line by line alongside (see Kernels::dot2xm), else the
// following call's rows, whose first lines are prefetched near the end. Each x vector is loaded once per step and
// kept in a register for the W FMAs that use it.
template <typename L, int W, int M, bool kWholeNext = false>
void dotwxm16(const float* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
              int64_t ldo) {
  static_assert(W == 2 || W == 4);
  using T = typename L::T;
  constexpr int64_t kLine = 64 / sizeof(T);  // elements per cache line: 16 (f32) or 32 (16-bit types)
  constexpr int64_t kAhead = kPrefetchBytes / sizeof(T);
  const T* r[W];
  for (int j = 0; j < W; ++j) r[j] = static_cast<const T*>(rows[j]);
  __m512 acc[M][W];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < W; ++j) acc[m][j] = _mm512_setzero_ps();
  const auto step = [&](int64_t c) {
    __m512 w[W];
    for (int j = 0; j < W; ++j) w[j] = L::load(r[j] + c);
#pragma GCC unroll 12
    for (int m = 0; m < M; ++m) {
      __m512 xv = _mm512_loadu_ps(x + m * ldx + c);
      __asm__("" : "+v"(xv));  // one load, not one per FMA as a folded memory operand
      for (int j = 0; j < W; ++j) acc[m][j] = _mm512_fmadd_ps(xv, w[j], acc[m][j]);
    }
  };
  int64_t c = 0;
  for (; c + kLine <= cols; c += kLine) {
    const int64_t pc = c + kAhead;
    for (int j = 0; j < W; ++j) {
      if (kWholeNext && next != nullptr) {
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const T*>(next[j]) + c), _MM_HINT_T0);
      }
      if (pc < cols) {
        _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
      } else if (!kWholeNext && next != nullptr) {
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const T*>(next[j]) + (pc - cols)), _MM_HINT_T0);
      }
    }
    for (int64_t u = 0; u < kLine; u += 16) step(c + u);
  }
  for (; c + 16 <= cols; c += 16) step(c);
  alignas(16) float sums[4];
  for (int m = 0; m < M; ++m) {
    // hsum4 reduces each of its four vectors with the same tree whatever the other three are.
    if constexpr (W == 4) {
      _mm_store_ps(sums, hsum4(fold16(acc[m][0]), fold16(acc[m][1]), fold16(acc[m][2]), fold16(acc[m][3])));
    } else {
      const __m256 a = fold16(acc[m][0]), b = fold16(acc[m][1]);
      _mm_store_ps(sums, hsum4(a, b, a, b));
    }
    const float* xm = x + m * ldx;
    for (int j = 0; j < W; ++j) {
      float s = sums[j];
      for (int64_t k = c; k < cols; ++k) s = __builtin_fmaf(xm[k], L::cvt(r[j][k]), s);
      out[m * ldo + j] = s;
    }
  }
}

template <typename L>
void dot4_fp(const float* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  dotwxm16<L, 4, 1>(x, 0, rows, next, cols, out, 0);
}

template <typename L>
void dot4x2_fp(const float* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
               int64_t ldo) {
  dotwxm16<L, 4, 2>(x, ldx, rows, next, cols, out, ldo);
}

// The batched decode tile: 2 weight rows x up to 12 x rows, 24 accumulators.
template <typename L>
void dot2xm_fp(const float* x, int64_t ldx, int m, const void* const* rows, const void* const* next, int64_t cols,
               float* out, int64_t ldo) {
  with_rows<kMaxDotTileRows>(
      m, [&](auto r) { dotwxm16<L, 2, decltype(r)::value, true>(x, ldx, rows, next, cols, out, ldo); });
}

template <typename L>
void set_fp_decode(Kernels& k, int dt) {
  k.dot4[dt] = dot4_fp<L>;
  k.dot4x2[dt] = dot4x2_fp<L>;
  k.dot2xm[dt] = dot2xm_fp<L>;
}

Kernels make() {
  Kernels k = avx2_kernels();
  k.name = "avx512";
  k.gemm_tile = gemm_tile;
  k.gemm_tile_rows = kMaxGemmMR;
  k.dot4[kQ8] = dot4_q8;
  set_fp_decode<Load16F32>(k, kF32);
  set_fp_decode<Load16F16>(k, kF16);
  set_fp_decode<Load16BF16>(k, kBF16);
  k.dot_tile_rows = kMaxDotTileRows;
  k.expand_act = expand_act_u8;
  k.pack_i8 = pack_u8;
  k.gemm_i8_tile = gemm_u8_tile;
  add_quant_avx512_kernels(k);
  add_sparse_avx512_kernels(k);
  return k;
}

}  // namespace

const Kernels& avx512_kernels() {
  static const Kernels kernels = make();
  return kernels;
}

}  // namespace tessera::cpu
