#include "engine/backend/cpu/reference_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/check.h"
#include "quant/quant_traits.h"

namespace tessera::ref {

namespace {

// Row r of w as fp32 (quantized rows dequantized: the weight-only semantics every backend must reproduce).
void row_f32(const Matrix& w, int64_t r, std::vector<float>& out) {
  out.resize(static_cast<size_t>(w.cols));
  if (w.cols > 0) quant::dequantize_matrix_row(w, r, out.data());
}

double dot(const float* x, const std::vector<float>& w) {
  double acc = 0.0;
  for (size_t c = 0; c < w.size(); ++c) acc += static_cast<double>(x[c]) * static_cast<double>(w[c]);
  return acc;
}

}  // namespace

double silu_mul(double g, double u) {
  return g / (1.0 + std::exp(-g)) * u;
}

void matmul(const float* x, int n, const Matrix& w, const float* bias, float* y) {
  TESSERA_CHECK(n >= 0 && w.rows >= 0 && w.cols >= 0);
  std::vector<float> wr;
  for (int64_t r = 0; r < w.rows; ++r) {
    row_f32(w, r, wr);
    for (int i = 0; i < n; ++i) {
      const float* xi = x + static_cast<int64_t>(i) * w.cols;
      y[static_cast<int64_t>(i) * w.rows + r] = static_cast<float>(dot(xi, wr) + (bias ? bias[r] : 0.0));
    }
  }
}

void matmul_silu_mul(const float* x, int n, const Matrix& gate, const Matrix& up, float* out) {
  TESSERA_CHECK(gate.rows == up.rows && gate.cols == up.cols);
  std::vector<float> g, u;
  for (int64_t h = 0; h < gate.rows; ++h) {
    row_f32(gate, h, g);
    row_f32(up, h, u);
    for (int i = 0; i < n; ++i) {
      const float* xi = x + static_cast<int64_t>(i) * gate.cols;
      out[static_cast<int64_t>(i) * gate.rows + h] = static_cast<float>(silu_mul(dot(xi, g), dot(xi, u)));
    }
  }
}

void rmsnorm(const float* x, const float* w, int n, int dim, float eps, float* y) {
  for (int i = 0; i < n; ++i) {
    const float* xi = x + static_cast<int64_t>(i) * dim;
    float* yi = y + static_cast<int64_t>(i) * dim;
    double ss = 0.0;
    for (int c = 0; c < dim; ++c) ss += static_cast<double>(xi[c]) * xi[c];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    // Element-wise, so y == x is fine.
    for (int c = 0; c < dim; ++c) yi[c] = static_cast<float>(xi[c] * inv * w[c]);
  }
}

void rope(float* x, int n, int n_heads, const int* positions, const RopeTable& table) {
  const int half = table.half_dim;
  const int head_dim = 2 * half;
  for (int i = 0; i < n; ++i) {
    const int pos = positions[i];
    TESSERA_CHECK_MSG(pos >= 0 && pos < table.max_pos, "rope position " + std::to_string(pos) + " out of table");
    const float* cs = table.cos + static_cast<int64_t>(pos) * half;
    const float* sn = table.sin + static_cast<int64_t>(pos) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(i) * n_heads + h) * head_dim;
      for (int j = 0; j < half; ++j) {
        // The pair (a, b) rotated by angle theta_j: only which two elements form a pair differs by style.
        float* a = table.style == RopeStyle::kInterleaved ? &v[2 * j] : &v[j];
        float* b = table.style == RopeStyle::kInterleaved ? &v[2 * j + 1] : &v[j + half];
        const double c = cs[j], s = sn[j], x0 = *a, x1 = *b;
        *a = static_cast<float>(x0 * c - x1 * s);
        *b = static_cast<float>(x0 * s + x1 * c);
      }
    }
  }
}

void attention(const float* q, int n, int pos0, const KvLayer& kv, const AttentionShape& shape, float* out) {
  const int hd = shape.head_dim;
  TESSERA_CHECK(shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0 && hd > 0);
  TESSERA_CHECK(pos0 >= 0 && pos0 + n <= kv.capacity);
  TESSERA_CHECK(kv.stride == shape.n_kv_heads * hd);
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t q_stride = static_cast<int64_t>(shape.n_heads) * hd;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> scores;
  std::vector<double> acc(static_cast<size_t>(hd));
  for (int i = 0; i < n; ++i) {
    const int n_keys = pos0 + i + 1;  // causal: position pos0+i sees rows 0..pos0+i
    scores.assign(static_cast<size_t>(n_keys), 0.0);
    for (int h = 0; h < shape.n_heads; ++h) {
      const int kvh = h / group;
      const float* qh = q + i * q_stride + static_cast<int64_t>(h) * hd;
      double mx = -INFINITY;
      for (int j = 0; j < n_keys; ++j) {
        const float* kj = kv.k_row(j) + static_cast<int64_t>(kvh) * hd;
        double s = 0.0;
        for (int d = 0; d < hd; ++d) s += static_cast<double>(qh[d]) * kj[d];
        scores[j] = s * scale;
        mx = std::max(mx, scores[j]);
      }
      double sum = 0.0;
      for (int j = 0; j < n_keys; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
      acc.assign(static_cast<size_t>(hd), 0.0);
      for (int j = 0; j < n_keys; ++j) {
        const float* vj = kv.v_row(j) + static_cast<int64_t>(kvh) * hd;
        for (int d = 0; d < hd; ++d) acc[d] += scores[j] * vj[d];
      }
      float* oh = out + i * q_stride + static_cast<int64_t>(h) * hd;
      for (int d = 0; d < hd; ++d) oh[d] = static_cast<float>(acc[d] / sum);
    }
  }
}

void add(float* y, const float* x, size_t count) {
  for (size_t i = 0; i < count; ++i) y[i] += x[i];
}

void embedding(const Matrix& table, const int* tokens, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    TESSERA_CHECK_MSG(tokens[i] >= 0 && tokens[i] < table.rows,
                      "token id " + std::to_string(tokens[i]) + " out of range");
    if (table.cols > 0) quant::dequantize_matrix_row(table, tokens[i], out + static_cast<int64_t>(i) * table.cols);
  }
}

int argmax(const float* x, int n) {
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (std::isnan(x[i])) continue;
    if (best < 0 || x[i] > x[best]) best = i;  // strict >: the first of equal maxima wins
  }
  return best < 0 ? 0 : best;
}

}  // namespace tessera::ref
