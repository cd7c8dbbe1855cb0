// The CPU backend: multithreaded ops over a ThreadPool, inner loops from the best kernel set the CPU supports
// (AVX-512 with BF16, AVX-512, AVX2+FMA+F16C or portable), picked once at construction from cpuid.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "engine/backend/backend.h"
#include "engine/core/thread_pool.h"

namespace tessera {

enum class CpuKernels { kAuto, kPortable, kAvx2, kAvx512, kAvx512Bf16 };

// Dynamic activation quantization for int8 (Q8) weights: kInt8 quantizes each activation row to int8 at run time
// so the dot products run in int8 (--act-quant int8). Int4/NF4 GEMV always uses int8 activation blocks.
enum class ActQuant { kNone, kInt8 };

class CpuBackend final : public Backend {
 public:
  // n_threads <= 0 means ThreadPool::default_threads(). Asking for kAvx2 or kAvx512 on a CPU without it throws
  // tessera::Error.
  explicit CpuBackend(int n_threads = 0, CpuKernels kernels = CpuKernels::kAuto);
  ~CpuBackend() override;

  std::string name() const override;  // e.g. "cpu(avx2, 2 threads)"
  int threads() const { return pool_.size(); }
  void set_activation_quant(ActQuant mode) { act_quant_ = mode; }
  // bf16 activations for BF16 weights: every matmul with a BF16 weight first rounds its input rows to bf16, so
  // each product is of two bf16 values (exact in fp32) and the sums are fp32, as llama.cpp and cuBLAS compute bf16
  // models. On CPUs with AVX512_BF16 the kernels then use vdpbf16ps (the batched tile about 2.5x as fast);
  // elsewhere the fp32-activation kernels read the rounded values. Every row, prefill included, goes through the
  // per-row (decode) kernels: rounding to bf16 turns a last-bit difference into a bf16 step, so a row must get the
  // same bits whether its sequence was prefilled, decoded, recomputed after preemption or chunked differently
  // (at prefill sizes the batched tile is as fast as the GEMM). Off (the default here): fp32 activations.
  void set_bf16_activations(bool on) { bf16_act_ = on; }
  bool bf16_activations() const { return bf16_act_; }
  // Q4/Q4A matrices are copied into the panel layout (engine/backend/cpu/panel8.h, kept for the backend's
  // lifetime); other weights are used in place. Not thread-safe (models upload at construction).
  Matrix upload(const Matrix& host) override;
  ActQuant activation_quant() const { return act_quant_; }

  void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) override;
  void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override;
  // The decode kernels for several rows: each weight row is streamed once and dotted with every x row.
  void matmul_rows(const float* x, int n, const Matrix& w, const float* bias, float* y) override;
  void matmul_silu_mul_rows(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override;
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override;
  void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) override;
  void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out) override;
  void attention_batch(std::span<const AttentionCall> calls, const AttentionShape& shape) override;
  void add(float* y, const float* x, size_t count) override;
  void embedding(const Matrix& table, const int* tokens, int n, float* out) override;
  int argmax(const float* x, int n) override;

 private:
  // rowwise: the decode kernels for every row; otherwise the GEMM.
  void matmul_impl(const float* x, int n, const Matrix& w, const float* bias, float* y, bool rowwise);
  void matmul_silu_mul_impl(const float* x, int n, const Matrix& gate, const Matrix& up, float* out, bool rowwise);

  // Makes the first n_slots pool slots' attend scratch hold `floats` (outside the hot loops; kept for later calls).
  void reserve_attend_scratch(int n_slots, size_t floats);

  struct Impl;
  ThreadPool pool_;
  std::unique_ptr<Impl> impl_;
  ActQuant act_quant_ = ActQuant::kNone;
  bool bf16_act_ = false;
};

}  // namespace tessera
