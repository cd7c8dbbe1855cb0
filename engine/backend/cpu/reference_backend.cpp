#include "engine/backend/cpu/reference_backend.h"

#include "engine/backend/cpu/reference_ops.h"

namespace tessera {

void ReferenceBackend::matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  ref::matmul(x, n, w, bias, y);
}

void ReferenceBackend::matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
  ref::matmul_silu_mul(x, n, gate, up, out);
}

void ReferenceBackend::rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) {
  ref::rmsnorm(x, w, n, dim, eps, y);
}

void ReferenceBackend::rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) {
  ref::rope(x, n, n_heads, positions, table);
}

void ReferenceBackend::attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape,
                                 float* out) {
  ref::attention(q, n, pos0, kv, shape, out);
}

void ReferenceBackend::add(float* y, const float* x, size_t count) {
  ref::add(y, x, count);
}

void ReferenceBackend::embedding(const Matrix& table, const int* tokens, int n, float* out) {
  ref::embedding(table, tokens, n, out);
}

int ReferenceBackend::argmax(const float* x, int n) {
  return ref::argmax(x, n);
}

}  // namespace tessera
