// Private to the CPU backend: the table of inner-loop kernels that CpuBackend drives from its threads.
//
// Two sets fill it: kernels_portable.cpp (plain C++, baseline x86-64) and kernels_avx2.cpp (the only translation
// unit built with -mavx2 -mfma -mf16c; only handed out when cpuid says the CPU has all three). The drivers in
// cpu_backend.cpp own blocking, threading and scratch; kernels never allocate and never touch threads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/core/dtype.h"

namespace tessera::cpu {

// GEMM register tile: kGemmMR activation rows x kGemmNR outputs (two ymm of 8 floats) per micro-kernel call.
inline constexpr int kGemmMR = 6;
inline constexpr int kGemmNR = 16;

// Per-dtype entries are indexed by the DType value.
inline constexpr int kNumDtypes = 3;
inline constexpr int kF32 = static_cast<int>(DType::F32);
inline constexpr int kF16 = static_cast<int>(DType::F16);
inline constexpr int kBF16 = static_cast<int>(DType::BF16);

inline constexpr int kMaxAttendBatch = 64;

// A batch of query vectors for the attend kernel. They read a contiguous range of kv heads ([kv_first,
// kv_first + kv_count)); entry b reads kv head kv_head[b] within it.
struct AttendBatch {
  const float* q[kMaxAttendBatch];
  float* out[kMaxAttendBatch];
  int n_keys[kMaxAttendBatch];
  int kv_head[kMaxAttendBatch];
  int kv_first;
  int kv_count;
  int count;
};

// Keys per attention block for a batch spanning `span` floats of each cache row (kv_count * head_dim): the block's
// K and V copies (2 * keys * span floats) stay within L1 for one kv head and within L2 for wide spans.
inline constexpr int attend_block_keys(int64_t span) {
  const int64_t keys = 2048 / (span < 1 ? 1 : span);
  return keys >= 64 ? 64 : keys <= 8 ? 8 : static_cast<int>(keys) / 8 * 8;
}
// Scratch the attend kernel needs for a batch spanning `span` floats of a cache row.
inline constexpr int64_t attend_scratch_floats(int64_t span) {
  return 2 * attend_block_keys(span) * span;
}

// No default member initializers on purpose: the struct stays trivial, so neither kernel translation unit
// emits a constructor (a copy built with -mavx2 could otherwise be picked by the linker for everyone).
struct Kernels {
  const char* name;

  // GEMV building blocks (decode). out[j] = x . rows[j] for j < 4, each row `cols` elements of the dtype.
  // Four rows per call so x is loaded once per four weight streams. next (may be null) names the four rows the
  // caller will pass next; they are only prefetched. One entry per DType.
  void (*dot4[kNumDtypes])(const float* x, const void* const* rows, const void* const* next, int64_t cols, float* out);
  // x . row for a single row (ragged row counts).
  float (*dot1[kNumDtypes])(const float* x, const void* row, int64_t cols);

  // GEMM packing: panel[k][0..width) = fp32(w row r, column k0 + k) for k < kc, r < width, with rows r >= nr
  // (missing at a ragged edge) written as zeros. w points at the first row; ld is the row stride in elements.
  // Panel rows are kGemmNR floats apart, so two width-8 packs (gate, up) can share one panel.
  void (*pack[kNumDtypes])(const void* w, int64_t ld, int nr, int width, int64_t k0, int64_t kc, float* panel);

  // GEMM micro-kernel: for i < mr (mr <= kGemmMR), c[i*ldc + j] = s + sum_k x[i*ldx + k] * panel[k*kGemmNR + j]
  // for j < kGemmNR, where s = init[j] when init is non-null and the previous c[i*ldc + j] otherwise.
  // c rows must have kGemmNR writable floats.
  void (*gemm_tile)(const float* x, int64_t ldx, int mr, const float* panel, int64_t kc, const float* init, float* c,
                    int64_t ldc);

  // Causal attention with online softmax for a batch of query vectors (the heads of one or more GQA groups, over
  // one or more query rows): for each b < batch.count, with kv = batch.kv_head[b],
  //   out[b][d] = sum_{j < n_keys[b]} softmax_j(scale * q[b] . k_j) v_j[d],
  //   k_j = k + j*kv_stride + kv*head_dim, likewise v.
  // The batch walks the keys in blocks: each block's rows (the batch's span of kv heads) are copied once into
  // scratch and every query of the batch reads them from there. Cache rows are kv_stride floats apart (often a
  // multiple of 4 KiB), so reading one head's slice of many rows in place would be a page-strided walk the
  // hardware prefetchers do not follow and that aliases in L1; the copy walks rows sequentially instead.
  // n_keys[b] >= 1. out rows are the accumulators (overwritten, never read first). scratch holds
  // attend_scratch_floats(kv_count * head_dim) floats.
  void (*attend)(const AttendBatch& batch, const float* k, const float* v, int64_t kv_stride, int head_dim, float scale,
                 float* scratch);

  // Sum of squares of x[0..n) (rmsnorm).
  float (*sum_squares)(const float* x, int64_t n);
  // y[i] = x[i] * w[i] * s; y may alias x.
  void (*scale_mul)(const float* x, const float* w, float s, int64_t n, float* y);
  // y[i] += x[i].
  void (*add)(float* y, const float* x, int64_t n);
  // out[i] = fp32(row[i]) for i < n (embedding lookup). One entry per DType.
  void (*to_f32[kNumDtypes])(const void* row, int64_t n, float* out);
  // Largest value of x[0..n), NaNs ignored; -inf when there is none (argmax pass 1).
  float (*max_value)(const float* x, int64_t n);
};

const Kernels& portable_kernels();
// Only valid to call when cpu_features().has_avx2_fma().
const Kernels& avx2_kernels();

}  // namespace tessera::cpu
