// AVX-512 BF16 kernel set: the AVX-512 set plus decode kernels for bf16 weights against bf16 activations
// (Kernels::bdot4, bdot1, bdot4x2, bdot2xm) built on vdpbf16ps, which multiplies 32 bf16 pairs and adds each pair's
// two products into one of 16 fp32 lanes. Against the fp32-activation kernels that widen every weight to fp32 first,
// one instruction does the work of two FMAs and a conversion, and an x row is half the bytes: the batched decode
// tile, compute-bound at serving batch sizes, runs about twice as fast (docs/benchmarks.md). This translation unit
// alone is compiled with -mavx512bf16 and is only entered through avx512_bf16_kernels(), after
// cpu_features().has_avx512_bf16() (CpuBackend checks); like the other ISA translation units it calls no inline
// function or template with external linkage from a shared header (avx512_inline.h's have internal linkage).
//
// Numerics: the activations are rounded to bf16 by the caller (once per matmul); each product of two bf16 values is
// exact in fp32, and the instruction adds a lane's two products to it one after the other, rounding to nearest
// even (denormal inputs and results are flushed to zero). All four kernels share one per-row arithmetic: lane
// l accumulates columns 32s + 2l and 32s + 2l + 1 of every 32-column step s in column order, a ragged last step
// reads zeros past the end of the row (masked loads), and the 16 lanes are reduced with one fixed tree. So a row's
// result is bit for bit the same whichever kernel computes it, as batched decode needs.
#include <immintrin.h>

#include <cstdint>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "engine/backend/cpu/avx512_inline.h"
#include "engine/backend/cpu/kernels.h"

namespace tessera::cpu {

namespace {

constexpr int64_t kStep = 32;            // bf16 values per zmm, and per 64-byte cache line
constexpr int64_t kPrefetchAhead = 384;  // 768 bytes, the fp32-activation kernels' distance

inline __m512bh as_bh(__m512i v) {
  return (__m512bh)v;
}

// W bf16 weight rows against M bf16 x rows, x rows ldx values apart. Weight rows are streamed a cache line per row
// per step with software prefetch; next as in the fp32-activation kernels (kernels_avx512.cpp dotwxm16): with
// kWholeNext rows to bring into cache line by line alongside (Kernels::dot2xm), else the following call's rows, whose
// first lines are prefetched near the end. Each x vector is loaded once per step for the W products that use it.
template <int W, int M, bool kWholeNext = false>
void bdotwxm(const uint16_t* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
             int64_t ldo) {
  static_assert(W == 1 || W == 2 || W == 4);
  const uint16_t* r[W];
  for (int j = 0; j < W; ++j) r[j] = static_cast<const uint16_t*>(rows[j]);
  __m512 acc[M][W];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < W; ++j) acc[m][j] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + kStep <= cols; c += kStep) {
    const int64_t pc = c + kPrefetchAhead;
    for (int j = 0; j < W; ++j) {
      if (kWholeNext && next != nullptr) {
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const uint16_t*>(next[j]) + c), _MM_HINT_T0);
      }
      if (pc < cols) {
        _mm_prefetch(reinterpret_cast<const char*>(r[j] + pc), _MM_HINT_T0);
      } else if (!kWholeNext && next != nullptr) {
        _mm_prefetch(reinterpret_cast<const char*>(static_cast<const uint16_t*>(next[j]) + (pc - cols)), _MM_HINT_T0);
      }
    }
    __m512i w[W];
    for (int j = 0; j < W; ++j) w[j] = _mm512_loadu_si512(r[j] + c);
#pragma GCC unroll 12
    for (int m = 0; m < M; ++m) {
      __m512i xv = _mm512_loadu_si512(x + m * ldx + c);
      __asm__("" : "+v"(xv));  // one load, not one per instruction as a folded memory operand
      for (int j = 0; j < W; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], as_bh(xv), as_bh(w[j]));
    }
  }
  if (c < cols) {  // the ragged last step: zeros past the end contribute exact zero products
    const auto mask = static_cast<__mmask32>((uint64_t{1} << (cols - c)) - 1);
    __m512i w[W];
    for (int j = 0; j < W; ++j) w[j] = _mm512_maskz_loadu_epi16(mask, r[j] + c);
    for (int m = 0; m < M; ++m) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + m * ldx + c);
      for (int j = 0; j < W; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], as_bh(xv), as_bh(w[j]));
    }
  }
  alignas(16) float sums[4];
  for (int m = 0; m < M; ++m) {
    if constexpr (W == 4) {
      _mm_store_ps(sums, hsum4(fold16(acc[m][0]), fold16(acc[m][1]), fold16(acc[m][2]), fold16(acc[m][3])));
    } else if constexpr (W == 2) {
      const __m256 a = fold16(acc[m][0]), b = fold16(acc[m][1]);
      _mm_store_ps(sums, hsum4(a, b, a, b));
    } else {
      const __m256 a = fold16(acc[m][0]);
      _mm_store_ps(sums, hsum4(a, a, a, a));
    }
    for (int j = 0; j < W; ++j) out[m * ldo + j] = sums[j];
  }
}

void bdot4(const uint16_t* x, const void* const* rows, const void* const* next, int64_t cols, float* out) {
  bdotwxm<4, 1>(x, 0, rows, next, cols, out, 0);
}

float bdot1(const uint16_t* x, const void* row, int64_t cols) {
  float out;
  bdotwxm<1, 1>(x, 0, &row, nullptr, cols, &out, 0);
  return out;
}

void bdot4x2(const uint16_t* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols, float* out,
             int64_t ldo) {
  bdotwxm<4, 2>(x, ldx, rows, next, cols, out, ldo);
}

// The batched decode tile: 2 weight rows x up to 12 x rows, 24 accumulators.
void bdot2xm(const uint16_t* x, int64_t ldx, int m, const void* const* rows, const void* const* next, int64_t cols,
             float* out, int64_t ldo) {
  with_rows<kMaxDotTileRows>(m,
                             [&](auto r) { bdotwxm<2, decltype(r)::value, true>(x, ldx, rows, next, cols, out, ldo); });
}

Kernels make() {
  Kernels k = avx512_kernels();
  k.name = "avx512bf16";
  k.bdot4 = bdot4;
  k.bdot1 = bdot1;
  k.bdot4x2 = bdot4x2;
  k.bdot2xm = bdot2xm;
  return k;
}

}  // namespace

const Kernels& avx512_bf16_kernels() {
  static const Kernels kernels = make();
  return kernels;
}

}  // namespace tessera::cpu
