// Private to the CPU backend: the table of inner-loop kernels that CpuBackend drives from its threads.
//
// Two sets fill it: kernels_portable.cpp (plain C++, baseline x86-64) and kernels_avx2.cpp (the only translation
// unit built with -mavx2 -mfma -mf16c; only handed out when cpuid says the CPU has all three). The drivers in
// cpu_backend.cpp own blocking, threading and scratch; kernels never allocate and never touch threads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/backend/backend.h"
#include "engine/core/dtype.h"
#include "quant/blocks.h"

namespace tessera::cpu {

// GEMM register tile: kGemmMR activation rows x kGemmNR outputs (two ymm of 8 floats) per micro-kernel call, or
// Kernels::gemm_tile_rows rows (up to kMaxGemmMR) in sets with a taller tile.
inline constexpr int kGemmMR = 6;
inline constexpr int kMaxGemmMR = 12;
inline constexpr int kGemmNR = 16;

// Per-dtype entries are indexed by the DType value.
inline constexpr int kNumDtypes = kNumDTypes;
inline constexpr int kF32 = static_cast<int>(DType::F32);
inline constexpr int kF16 = static_cast<int>(DType::F16);
inline constexpr int kBF16 = static_cast<int>(DType::BF16);
inline constexpr int kQ8 = static_cast<int>(DType::Q8);
inline constexpr int kQ4 = static_cast<int>(DType::Q4);
inline constexpr int kQ4A = static_cast<int>(DType::Q4A);
inline constexpr int kNF4 = static_cast<int>(DType::NF4);

// Integer GEMM (int8 weights x int8 activations, both widened to int16 for vpmaddwd): register tile of
// kGemmI8MR activation rows x kGemmNR outputs. The k extent of one call is a multiple of kQ8ActBlock.
inline constexpr int kGemmI8MR = 6;
inline constexpr int kQ8ActBlock = 32;  // values per quant::BlockQ8Act

// The NF4 levels as int8 for integer dot products: round(127 * kNf4Levels[q]). An int8-activation NF4 dot uses
// w ~= (d / 127) * kNf4Int8[q], which differs from the stored level by at most d / 254.
inline constexpr int8_t kNf4Int8[16] = {-127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127};

// Most x rows one dot2xm call takes in any kernel set (Kernels::dot_tile_rows is the set's own limit: 6 in AVX2,
// whose tile holds 12 ymm accumulators; 12 in AVX-512, one zmm per x row).
inline constexpr int kMaxDotTileRows = 12;

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
// Keys per block when each query of a batch has a kv head to itself (decode without GQA): the queries read the cache
// in place, in blocks at fixed multiples of this many rows.
inline constexpr int kAttendDirectKeys = 16;
// Scratch the attend kernel needs for a batch spanning `span` floats of a cache row.
inline constexpr int64_t attend_scratch_floats(int64_t span) {
  const int keys = attend_block_keys(span);
  return 2 * (keys > kAttendDirectKeys ? keys : kAttendDirectKeys) * span;
}

// No default member initializers on purpose: the struct stays trivial, so neither kernel translation unit
// emits a constructor (a copy built with -mavx2 could otherwise be picked by the linker for everyone).
struct Kernels {
  const char* name;

  // GEMV building blocks (decode), fp32 activations. out[j] = x . rows[j] for j < 4, each row `cols` values of
  // the dtype (a Q8 row is its scale then the int8 values: the result includes the scale). Four rows per call so
  // x is loaded once per four weight streams. next (may be null) names the four rows the caller will pass next;
  // they are only prefetched. Entries for F32, F16, BF16 and Q8; null for the grouped types.
  void (*dot4[kNumDtypes])(const float* x, const void* const* rows, const void* const* next, int64_t cols, float* out);
  // x . row for a single row (ragged row counts).
  float (*dot1[kNumDtypes])(const float* x, const void* row, int64_t cols);
  // dot4 for two x rows (x and x + ldx) in one pass over the weights: out[j] and out[ldo + j]. Each row's results
  // are bit for bit dot4's for that row alone (batched decode must not change a sequence's output). Entries for
  // F32, F16 and BF16; null otherwise (drivers then call dot4 per row).
  void (*dot4x2[kNumDtypes])(const float* x, int64_t ldx, const void* const* rows, const void* const* next,
                             int64_t cols, float* out, int64_t ldo);
  // Batched decode tile: two weight rows (rows[0], rows[1]) against m x rows (1 <= m <= dot_tile_rows, x + i*ldx):
  // out[i*ldo + j] = x_i . rows[j]. Every result is bit for bit dot4's for that x row and weight row, so a driver
  // may tile a batch any way it likes. next (may be null) names two rows of the same length to bring into cache, a
  // line of each per line of rows (prefetch only): the tiled drivers pass rows one cache block ahead, so the block
  // after this one arrives from memory while this one is computed on.
  // Entries for F32, F16 and BF16; null otherwise.
  void (*dot2xm[kNumDtypes])(const float* x, int64_t ldx, int m, const void* const* rows, const void* const* next,
                             int64_t cols, float* out, int64_t ldo);
  int dot_tile_rows;  // <= kMaxDotTileRows

  // Decode for BF16 weights with bf16 activations (x rows rounded to bf16 once per matmul): dot4, dot4x2, dot2xm and
  // dot1 with uint16_t bf16 x rows, the same shapes and the same contract (every x row's results are bit for bit
  // the same whichever of the four computes them). Products of two bf16 values are exact in fp32; they are summed
  // in pairs into fp32 lanes (vdpbf16ps). Only the set built for AVX512_BF16 has them (null elsewhere: drivers
  // then round x to bf16 values in fp32 and call the fp32-activation kernels). Under bf16 activations the drivers
  // use these (or those) for prefill rows too, so there is no bf16 GEMM tile.
  void (*bdot4)(const uint16_t* x, const void* const* rows, const void* const* next, int64_t cols, float* out);
  float (*bdot1)(const uint16_t* x, const void* row, int64_t cols);
  void (*bdot4x2)(const uint16_t* x, int64_t ldx, const void* const* rows, const void* const* next, int64_t cols,
                  float* out, int64_t ldo);
  void (*bdot2xm)(const uint16_t* x, int64_t ldx, int m, const void* const* rows, const void* const* next, int64_t cols,
                  float* out, int64_t ldo);

  // GEMV with int8 activations: x is ceil(cols / 32) BlockQ8Act blocks (zero-padded), rows are stored rows of
  // the dtype with quantization group `group`. out[j] ~= dequant(x) . dequant(rows[j]), computed with integer
  // dot products per 32 values and one float scale per (row block, activation block). NF4 uses kNf4Int8.
  // Entries for Q8, Q4, Q4A and NF4.
  void (*qdot4[kNumDtypes])(const quant::BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols,
                            int group, float* out);
  float (*qdot1[kNumDtypes])(const quant::BlockQ8Act* x, const void* row, int64_t cols, int group);
  // The same for eight rows per call, where a set has a faster eight-row kernel (null otherwise; then drivers
  // use qdot4). Valid for every group of the dtype.
  void (*qdot8[kNumDtypes])(const quant::BlockQ8Act* x, const void* const* rows, const void* const* next, int64_t cols,
                            int group, float* out);
  // Q4/Q4A in the panel layout (panel8.h): the eight rows of one panel against x (ceil(cols / 32) activation
  // blocks), out[j] for j < 8. Per row the arithmetic of the dtype's canonical kernels of the same set (the AVX2
  // one: qdot8's for 32-value groups), so the layouts agree to float rounding. Entries for Q4 and Q4A.
  void (*qdot_panel[kNumDtypes])(const quant::BlockQ8Act* x, const void* panel, int64_t cols, int group, float* out);
  // Four panels (of one matrix or of several of the same shape) against the same x: out[k][j] = qdot_panel's
  // out[j] for panels[k], bit for bit, walked in lockstep so that batch-1 decode reads four streams (one stream kept
  // too few cache misses in flight to reach the memory bandwidth at one thread). The AVX2 and AVX-512 sets have it;
  // null in the portable set, where drivers call qdot_panel per panel. Entries for Q4 and Q4A.
  void (*qdot_panel4[kNumDtypes])(const quant::BlockQ8Act* x, const void* const* panels, int64_t cols, int group,
                                  float* const* out);
  // Kernels::pack from a panel: panel_out[k*kGemmNR + j] = fp32(row j, column k0 + k) for j < 8, k < kc, bit for
  // bit the canonical dequantization. k0 is a multiple of `group`. Entries for Q4 and Q4A.
  void (*pack_panel[kNumDtypes])(const void* panel, int group, int64_t k0, int64_t kc, float* panel_out);
  // Quantizes n activations into ceil(n / 32) blocks; bit-identical to quant::quantize_activations.
  void (*quantize_act)(const float* x, int64_t n, quant::BlockQ8Act* out);

  // out[i] = fp32(value k0 + i of a stored row) for i < kc, any dtype (embedding lookup, panel packing). For the
  // grouped types k0 is a multiple of `group`.
  void (*dequant[kNumDtypes])(const void* row, int group, int64_t k0, int64_t kc, float* out);

  // GEMM packing: panel[k][0..width) = fp32(w row r, column k0 + k) for k < kc, r < width, with rows r >= nr
  // (missing at a ragged edge) written as zeros. w points at the first row; rows are row_bytes apart; group is
  // the quantization group (k0 is a multiple of it for the grouped types). Quantized rows are dequantized.
  // Panel rows are kGemmNR floats apart, so two width-8 packs (gate, up) can share one panel.
  void (*pack[kNumDtypes])(const void* w, size_t row_bytes, int group, int nr, int width, int64_t k0, int64_t kc,
                           float* panel);

  // GEMM micro-kernel: for i < mr (mr <= gemm_tile_rows), c[i*ldc + j] = s + sum_k x[i*ldx + k] * panel[k*kGemmNR + j]
  // for j < kGemmNR, where s = init[j] when init is non-null and the previous c[i*ldc + j] otherwise.
  // c rows must have kGemmNR writable floats.
  void (*gemm_tile)(const float* x, int64_t ldx, int mr, const float* panel, int64_t kc, const float* init, float* c,
                    int64_t ldc);
  int gemm_tile_rows;  // kGemmMR, or up to kMaxGemmMR

  // Integer GEMM for Q8 weights with int8 activations (prefill with ActQuant::kInt8). The formats below are the
  // portable and AVX2 sets'; the AVX-512 set stores its own (unsigned activation bytes, int8 quads and column sums
  // for vpdpbusd) in the same storage, so a driver must take expand_act, pack_i8 and gemm_i8_tile from one set.
  // Activations: each row's BlockQ8Act blocks widened to int16 values (x16, kc-padded with zeros) plus one float
  // scale per 32 values (xs): expand_act(blocks, nblocks, x16 + i*ldx, xs + i*ldxs).
  void (*expand_act)(const quant::BlockQ8Act* x, int64_t nblocks, int16_t* x16, float* xs);
  // Weight panel of int16 pairs: for k < kc (a multiple of 32), output j < width:
  //   panel[(k / 2) * 2 * kGemmNR + 2 * j + k % 2] = q(row j, column k0 + k), 0 for columns >= cols or rows >= nr;
  // scales[j] = row j's Q8 scale (0 for missing rows). Like pack, two width-8 packs can share one panel (the
  // second at panel + kGemmNR, scales + 8).
  void (*pack_i8)(const void* w, size_t row_bytes, int64_t cols, int nr, int width, int64_t k0, int64_t kc,
                  int16_t* panel, float* scales);
  // For i < mr (mr <= kGemmI8MR), j < kGemmNR:
  //   c[i*ldc + j] = (first ? 0 : c[i*ldc + j]) + sum_{b < kc/32} xs[i*ldxs + b] * sum_{k in block b} x[i*ldx + k] *
  //   w_kj
  // with w_kj from the panel: exact integer sums per 32 values, one float multiply-add per block. The weight scale
  // is applied by the caller. c rows must have kGemmNR writable floats.
  void (*gemm_i8_tile)(const int16_t* x, int64_t ldx, const float* xs, int64_t ldxs, int mr, const int16_t* panel,
                       int64_t kc, bool first, float* c, int64_t ldc);

  // Causal attention with online softmax for a batch of query vectors (the heads of one or more GQA groups, over
  // one or more query rows): for each b < batch.count, with kv = batch.kv_head[b],
  //   out[b][d] = sum_{j < n_keys[b]} softmax_j(scale * q[b] . k_j) v_j[d],
  //   k_j = k + j*kv_stride + kv*head_dim, likewise v.
  // The batch walks the keys in blocks: each block's rows (the batch's span of kv heads) are copied once into
  // scratch and every query of the batch reads them from there. Cache rows are kv_stride floats apart (often a
  // multiple of 4 KiB), so reading one head's slice of many rows in place would be a page-strided walk the
  // hardware prefetchers do not follow and that aliases in L1; the copy walks rows sequentially instead. A batch
  // where every query has its own kv head (decode without GQA) has nothing to share: its queries read the cache
  // in place, kAttendDirectKeys rows at a time.
  // n_keys[b] >= 1. out rows are the accumulators (overwritten, never read first). scratch holds
  // attend_scratch_floats(kv_count * head_dim) floats.
  void (*attend)(const AttendBatch& batch, const KvLayer& kv, int head_dim, float scale, float* scratch);

  // Sum of squares of x[0..n) (rmsnorm).
  float (*sum_squares)(const float* x, int64_t n);
  // y[i] = x[i] * w[i] * s; y may alias x.
  void (*scale_mul)(const float* x, const float* w, float s, int64_t n, float* y);
  // y[i] += x[i].
  void (*add)(float* y, const float* x, int64_t n);
  // Largest value of x[0..n), NaNs ignored; -inf when there is none (argmax pass 1).
  float (*max_value)(const float* x, int64_t n);
};

const Kernels& portable_kernels();
// Only valid to call when cpu_features().has_avx2_fma().
const Kernels& avx2_kernels();
// The AVX2 set with 512-bit GEMM micro-kernels and GEMVs for Q8 (fp32 and int8 activations), Q4/Q4A panels and 2:4
// (kernels_avx512.cpp, kernels_quant_avx512.cpp, kernels_sparse_avx512.cpp), bit for bit the AVX2 results. Only valid
// to call when cpu_features().has_avx512().
const Kernels& avx512_kernels();

// The AVX-512 set plus the bf16 x bf16 decode kernels (kernels_bf16_avx512.cpp, the one translation unit built with
// -mavx512bf16). Only valid to call when cpu_features().has_avx512_bf16().
const Kernels& avx512_bf16_kernels();

// The quantized-weight entries (qdot8, qdot4, qdot1, quantize_act, dequant and pack for Q8/Q4/Q4A/NF4, dot4/dot1 for
// Q8, expand_act, pack_i8, gemm_i8_tile), filled in by kernels_quant_portable.cpp and kernels_quant_avx2.cpp (the
// latter built with the AVX2 flags and only called from avx2_kernels()).
void add_quant_portable_kernels(Kernels& k);
void add_quant_avx2_kernels(Kernels& k);

// The 2:4 sparse entries (qdot4, qdot1, dequant and pack for S24Q8/S24Q4): kernels_sparse_portable.cpp, and
// kernels_sparse_avx2.cpp (AVX2 flags; its decode kernels replace the portable ones, the rest are shared).
void add_sparse_portable_kernels(Kernels& k);
void add_sparse_avx2_kernels(Kernels& k);
// The AVX-512 int8-activation decode kernels (qdot1/4/8 for Q8, qdot_panel for Q4/Q4A; kernels_quant_avx512.cpp) and
// 2:4 decode kernels (qdot1, qdot4, qdot8 for S24Q8/S24Q4; kernels_sparse_avx512.cpp), built with the AVX-512 flags,
// bit for bit the AVX2 ones; avx512_kernels() puts them over the AVX2 set's.
void add_quant_avx512_kernels(Kernels& k);
void add_sparse_avx512_kernels(Kernels& k);

// A row dequantizer, as in Kernels::dequant.
using DequantRowFn = void (*)(const void* row, int group, int64_t k0, int64_t kc, float* out);
// Kernels::pack for any type with a dequantizer (AVX2 flags, kernels_quant_avx2.cpp): each group of 8 rows is
// dequantized into scratch and transposed 8x8 at a time into panel order. Only valid under avx2_kernels().
void pack_dequantized_avx2(DequantRowFn dequant, const void* w, size_t row_bytes, int group, int nr, int width,
                           int64_t k0, int64_t kc, float* panel);

}  // namespace tessera::cpu
