// Launchers of the CUDA kernels (implemented in the .cu files of this folder). Plain C++ so the backend and tests
// compile with the host compiler. Every pointer is device memory; every launcher queues on `stream` and checks
// the launch. Semantics follow the reference ops (engine/backend/cpu/reference_ops.h).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "engine/backend/cuda/device_layout.h"

namespace tessera::cuda {

// Rows of activations up to which matmuls run as GEMV (one pass over the weights, fp32 throughout); above it
// quantized weights go through the tensor-core GEMM and plain weights through cuBLAS. Quantized weights stay on
// the GEMV longer: it reads the codes once for all rows, and dequantizing is shared by them.
inline constexpr int kGemvMaxRows = 8;
inline constexpr int kGemvQuantMaxRows = 16;
inline int gemv_max_rows(DType t) {
  return is_quantized(t) ? kGemvQuantMaxRows : kGemvMaxRows;
}

// y[i][r] = x[i] . W[r] (+ bias[r]) for i < n <= gemv_max_rows(dtype), any dtype but Q4/Q4A (launch_mma_q4). With `up`
// (silu != null): fused MLP, y[i][r] = silu(x[i] . W[r]) * (x[i] . up[r]) where up has W's layout; bias must be null
// then.
void launch_gemv(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                 float* y, cudaStream_t stream);

// The quantized part of launch_gemv (Q8/NF4; gemv_quant.cu). vec: x rows are 16-byte aligned.
void launch_gemv_quant(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                       float* y, bool vec, cudaStream_t stream);
// Benchmark knob: weight rows per warp of the quantized GEMV (1, 2 or 4; 0 restores the per-call choice).
void set_gemv_quant_rows_per_warp(int rpw);

// Q4/Q4A weights (tiled layout) and any n: tensor-core matmul (mma.sync m16n8k16, weights dequantized to fp16 in
// registers, activations rounded to fp16, fp32 accumulation; mma_q4.cu). Same contract as launch_gemv.
void launch_mma_q4(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                   float* y, cudaStream_t stream);
// Benchmark and test knob of launch_mma_q4's paths: 0 the per-call choice (default); 1 the weights scaled in fp16
// before the mma and activations loaded into registers by every warp; 2 the scale applied after the mma where the
// format allows it (symmetric Q4, groups >= 64), activations still in registers. The default also stages up to 8
// activation rows in shared memory as fp16 when they fit.
void set_mma_q4_path(int path);
// Benchmark knob: launch the int4 kernel with programmatic dependent launch (default on; sm_90), so it loads its
// weights while the previous kernel in the stream finishes.
void set_mma_q4_overlap(bool on);

// The same for Q8/NF4 W and any n: tiled GEMM on tensor cores (WMMA m16n16k16, fp16 operands
// with fp32 accumulation; weights dequantized into shared memory, activations rounded to fp16).
void launch_gemm_quant(const float* x, int n, const DeviceLayout& l, const void* w, const void* up, const float* bias,
                       float* y, cudaStream_t stream);

// Causal attention (see Backend::attention). `partials` is scratch of attention_partials_floats() floats (may be
// null when that is 0). n_sm: multiprocessors, to decide how many key splits decode needs.
struct AttentionArgs {
  const float* q;
  int n, pos0;
  const float* k;
  const float* v;
  int kv_stride;  // floats between cache rows
  int n_heads, n_kv_heads, head_dim;
  float* out;
};
int attention_splits(const AttentionArgs& a, int n_sm);
size_t attention_partials_floats(const AttentionArgs& a, int splits);
void launch_attention(const AttentionArgs& a, int splits, float* partials, cudaStream_t stream);
// Largest head_dim the attention kernel takes.
inline constexpr int kMaxHeadDim = 256;
// Sets the kernel's dynamic shared-memory limit for head_dim up to kMaxHeadDim (once per device).
void configure_attention_kernel();

// y = x * w / rms(x) per row (y may alias x).
void launch_rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y, cudaStream_t stream);
// Residual stream and norm in one pass: x += delta, then y = rmsnorm(x) (y must not alias x or delta).
void launch_add_rmsnorm(float* x, const float* delta, const float* w, int n, int dim, float eps, float* y,
                        cudaStream_t stream);
// In-place rotation of n rows of n_heads heads; positions on the device, already checked against max_pos.
void launch_rope(float* x, int n, int n_heads, const int* positions, const float* cos, const float* sin, int half_dim,
                 bool interleaved, cudaStream_t stream);
void launch_add(float* y, const float* x, size_t count, cudaStream_t stream);
// out[i] = silu(g[i]) * u[i].
void launch_silu_mul(const float* g, const float* u, size_t count, float* out, cudaStream_t stream);
// y[i][r] = bias[r] for n rows of `cols`.
void launch_broadcast_rows(const float* bias, int n, int64_t cols, float* y, cudaStream_t stream);
// out[i] = row tokens[i] of the table (device layout), tokens on the device and already range-checked.
void launch_embedding(const DeviceLayout& l, const void* table, const int* tokens, int n, float* out,
                      cudaStream_t stream);
// fp32 -> fp16 / bf16 (round to nearest even), for the cuBLAS path of plain half weights.
void launch_to_half(const float* x, size_t count, bool bf16, void* out, cudaStream_t stream);
// Writes the argmax of x[0..n) (first on ties, NaN never wins, 0 if all NaN) to *result (device int).
// `scratch` holds argmax_scratch_bytes(n) bytes.
size_t argmax_scratch_bytes(int n);
void launch_argmax(const float* x, int n, void* scratch, int* result, cudaStream_t stream);

}  // namespace tessera::cuda
