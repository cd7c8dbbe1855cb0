// The reference twins of the Backend ops: plain, single-threaded, obviously-correct loops that accumulate in
// double. They are the oracle for every optimized kernel, so they favour clarity over speed. Same contracts as
// the matching Backend methods in engine/backend/backend.h.
#pragma once

#include <cstddef>

#include "engine/backend/backend.h"

namespace tessera::ref {

void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y);
void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out);
void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y);
void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table);
void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out);
void add(float* y, const float* x, size_t count);
void embedding(const Matrix& table, const int* tokens, int n, float* out);
// First index of the largest value; NaNs are never the maximum; 0 when every value is NaN.
int argmax(const float* x, int n);

// silu(g) * u in double, shared by the twins of the fused MLP op.
double silu_mul(double g, double u);

}  // namespace tessera::ref
