// The small op interface the model is written against. CPU implements it now; CUDA and tensor-parallel
// wrappers plug in later without touching model code. Activations are fp32; weights are Matrix views.
//
// Pointers are in the backend's memory space (host memory for CPU; see host_memory() and allocate()). Shapes are
// row-major; "n" is the number of token rows processed together (1 for decode, the prompt length for prefill).
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "engine/backend/backend_buffer.h"
#include "engine/core/tensor.h"
#include "engine/model/model_config.h"

namespace tessera {

// Precomputed rotation for every position: cos/sin[pos][head_dim/2] (frequency scaling already applied).
struct RopeTable {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int half_dim = 0;  // head_dim / 2
  int max_pos = 0;
  RopeStyle style = RopeStyle::kInterleaved;
};

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // n_heads % n_kv_heads == 0 (GQA: query head h reads kv head h / (n_heads / n_kv_heads))
  int head_dim = 0;
};

// One layer of one sequence's KV cache: logical row p (position p) holds kv_dim = n_kv_heads*head_dim floats of
// keys in k and of values in v. Contiguous (blocks == nullptr): row p is at p * stride. Paged: rows live in blocks
// of 2^block_shift rows of a shared pool, and row p is row p % block_size of pool block blocks[p / block_size]
// (the block table, host memory). The model and the kernels reach rows only through k_row/v_row (or row_offset),
// so either layout serves every op.
struct KvLayer {
  float* k = nullptr;
  float* v = nullptr;
  int capacity = 0;             // logical rows
  int stride = 0;               // floats from one row to the next within a block (kv_dim)
  const int* blocks = nullptr;  // paged: physical block of each logical block; null: contiguous
  int block_shift = 0;          // paged: log2(rows per block)

  bool paged() const { return blocks != nullptr; }
  // Floats from k (or v) to logical row pos.
  size_t row_offset(int pos) const;
  float* k_row(int pos) const { return k + row_offset(pos); }
  float* v_row(int pos) const { return v + row_offset(pos); }
  // Rows pos, pos+1, ... that follow each other in memory (up to `limit` of them): to the end of pos's block.
  int contiguous_rows(int pos, int limit) const;
};

// KvLayer::row_offset. Internal linkage on purpose: the AVX2 kernel translation unit calls this directly, and its
// copy must never be the one the linker keeps for code that runs on CPUs without AVX2 (an inline member would be).
static inline size_t kv_row_offset(const KvLayer& kv, int pos) {
  size_t row = static_cast<size_t>(pos);
  if (kv.blocks != nullptr) {
    const int mask = (1 << kv.block_shift) - 1;
    row = (static_cast<size_t>(kv.blocks[pos >> kv.block_shift]) << kv.block_shift) | static_cast<size_t>(pos & mask);
  }
  return row * static_cast<size_t>(kv.stride);
}

// KvLayer::contiguous_rows, with internal linkage for the same reason.
static inline int kv_contiguous_rows(const KvLayer& kv, int pos, int limit) {
  if (kv.blocks == nullptr) return limit;
  const int left = (1 << kv.block_shift) - (pos & ((1 << kv.block_shift) - 1));
  return left < limit ? left : limit;
}

inline size_t KvLayer::row_offset(int pos) const {
  return kv_row_offset(*this, pos);
}
inline int KvLayer::contiguous_rows(int pos, int limit) const {
  return kv_contiguous_rows(*this, pos, limit);
}

// One sequence's attention call (see Backend::attention): n query rows at positions pos0.. against its cache.
struct AttentionCall {
  const float* q = nullptr;
  float* out = nullptr;
  int n = 0;
  int pos0 = 0;
  KvLayer kv;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // --- memory -------------------------------------------------------------------------------------------------
  // The defaults serve backends that compute in host memory (CPU, reference); a device backend overrides all.
  // The model allocates and uploads only at construction (and KV caches when they are made), never in forward.

  // True when the backend's memory is host memory: its pointers may be read and written by host code.
  virtual bool host_memory() const { return true; }
  // `bytes` of zeroed backend memory (host: 64-byte aligned).
  virtual BackendBuffer allocate(size_t bytes) { return allocate_host_buffer(bytes); }
  // Host -> backend; the host source may be reused as soon as the call returns.
  virtual void copy_to_backend(void* dst, const void* host_src, size_t bytes) { std::memcpy(dst, host_src, bytes); }
  // Backend -> host; waits for the backend's queued work and the copy.
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) { std::memcpy(host_dst, src, bytes); }
  // Within backend memory (ordered with the ops).
  virtual void copy(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  // Returns once every op queued so far has finished: before another agent (an NCCL stream) reads or writes
  // backend memory the ops wrote or will read. Host backends finish each op before returning.
  virtual void synchronize() {}
  // A view of a weight matrix that this backend's ops accept, valid while the backend and `host`'s storage live.
  // Host backends return `host` itself (no copy); a device backend keeps a device copy in its own layout.
  virtual Matrix upload(const Matrix& host) { return host; }

  // y[i][r] = sum_c x[i][c] * w[r][c] + (bias ? bias[r] : 0), for i < n. x: [n][w.cols], y: [n][w.rows].
  virtual void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) = 0;

  // Fused MLP front half: out[i][h] = silu(x[i]·gate[h]) * (x[i]·up[h]). gate, up: [hidden][dim]; out: [n][hidden].
  virtual void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) = 0;

  // matmul and matmul_silu_mul for rows that each stand alone (one decoded token per sequence of a batch): every
  // row's result is bit for bit what the op gives for that row alone (n == 1), so a sequence's output does not
  // depend on the batch around it. Backends may use their few-rows kernels for any n; these defaults loop.
  virtual void matmul_rows(const float* x, int n, const Matrix& w, const float* bias, float* y) {
    for (int i = 0; i < n; ++i) {
      matmul(x + static_cast<size_t>(i) * static_cast<size_t>(w.cols), 1, w, bias,
             y + static_cast<size_t>(i) * static_cast<size_t>(w.rows));
    }
  }
  virtual void matmul_silu_mul_rows(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
    for (int i = 0; i < n; ++i) {
      matmul_silu_mul(x + static_cast<size_t>(i) * static_cast<size_t>(gate.cols), 1, gate, up,
                      out + static_cast<size_t>(i) * static_cast<size_t>(gate.rows));
    }
  }

  // y[i] = x[i] * w / sqrt(mean(x[i]^2) + eps) for n rows of dim. y may alias x.
  virtual void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) = 0;

  // Rotates, in place, n rows of n_heads heads (row stride n_heads*2*table.half_dim); row i is at positions[i].
  virtual void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) = 0;

  // Causal attention for n query rows at positions pos0..pos0+n-1, attending to cache rows 0..pos0+i.
  // The cache must already hold keys/values for rows < pos0+n. Online softmax: no score matrix.
  // q: [n][n_heads*head_dim]; out: [n][n_heads*head_dim].
  virtual void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape,
                         float* out) = 0;

  // attention() for several sequences of one step (same layer, so the same shape): every call's result is bit for
  // bit what attention() gives it alone. Backends may run the calls together; this default loops.
  virtual void attention_batch(std::span<const AttentionCall> calls, const AttentionShape& shape) {
    for (const AttentionCall& c : calls) attention(c.q, c.n, c.pos0, c.kv, shape, c.out);
  }

  // y[i] += x[i] for i < count.
  virtual void add(float* y, const float* x, size_t count) = 0;

  // out[i] = table row tokens[i] as fp32. out: [n][table.cols].
  virtual void embedding(const Matrix& table, const int* tokens, int n, float* out) = 0;

  // Index of the largest of n values (the first one on ties): greedy sampling without a host copy.
  virtual int argmax(const float* x, int n) = 0;
};

}  // namespace tessera
