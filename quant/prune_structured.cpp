// Structured pruning: whole FFN channels (a row of w_gate and w_up and the matching column of w_down) and whole
// attention KV groups (a kv head's rows of wk / wv, its query heads' rows of wq and columns of wo, and their bias
// entries), so the matrices shrink and every backend computes less. Whole KV groups keep GQA consistent.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/core/check.h"
#include "quant/prune_internal.h"
#include "quant/quant_traits.h"

namespace tessera::quant::detail {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

bool plain(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16;
}

// Squared L2 norm of every row, and of every column, of m.
std::vector<double> row_sq(const Matrix& m, ThreadPool& pool) {
  std::vector<double> out(sz(m.rows));
  pool.parallel_for(m.rows, 1, [&](int64_t b, int64_t e) {
    std::vector<float> row(sz(m.cols));
    for (int64_t r = b; r < e; ++r) {
      dequantize_matrix_row(m, r, row.data());
      double s = 0.0;
      for (float v : row) s += static_cast<double>(v) * v;
      out[sz(r)] = s;
    }
  });
  return out;
}

std::vector<double> col_sq(const Matrix& m, ThreadPool& pool) {
  const int parts = std::max(1, std::min<int>(pool.size(), static_cast<int>(m.rows)));
  std::vector<std::vector<double>> partial(sz(parts), std::vector<double>(sz(m.cols)));
  pool.parallel_for(parts, 1, [&](int64_t b, int64_t e) {
    std::vector<float> row(sz(m.cols));
    for (int64_t p = b; p < e; ++p) {
      for (int64_t r = m.rows * p / parts; r < m.rows * (p + 1) / parts; ++r) {
        dequantize_matrix_row(m, r, row.data());
        for (int64_t c = 0; c < m.cols; ++c) partial[sz(p)][sz(c)] += static_cast<double>(row[sz(c)]) * row[sz(c)];
      }
    }
  });
  std::vector<double> out(sz(m.cols));
  for (const auto& p : partial)
    for (size_t c = 0; c < out.size(); ++c) out[c] += p[c];
  return out;
}

std::vector<int> complement(const std::vector<int>& keep, int count) {
  std::vector<int> removed;
  size_t k = 0;
  for (int i = 0; i < count; ++i) {
    if (k < keep.size() && keep[k] == i) {
      ++k;
    } else {
      removed.push_back(i);
    }
  }
  return removed;
}

template <typename T>
std::vector<T> subset(const std::vector<T>& v, const std::vector<int>& idx) {
  if (v.empty()) return v;
  std::vector<T> out;
  out.reserve(idx.size());
  for (int i : idx) out.push_back(v[sz(i)]);
  return out;
}

PruneTensorReport entry(const std::string& name, const std::string& spec, const Matrix& before, ThreadPool& pool) {
  PruneTensorReport t;
  t.name = name;
  t.spec = spec;
  t.dtype_before = before.dtype;
  t.rows_before = before.rows;
  t.cols_before = before.cols;
  t.bytes_before = before.bytes();
  t.zeros_before = matrix_stats(before, pool).zeros;
  return t;
}

void finish(PruneTensorReport& t, const Matrix& after, double removed_sq, double total_sq, ThreadPool& pool) {
  t.rows_after = after.rows;
  t.cols_after = after.cols;
  t.zeros_after = matrix_stats(after, pool).zeros;
  t.relative_change = total_sq > 0.0 ? std::sqrt(removed_sq / total_sq) : 0.0;
}

std::string layer_name(int layer, const char* slot) {
  return "layers." + std::to_string(layer) + "." + slot;
}

// Rows [first, first + count) for each kept unit u (rows u * count .. of m).
std::vector<int> expand(const std::vector<int>& units, int per_unit) {
  std::vector<int> rows;
  rows.reserve(units.size() * sz(per_unit));
  for (int u : units)
    for (int i = 0; i < per_unit; ++i) rows.push_back(u * per_unit + i);
  return rows;
}

// Replaces *m by its rows (or columns) `keep`, reporting what went.
void shrink(ModelData& model, Matrix* m, const std::string& name, const std::string& spec, const std::vector<int>& keep,
            bool rows, ThreadPool& pool, std::vector<PruneTensorReport>& report) {
  PruneTensorReport t = entry(name, spec, *m, pool);
  const int count = static_cast<int>(rows ? m->rows : m->cols);
  const std::vector<int> removed = complement(keep, count);
  const std::vector<double> norms = rows ? row_sq(*m, pool) : col_sq(*m, pool);
  double removed_sq = 0.0, total_sq = 0.0;
  for (size_t i = 0; i < norms.size(); ++i) total_sq += norms[i];
  for (int i : removed) removed_sq += norms[sz(i)];
  const Matrix replaced = *m;
  *m = rows ? select_rows(*model.store, *m, keep) : select_cols(*model.store, *m, keep, pool);
  model.store->release_if_unused(replaced, model.weights);
  (rows ? t.removed_rows : t.removed_cols) = removed;
  finish(t, *m, removed_sq, total_sq, pool);
  report.push_back(std::move(t));
}

}  // namespace

MatrixStats matrix_stats(const Matrix& m, ThreadPool& pool) {
  std::vector<double> sq(sz(m.rows)), zeros(sz(m.rows));
  pool.parallel_for(m.rows, 1, [&](int64_t b, int64_t e) {
    std::vector<float> row(sz(m.cols));
    for (int64_t r = b; r < e; ++r) {
      dequantize_matrix_row(m, r, row.data());
      double s = 0.0, z = 0.0;
      for (float v : row) {
        s += static_cast<double>(v) * v;
        z += v == 0.0f ? 1.0 : 0.0;
      }
      sq[sz(r)] = s;
      zeros[sz(r)] = z;
    }
  });
  MatrixStats st;
  for (size_t r = 0; r < sq.size(); ++r) {
    st.sum_sq += sq[r];
    st.zeros += zeros[r];
  }
  const double n = static_cast<double>(m.rows) * static_cast<double>(m.cols);
  st.zeros = n > 0 ? st.zeros / n : 0.0;
  return st;
}

Matrix select_rows(WeightStore& store, const Matrix& m, const std::vector<int>& rows) {
  Matrix out = m;
  out.rows = static_cast<int64_t>(rows.size());
  const size_t rb = m.row_bytes();
  uint8_t* buf = store.allocate(std::max<size_t>(out.bytes(), 1));
  for (size_t i = 0; i < rows.size(); ++i) {
    TESSERA_CHECK(rows[i] >= 0 && rows[i] < m.rows);
    std::memcpy(buf + i * rb, m.row(rows[i]), rb);
  }
  out.data = buf;
  return out;
}

Matrix select_cols(WeightStore& store, const Matrix& m, const std::vector<int>& cols, ThreadPool& pool) {
  Matrix out;
  out.dtype = plain(m.dtype) ? m.dtype : DType::F32;
  out.rows = m.rows;
  out.cols = static_cast<int64_t>(cols.size());
  out.group = 0;
  uint8_t* buf = store.allocate(std::max<size_t>(out.bytes(), 1));
  out.data = buf;
  const size_t es = dtype_size(out.dtype);
  for (int c : cols) TESSERA_CHECK(c >= 0 && c < m.cols);
  pool.parallel_for(m.rows, 1, [&](int64_t b, int64_t e) {
    std::vector<float> row(plain(m.dtype) ? 0 : sz(m.cols));
    for (int64_t r = b; r < e; ++r) {
      uint8_t* dst = buf + sz(r) * out.row_bytes();
      if (plain(m.dtype)) {
        const auto* src = static_cast<const uint8_t*>(m.row(r));
        for (size_t i = 0; i < cols.size(); ++i) std::memcpy(dst + i * es, src + sz(cols[i]) * es, es);
      } else {
        dequantize_matrix_row(m, r, row.data());
        for (size_t i = 0; i < cols.size(); ++i) std::memcpy(dst + i * 4, &row[sz(cols[i])], 4);
      }
    }
  });
  return out;
}

std::vector<float> ffn_importance(const LayerWeights& l, std::span<const float> mid_mean_sq, ThreadPool& pool) {
  const std::vector<double> down = col_sq(l.w_down, pool);
  std::vector<float> score(down.size());
  if (!mid_mean_sq.empty()) {
    TESSERA_CHECK(mid_mean_sq.size() == down.size());
    for (size_t h = 0; h < score.size(); ++h) score[h] = static_cast<float>(mid_mean_sq[h] * down[h]);
  } else {
    const std::vector<double> gate = row_sq(l.w_gate, pool), up = row_sq(l.w_up, pool);
    for (size_t h = 0; h < score.size(); ++h) score[h] = static_cast<float>(gate[h] * up[h] * down[h]);
  }
  return score;
}

std::vector<float> kv_group_importance(const LayerWeights& l, const ModelConfig& c,
                                       std::span<const float> attn_out_mean_sq, ThreadPool& pool) {
  const int group = c.n_heads / c.n_kv_heads;
  const std::vector<double> wo = col_sq(l.wo, pool);
  std::vector<double> wv;
  if (attn_out_mean_sq.empty()) wv = row_sq(l.wv, pool);
  std::vector<float> score(sz(c.n_kv_heads));
  for (int g = 0; g < c.n_kv_heads; ++g) {
    double s = 0.0;
    for (int h = g * group; h < (g + 1) * group; ++h) {
      for (int d = 0; d < c.head_dim; ++d) {
        const size_t ch = sz(h) * sz(c.head_dim) + sz(d);
        const double x2 = attn_out_mean_sq.empty() ? wv[sz(g) * sz(c.head_dim) + sz(d)] : attn_out_mean_sq[ch];
        s += x2 * wo[ch];
      }
    }
    score[sz(g)] = static_cast<float>(s);
  }
  return score;
}

void shrink_ffn(ModelData& model, int layer, const std::vector<int>& keep, const std::string& spec, ThreadPool& pool,
                std::vector<PruneTensorReport>& report) {
  LayerWeights& l = model.weights.layers[sz(layer)];
  shrink(model, &l.w_gate, layer_name(layer, "w_gate"), spec, keep, true, pool, report);
  shrink(model, &l.w_up, layer_name(layer, "w_up"), spec, keep, true, pool, report);
  shrink(model, &l.w_down, layer_name(layer, "w_down"), spec, keep, false, pool, report);
}

void shrink_attention(ModelData& model, int layer, const std::vector<int>& kv_keep, const std::string& spec,
                      ThreadPool& pool, std::vector<PruneTensorReport>& report) {
  const ModelConfig& c = model.config;
  LayerWeights& l = model.weights.layers[sz(layer)];
  const int group = c.n_heads / c.n_kv_heads;
  std::vector<int> heads;
  for (int g : kv_keep)
    for (int h = g * group; h < (g + 1) * group; ++h) heads.push_back(h);
  const std::vector<int> q_rows = expand(heads, c.head_dim), kv_rows = expand(kv_keep, c.head_dim);
  shrink(model, &l.wq, layer_name(layer, "wq"), spec, q_rows, true, pool, report);
  shrink(model, &l.wk, layer_name(layer, "wk"), spec, kv_rows, true, pool, report);
  shrink(model, &l.wv, layer_name(layer, "wv"), spec, kv_rows, true, pool, report);
  shrink(model, &l.wo, layer_name(layer, "wo"), spec, q_rows, false, pool, report);
  l.bq = subset(l.bq, q_rows);
  l.bk = subset(l.bk, kv_rows);
  l.bv = subset(l.bv, kv_rows);
}

}  // namespace tessera::quant::detail
