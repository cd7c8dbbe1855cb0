// A Backend made only of the portable reference twins, single-threaded: the oracle that optimized backends
// and kernels are tested against.
#pragma once

#include "engine/backend/backend.h"

namespace tessera {

class ReferenceBackend final : public Backend {
 public:
  std::string name() const override { return "reference"; }
  void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) override;
  void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) override;
  void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) override;
  void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) override;
  void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out) override;
  void add(float* y, const float* x, size_t count) override;
  void embedding(const Matrix& table, const int* tokens, int n, float* out) override;
  int argmax(const float* x, int n) override;
};

}  // namespace tessera
