// SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"),
// following the reference implementation's structure: with H = X^T X + damp I and U the upper Cholesky factor of
// H^-1, columns are processed left to right in blocks; a pruned weight's error (w - 0) / U_ii is subtracted from the
// row's later columns along U's row i (the optimal-brain-surgeon update restricted to the columns not yet fixed),
// within the block at once and for the columns after the block lazily. The mask of unstructured pruning is chosen
// per block from w^2 / U_ii^2 at the block's start; N:M masks per group of M columns when the group starts.
// Rows are independent given U, so they are split over the pool.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/core/check.h"
#include "quant/prune.h"

namespace tessera::quant {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// In-place lower Cholesky factor of a [n][n] (only the lower triangle is read); false when not positive definite.
bool cholesky(std::vector<double>& a, int64_t n, ThreadPool& pool) {
  for (int64_t j = 0; j < n; ++j) {
    double d = a[sz(j * n + j)];
    for (int64_t k = 0; k < j; ++k) d -= a[sz(j * n + k)] * a[sz(j * n + k)];
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double l = std::sqrt(d);
    a[sz(j * n + j)] = l;
    pool.parallel_for(n - j - 1, 64, [&](int64_t b, int64_t e) {
      for (int64_t i = j + 1 + b; i < j + 1 + e; ++i) {
        double s = a[sz(i * n + j)];
        const double* ri = &a[sz(i * n)];
        const double* rj = &a[sz(j * n)];
        for (int64_t k = 0; k < j; ++k) s -= ri[k] * rj[k];
        a[sz(i * n + j)] = s / l;
      }
    });
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = i + 1; k < n; ++k) a[sz(i * n + k)] = 0.0;
  return true;
}

// U (upper, row-major) with U^T U = H^-1, for H = hessian (+ damping): L L^T = H, H^-1 = L^-T L^-1, then the lower
// Cholesky factor of H^-1 transposed. Dead inputs (zero diagonal) get a unit diagonal; `dead` marks them.
std::vector<double> inverse_cholesky_upper(const float* hessian, int64_t n, double damp, ThreadPool& pool,
                                           std::vector<uint8_t>& dead) {
  std::vector<double> h(sz(n * n));
  double mean_diag = 0.0;
  dead.assign(sz(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) h[sz(i * n + j)] = hessian[sz(i * n + j)];
    if (h[sz(i * n + i)] == 0.0) {
      dead[sz(i)] = 1;
      h[sz(i * n + i)] = 1.0;
    }
    mean_diag += h[sz(i * n + i)];
  }
  mean_diag /= static_cast<double>(std::max<int64_t>(n, 1));
  // Off-diagonal entries of dead inputs are zero anyway (x_i = 0 on every row).
  std::vector<double> l;
  for (int attempt = 0;; ++attempt) {
    l = h;
    const double add = damp * mean_diag * std::pow(10.0, attempt);
    for (int64_t i = 0; i < n; ++i) l[sz(i * n + i)] += add;
    if (cholesky(l, n, pool)) break;
    if (attempt == 4) throw Error("SparseGPT: the calibration Hessian is not positive definite even with damping");
  }
  // Linv = L^-1 (lower), column by column (columns are independent).
  std::vector<double> linv(sz(n * n), 0.0);
  pool.parallel_for(n, 8, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      linv[sz(j * n + j)] = 1.0 / l[sz(j * n + j)];
      for (int64_t i = j + 1; i < n; ++i) {
        double s = 0.0;
        for (int64_t k = j; k < i; ++k) s -= l[sz(i * n + k)] * linv[sz(k * n + j)];
        linv[sz(i * n + j)] = s / l[sz(i * n + i)];
      }
    }
  });
  // Hinv = Linv^T Linv (symmetric): Hinv[i][j] = sum_{k >= max(i, j)} Linv[k][i] Linv[k][j].
  std::vector<double> hinv(sz(n * n));
  pool.parallel_for(n, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      for (int64_t j = 0; j <= i; ++j) {
        double s = 0.0;
        for (int64_t k = i; k < n; ++k) s += linv[sz(k * n + i)] * linv[sz(k * n + j)];
        hinv[sz(i * n + j)] = s;
      }
    }
  });
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) hinv[sz(j * n + i)] = hinv[sz(i * n + j)];
  if (!cholesky(hinv, n, pool)) throw Error("SparseGPT: the inverse Hessian lost positive definiteness");
  // Transpose the lower factor into U.
  std::vector<double> u(sz(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) u[sz(j * n + i)] = hinv[sz(i * n + j)];
  return u;
}

// Marks the `count` entries of smallest score (ties: lower index) among `n`.
void mark_smallest(const double* score, int64_t n, int64_t count, uint8_t* mask) {
  if (count <= 0) return;
  std::vector<int64_t> idx(sz(n));
  std::iota(idx.begin(), idx.end(), 0);
  const auto less = [&](int64_t a, int64_t b) { return score[a] < score[b] || (score[a] == score[b] && a < b); };
  if (count < n) std::nth_element(idx.begin(), idx.begin() + count, idx.end(), less);
  for (int64_t i = 0; i < std::min(count, n); ++i) mask[idx[sz(i)]] = 1;
}

}  // namespace

void sparsegpt_prune(float* w, int64_t rows, int64_t cols, const float* hessian, const PruneSpec& spec,
                     ThreadPool& pool, double damp, int blocksize, const uint8_t* fixed_mask) {
  TESSERA_CHECK(rows >= 0 && cols >= 0 && blocksize > 0);
  if (rows == 0 || cols == 0) return;
  if (spec.nm()) TESSERA_CHECK_MSG(blocksize % spec.m == 0, "SparseGPT block size must be a multiple of M");
  std::vector<uint8_t> dead;
  const std::vector<double> u = inverse_cholesky_upper(hessian, cols, damp, pool, dead);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (dead[sz(c)]) w[sz(r * cols + c)] = 0.0f;

  std::vector<uint8_t> mask(sz(rows) * sz(blocksize));  // [rows][block columns], 1 = prune
  for (int64_t i1 = 0; i1 < cols; i1 += blocksize) {
    const int64_t i2 = std::min<int64_t>(i1 + blocksize, cols), count = i2 - i1;
    std::fill(mask.begin(), mask.end(), 0);
    if (fixed_mask != nullptr) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < count; ++i) mask[sz(r * blocksize + i)] = fixed_mask[sz(r * cols + i1 + i)];
    } else if (!spec.nm() && spec.sparsity > 0.0) {
      std::vector<double> score(sz(rows * count));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < count; ++i) {
          const double v = w[sz(r * cols + i1 + i)], d = u[sz((i1 + i) * cols + i1 + i)];
          score[sz(r * count + i)] = v * v / (d * d);
        }
      }
      std::vector<uint8_t> flat(sz(rows * count), 0);
      mark_smallest(score.data(), rows * count, std::llround(spec.sparsity * static_cast<double>(rows * count)),
                    flat.data());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < count; ++i) mask[sz(r * blocksize + i)] = flat[sz(r * count + i)];
    }
    pool.parallel_for(rows, 1, [&](int64_t b, int64_t e) {
      std::vector<double> row(sz(cols)), err(sz(count));
      for (int64_t r = b; r < e; ++r) {
        float* wr = w + sz(r * cols);
        for (int64_t c = i1; c < cols; ++c) row[sz(c)] = wr[c];
        uint8_t* mr = mask.data() + sz(r * blocksize);
        for (int64_t i = 0; i < count; ++i) {
          const int64_t col = i1 + i;
          if (fixed_mask == nullptr && spec.nm() && i % spec.m == 0) {
            const int64_t g = std::min<int64_t>(spec.m, count - i);
            double score[64];
            for (int64_t k = 0; k < g; ++k) {
              const double d = u[sz((col + k) * cols + col + k)];
              score[k] = row[sz(col + k)] * row[sz(col + k)] / (d * d);
            }
            mark_smallest(score, g, g - std::min<int64_t>(g, spec.n), mr + i);
          }
          const double q = mr[i] ? 0.0 : row[sz(col)];
          const double ei = (row[sz(col)] - q) / u[sz(col * cols + col)];
          const double* ui = &u[sz(col * cols)];
          for (int64_t j = col + 1; j < i2; ++j) row[sz(j)] -= ei * ui[j];
          row[sz(col)] = q;
          err[sz(i)] = ei;
        }
        // Lazy update of the columns after the block.
        for (int64_t i = 0; i < count; ++i) {
          if (err[sz(i)] == 0.0) continue;
          const double* ui = &u[sz((i1 + i) * cols)];
          for (int64_t j = i2; j < cols; ++j) row[sz(j)] -= err[sz(i)] * ui[j];
        }
        for (int64_t c = i1; c < cols; ++c) wr[c] = static_cast<float>(row[sz(c)]);
      }
    });
  }
}

}  // namespace tessera::quant
