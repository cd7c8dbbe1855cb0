// Pruning building blocks against independent computations: spec parsing, the score-based masks (exact counts,
// the smallest scores removed, N:M patterns), the structured keep rule, and SparseGPT's reconstruction (equal to
// the least-squares optimum, solved here directly, when the pruned columns come first; lower output error than
// magnitude pruning of the same pattern on correlated inputs).
#include "quant/prune.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "engine/core/check.h"

namespace tessera::quant {
namespace {

TEST(PruneSpec, ParsesMethodsSparsitiesAndPatterns) {
  const PruneSpec a = PruneSpec::parse("wanda:0.5");
  EXPECT_EQ(a.method, PruneMethod::kWanda);
  EXPECT_DOUBLE_EQ(a.sparsity, 0.5);
  EXPECT_FALSE(a.nm());
  EXPECT_EQ(a.to_string(), "wanda:0.5");
  EXPECT_DOUBLE_EQ(PruneSpec::parse("magnitude:30%").sparsity, 0.3);
  const PruneSpec b = PruneSpec::parse("sparsegpt:2:4");
  EXPECT_TRUE(b.nm() && b.two_of_four());
  EXPECT_EQ(b.to_string(), "sparsegpt:2:4");
  EXPECT_DOUBLE_EQ(b.sparsity, 0.5);
  EXPECT_EQ(PruneSpec::parse("magnitude:4:8").m, 8);
  EXPECT_TRUE(PruneSpec::parse("structured-ffn:0.3").structured());
  EXPECT_TRUE(PruneSpec::parse("none").none());
  EXPECT_TRUE(PruneSpec::parse("sparsegpt:0.7").calibrated());
  for (const char* bad :
       {"", "wanda", "wanda:", "wanda:1", "wanda:1.5", "wanda:-0.1", "wanda:abc", "foo:0.5", "structured:2:4",
        "magnitude-global:2:4", "wanda:4:2", "wanda:0:4", "wanda:2:4:8", "wanda:50%%"})
    EXPECT_THROW(PruneSpec::parse(bad), Error) << bad;
  const PruneRule r = PruneRule::parse("layers.0.*=none");
  EXPECT_EQ(r.pattern, "layers.0.*");
  EXPECT_TRUE(r.spec.none());
  EXPECT_THROW(PruneRule::parse("layers.0.*"), Error);
  EXPECT_THROW(PruneRule::parse("=wanda:0.5"), Error);
  EXPECT_THROW(PruneRule::parse("x=wanda:9"), Error);
}

std::vector<float> random_vec(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(PruneByScore, RemovesExactlyTheSmallestScores) {
  std::mt19937 rng(1);
  for (bool per_row : {false, true}) {
    for (double s : {0.0, 0.1, 0.5, 0.7, 0.95}) {
      const int64_t rows = 7, cols = 37;
      std::vector<float> w = random_vec(rng, rows * cols), score(w.size());
      for (size_t i = 0; i < w.size(); ++i) score[i] = std::fabs(w[i]) * static_cast<float>(1 + i % 5);
      std::vector<float> pruned = w;
      prune_by_score(pruned.data(), rows, cols, score.data(), s, per_row, 0, 0);
      // Independent: sort scores and zero the first k of each scope.
      const int64_t scopes = per_row ? rows : 1, len = per_row ? cols : rows * cols;
      for (int64_t sc = 0; sc < scopes; ++sc) {
        std::vector<int64_t> idx(static_cast<size_t>(len));
        std::iota(idx.begin(), idx.end(), sc * len);
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[a] < score[b]; });
        const auto k = static_cast<int64_t>(std::llround(s * static_cast<double>(len)));
        for (int64_t i = 0; i < len; ++i) {
          const auto j = static_cast<size_t>(idx[static_cast<size_t>(i)]);
          EXPECT_EQ(pruned[j], i < k ? 0.0f : w[j]) << "per_row " << per_row << " sparsity " << s;
        }
      }
    }
  }
}

TEST(PruneByScore, NofMKeepsAtMostNOfEveryM) {
  std::mt19937 rng(2);
  for (auto [n, m] : {std::pair{2, 4}, std::pair{4, 8}, std::pair{1, 4}}) {
    const int64_t rows = 5, cols = 43;  // ragged last group
    std::vector<float> w = random_vec(rng, rows * cols), score(w.size());
    for (size_t i = 0; i < w.size(); ++i) score[i] = std::fabs(w[i]);
    std::vector<float> p = w;
    prune_by_score(p.data(), rows, cols, score.data(), 0.0, false, n, m);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c0 = 0; c0 < cols; c0 += m) {
        const int64_t g = std::min<int64_t>(m, cols - c0);
        int nonzero = 0;
        float min_kept = INFINITY, max_removed = 0.0f;
        for (int64_t i = 0; i < g; ++i) {
          const size_t j = static_cast<size_t>(r * cols + c0 + i);
          if (p[j] != 0.0f) {
            ++nonzero;
            EXPECT_EQ(p[j], w[j]);
            min_kept = std::min(min_kept, score[j]);
          } else {
            max_removed = std::max(max_removed, score[j]);
          }
        }
        EXPECT_EQ(nonzero, std::min<int64_t>(g, n));
        if (nonzero < g) {
          EXPECT_LE(max_removed, min_kept);
        }
      }
    }
  }
}

TEST(StructuredKeep, KeepsTheTopScoresInMultiples) {
  const std::vector<float> score = {5, 1, 9, 3, 7, 2, 8, 6, 4, 0};
  EXPECT_EQ(structured_keep(score, 0.4, 2), (std::vector<int>{0, 2, 4, 6, 7, 8}));
  EXPECT_EQ(structured_keep(score, 0.3, 4).size(), 8u);  // 7 kept rounds to the nearest multiple of 4
  EXPECT_EQ(structured_keep(score, 0.5, 1), (std::vector<int>{0, 2, 4, 6, 7}));
  EXPECT_EQ(structured_keep(score, 0.0, 2).size(), 10u);
  EXPECT_EQ(structured_keep(score, 0.99, 4), (std::vector<int>{2, 4, 6, 7}));  // at least one multiple
}

// Correlated inputs: x = z A with a random mixing A, so the Hessian is far from diagonal.
std::vector<float> correlated_inputs(std::mt19937& rng, int n, int cols) {
  const std::vector<float> a = random_vec(rng, static_cast<size_t>(cols * cols));
  const std::vector<float> z = random_vec(rng, static_cast<size_t>(n * cols));
  std::vector<float> x(static_cast<size_t>(n * cols), 0.0f);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < cols; ++k)
      for (int c = 0; c < cols; ++c) x[i * cols + c] += z[i * cols + k] * (a[k * cols + c] + (k == c ? 2.0f : 0.0f));
  return x;
}

std::vector<float> gram(const std::vector<float>& x, int n, int cols) {
  std::vector<float> h(static_cast<size_t>(cols * cols), 0.0f);
  for (int i = 0; i < n; ++i)
    for (int a = 0; a < cols; ++a)
      for (int b = 0; b < cols; ++b) h[a * cols + b] += x[i * cols + a] * x[i * cols + b];
  return h;
}

double output_error(const std::vector<float>& x, int n, int cols, const std::vector<float>& w,
                    const std::vector<float>& w2, int rows) {
  double e = 0;
  for (int i = 0; i < n; ++i)
    for (int r = 0; r < rows; ++r) {
      double d = 0;
      for (int c = 0; c < cols; ++c) d += static_cast<double>(x[i * cols + c]) * (w[r * cols + c] - w2[r * cols + c]);
      e += d * d;
    }
  return e;
}

// Solves A y = b (A symmetric positive definite, small) by Gaussian elimination with partial pivoting.
std::vector<double> solve(std::vector<double> a, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t k = 0; k < n; ++k) {
    size_t p = k;
    for (size_t i = k + 1; i < n; ++i)
      if (std::fabs(a[i * n + k]) > std::fabs(a[p * n + k])) p = i;
    for (size_t j = 0; j < n; ++j) std::swap(a[k * n + j], a[p * n + j]);
    std::swap(b[k], b[p]);
    for (size_t i = k + 1; i < n; ++i) {
      const double f = a[i * n + k] / a[k * n + k];
      for (size_t j = k; j < n; ++j) a[i * n + j] -= f * a[k * n + j];
      b[i] -= f * b[k];
    }
  }
  std::vector<double> y(n);
  for (size_t i = n; i-- > 0;) {
    double s = b[i];
    for (size_t j = i + 1; j < n; ++j) s -= a[i * n + j] * y[j];
    y[i] = s / a[i * n + i];
  }
  return y;
}

// With the pruned columns first, removing them one by one with exact OBS updates is the constrained least-squares
// optimum: per row, min ||X (w - w')||^2 subject to w'_P = 0 solves H_KK w'_K = (H w)_K for the kept columns K
// (H the damped X^T X).
TEST(SparseGpt, FixedLeadingMaskGivesTheLeastSquaresOptimum) {
  std::mt19937 rng(7);
  const int rows = 6, cols = 20, n = 80, pruned_cols = 7;
  const std::vector<float> x = correlated_inputs(rng, n, cols);
  std::vector<float> h = gram(x, n, cols);
  const std::vector<float> w = random_vec(rng, rows * cols);
  std::vector<uint8_t> mask(static_cast<size_t>(rows * cols), 0);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < pruned_cols; ++c) mask[r * cols + c] = 1;
  std::vector<float> got = w;
  ThreadPool pool(2);
  const double damp = 0.01;
  sparsegpt_prune(got.data(), rows, cols, h.data(), PruneSpec::parse("sparsegpt:0.5"), pool, damp, 8, mask.data());

  double mean_diag = 0;
  for (int i = 0; i < cols; ++i) mean_diag += h[i * cols + i];
  mean_diag /= cols;
  std::vector<double> hd(h.begin(), h.end());
  for (int i = 0; i < cols; ++i) hd[i * cols + i] += damp * mean_diag;
  const int k = cols - pruned_cols;
  std::vector<double> hkk(static_cast<size_t>(k * k));
  for (int a = 0; a < k; ++a)
    for (int b = 0; b < k; ++b) hkk[a * k + b] = hd[(a + pruned_cols) * cols + b + pruned_cols];
  for (int r = 0; r < rows; ++r) {
    std::vector<double> rhs(static_cast<size_t>(k));
    for (int a = 0; a < k; ++a)
      for (int c = 0; c < cols; ++c) rhs[a] += hd[(a + pruned_cols) * cols + c] * w[r * cols + c];
    const std::vector<double> want = solve(hkk, rhs);
    for (int c = 0; c < pruned_cols; ++c) EXPECT_EQ(got[r * cols + c], 0.0f);
    for (int a = 0; a < k; ++a)
      EXPECT_NEAR(got[r * cols + a + pruned_cols], want[a], 1e-3 * (1 + std::fabs(want[a]))) << "row " << r;
  }
}

TEST(SparseGpt, BeatsMagnitudeOnOutputErrorAndHonoursThePattern) {
  std::mt19937 rng(8);
  const int rows = 16, cols = 48, n = 200;
  const std::vector<float> x = correlated_inputs(rng, n, cols);
  const std::vector<float> h = gram(x, n, cols);
  const std::vector<float> w = random_vec(rng, rows * cols);
  ThreadPool pool(3);
  for (const char* spec : {"sparsegpt:0.5", "sparsegpt:2:4", "sparsegpt:4:8"}) {
    const PruneSpec s = PruneSpec::parse(spec);
    std::vector<float> sg = w, mag = w, score(w.size());
    sparsegpt_prune(sg.data(), rows, cols, h.data(), s, pool, 0.01, 16);
    for (size_t i = 0; i < w.size(); ++i) score[i] = std::fabs(w[i]);
    prune_by_score(mag.data(), rows, cols, score.data(), s.sparsity, false, s.n, s.m);
    const auto zeros = std::count(sg.begin(), sg.end(), 0.0f);
    EXPECT_EQ(zeros, static_cast<long>(rows * cols / 2)) << spec;
    if (s.nm()) {
      for (int r = 0; r < rows; ++r)
        for (int c0 = 0; c0 < cols; c0 += s.m)
          EXPECT_EQ(std::count(sg.begin() + r * cols + c0, sg.begin() + r * cols + c0 + s.m, 0.0f), s.m - s.n);
    }
    const double e_sg = output_error(x, n, cols, w, sg, rows), e_mag = output_error(x, n, cols, w, mag, rows);
    EXPECT_LT(e_sg, 0.8 * e_mag) << spec << ": sparsegpt " << e_sg << " vs magnitude " << e_mag;
  }
}

}  // namespace
}  // namespace tessera::quant
