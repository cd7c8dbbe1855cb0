// The evaluator against numbers computed here from plain forward passes: perplexity (one window and sliding
// windows), KL divergence and top-1 agreement, and the window bookkeeping (every token scored exactly once).
#include "engine/runtime/evaluator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

using testing::tiny_config;
using testing::tiny_model;

std::vector<int> random_tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(0, vocab - 1);
  std::vector<int> t(static_cast<size_t>(n));
  for (int& x : t) x = dist(rng);
  t[0] = 1;  // BOS
  return t;
}

// Log-softmax of one row in double, written independently of the evaluator.
std::vector<double> log_probs(const float* z, int vocab) {
  double m = -INFINITY;
  for (int v = 0; v < vocab; ++v) m = std::max(m, static_cast<double>(z[v]));
  double s = 0.0;
  for (int v = 0; v < vocab; ++v) s += std::exp(z[v] - m);
  std::vector<double> out(static_cast<size_t>(vocab));
  for (int v = 0; v < vocab; ++v) out[static_cast<size_t>(v)] = z[v] - m - std::log(s);
  return out;
}

// Logits of every position of `tokens`, from one fresh forward pass.
std::vector<float> full_logits(const ModelData& m, const std::vector<int>& tokens) {
  CpuBackend backend(1);
  LlamaModel model(m, backend);
  KvCache cache(m.config, static_cast<int>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kAll, logits.data());
  return logits;
}

TEST(EvalWindows, EveryTargetScoredExactlyOnce) {
  for (int64_t n : {2, 3, 10, 31, 32, 33, 64, 65, 100, 257, 1000}) {
    for (int ctx : {2, 3, 8, 32, 64}) {
      for (int stride : {0, 1, 2, 5, ctx / 2, ctx - 1}) {
        if (stride >= ctx || (stride == 0 && ctx / 2 < 1)) continue;
        const auto windows = eval_windows(n, ctx, stride);
        const int s = stride == 0 ? ctx / 2 : stride;
        std::vector<int> scored(static_cast<size_t>(n), 0);
        int64_t prev_end = 0;
        for (size_t k = 0; k < windows.size(); ++k) {
          const EvalWindow& w = windows[k];
          SCOPED_TRACE("n=" + std::to_string(n) + " ctx=" + std::to_string(ctx) + " stride=" + std::to_string(s) +
                       " window " + std::to_string(k));
          EXPECT_EQ(w.begin, static_cast<int64_t>(k) * s);
          EXPECT_LE(w.end - w.begin, ctx);
          EXPECT_LE(w.end, n);
          EXPECT_GT(w.score_begin, w.begin);  // every target has context inside its window
          EXPECT_EQ(w.score_begin, std::max<int64_t>(prev_end, w.begin + 1));
          if (k > 0) {
            EXPECT_GE(w.score_begin - w.begin, ctx - s);  // later windows: at least ctx - stride context
          }
          for (int64_t j = w.score_begin; j < w.end; ++j) ++scored[static_cast<size_t>(j)];
          prev_end = w.end;
        }
        EXPECT_EQ(windows.back().end, n);
        EXPECT_EQ(scored[0], 0);
        for (int64_t j = 1; j < n; ++j) ASSERT_EQ(scored[static_cast<size_t>(j)], 1) << "target " << j;
      }
    }
  }
}

TEST(EvalWindows, DefaultStrideIsHalfTheWindow) {
  const auto w = eval_windows(1000, 256, 0);
  ASSERT_GE(w.size(), 2u);
  EXPECT_EQ(w[1].begin, 128);
  EXPECT_EQ(w[1].score_begin, 256);
  EXPECT_EQ(w[0].score_begin, 1);
}

TEST(EvalWindows, RejectsBadArguments) {
  EXPECT_THROW(eval_windows(10, 1, 0), Error);   // window too short
  EXPECT_THROW(eval_windows(10, 8, 8), Error);   // stride == ctx leaves targets without context
  EXPECT_THROW(eval_windows(10, 8, 9), Error);   // stride > ctx skips tokens
  EXPECT_THROW(eval_windows(10, 8, -1), Error);  // negative
  EXPECT_THROW(eval_windows(1, 8, 4), Error);    // no prediction to score
  EXPECT_THROW(eval_windows(0, 8, 4), Error);
}

TEST(Evaluator, OneWindowPerplexityIsExpOfMeanNllFromFullLogits) {
  const ModelData m = tiny_model(tiny_config(), DType::F32, 3);
  const int V = m.config.vocab_size;
  const std::vector<int> tokens = random_tokens(50, V, 7);
  const std::vector<float> logits = full_logits(m, tokens);
  double nll = 0.0;
  for (size_t i = 0; i + 1 < tokens.size(); ++i)
    nll -= log_probs(logits.data() + i * static_cast<size_t>(V), V)[static_cast<size_t>(tokens[i + 1])];
  const double mean = nll / static_cast<double>(tokens.size() - 1);

  CpuBackend backend(2);
  LlamaModel model(m, backend);
  EvalOptions o;
  o.ctx = 64;  // one window: the whole sequence
  Evaluator ev(model, nullptr, o);
  const EvalResult r = ev.run(tokens);
  EXPECT_EQ(r.tokens, 49);
  EXPECT_EQ(r.windows, 1);
  EXPECT_FALSE(r.has_reference);
  EXPECT_NEAR(r.nll_sum, nll, 1e-9 * nll + 1e-4);
  EXPECT_NEAR(r.mean_nll, mean, 1e-6 * mean);
  EXPECT_NEAR(r.perplexity, std::exp(mean), 1e-6 * std::exp(mean));
  EXPECT_DOUBLE_EQ(r.perplexity, std::exp(r.mean_nll));
}

// Sliding windows: every target's NLL from a separate forward pass over its own window prefix.
TEST(Evaluator, SlidingWindowNllMatchesPerTargetForwardPasses) {
  const ModelData m = tiny_model(tiny_config(4, 1), DType::F32, 5);
  const int V = m.config.vocab_size;
  const int n = 150, ctx = 24, stride = 10;
  const std::vector<int> tokens = random_tokens(n, V, 11);
  double expected = 0.0;
  for (int j = 1; j < n; ++j) {
    // The window that scores j: the first one (start k * stride) whose end k * stride + ctx is past j.
    const int k = j < ctx ? 0 : (j - ctx) / stride + 1;
    const int b = k * stride;
    ASSERT_LT(b, j);
    const std::vector<int> prefix(tokens.begin() + b, tokens.begin() + j);
    const std::vector<float> lg = full_logits(m, prefix);
    expected -= log_probs(lg.data() + (prefix.size() - 1) * static_cast<size_t>(V), V)[static_cast<size_t>(tokens[j])];
  }
  CpuBackend backend(2);
  LlamaModel model(m, backend, 8);  // windows longer than the batch: the model chunks them
  EvalOptions o;
  o.ctx = ctx;
  o.stride = stride;
  int64_t last_progress = 0, calls = 0, want_total = n - 1;
  o.progress = [&](int64_t done, int64_t total) {
    EXPECT_GT(done, last_progress);
    EXPECT_EQ(total, want_total);
    last_progress = done;
    ++calls;
  };
  Evaluator ev(model, nullptr, o);
  const EvalResult r = ev.run(tokens);
  EXPECT_EQ(r.tokens, n - 1);
  EXPECT_EQ(r.windows, static_cast<int64_t>(eval_windows(n, ctx, stride).size()));
  EXPECT_EQ(calls, r.windows);
  EXPECT_EQ(last_progress, n - 1);
  EXPECT_NEAR(r.nll_sum, expected, 1e-5 * expected);

  // A second run reuses the buffers and the cache and gives the same numbers.
  last_progress = 0;
  const EvalResult again = ev.run(tokens);
  EXPECT_EQ(again.nll_sum, r.nll_sum);
  // A shorter stream through the same evaluator.
  const std::vector<int> head(tokens.begin(), tokens.begin() + 30);
  last_progress = 0;
  want_total = 29;
  EXPECT_EQ(ev.run(head).tokens, 29);
}

TEST(Evaluator, ModelAgainstItselfHasZeroKlAndFullAgreement) {
  const ModelData m = tiny_model(tiny_config(), DType::BF16, 9);
  CpuBackend b1(2), b2(1);
  LlamaModel model(m, b1), reference(m, b2);
  EvalOptions o;
  o.ctx = 32;
  Evaluator ev(model, &reference, o);
  const EvalResult r = ev.run(random_tokens(120, m.config.vocab_size, 13));
  EXPECT_TRUE(r.has_reference);
  EXPECT_EQ(r.tokens, 119);
  EXPECT_NEAR(r.mean_kl, 0.0, 1e-9);
  EXPECT_NEAR(r.max_kl, 0.0, 1e-9);
  EXPECT_GE(r.mean_kl, 0.0);
  EXPECT_EQ(r.top1_matches, 119);
  EXPECT_DOUBLE_EQ(r.top1_agreement, 1.0);
  EXPECT_NEAR(r.reference_nll_sum, r.nll_sum, 1e-6 * r.nll_sum);
  EXPECT_NEAR(r.reference_perplexity, r.perplexity, 1e-6 * r.perplexity);
}

// KL and top-1 against an independent computation from full-sequence logits of both models (one window).
TEST(Evaluator, KlAndTop1AgainstAnotherModelMatchFullLogits) {
  const ModelConfig c = tiny_config();
  const ModelData m = tiny_model(c, DType::F32, 21);
  const ModelData ref = tiny_model(c, DType::F32, 22);
  const int V = c.vocab_size;
  const std::vector<int> tokens = random_tokens(60, V, 17);
  const std::vector<float> lm = full_logits(m, tokens), lr = full_logits(ref, tokens);
  double kl = 0.0, max_kl = 0.0, ref_nll = 0.0;
  int64_t agree = 0;
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    const float* zm = lm.data() + i * static_cast<size_t>(V);
    const float* zr = lr.data() + i * static_cast<size_t>(V);
    const auto pm = log_probs(zm, V), pr = log_probs(zr, V);
    double k = 0.0;
    for (size_t v = 0; v < pm.size(); ++v) k += std::exp(pr[v]) * (pr[v] - pm[v]);
    kl += k;
    max_kl = std::max(max_kl, k);
    ref_nll -= pr[static_cast<size_t>(tokens[i + 1])];
    agree += std::max_element(zm, zm + V) - zm == std::max_element(zr, zr + V) - zr;
  }
  const double count = static_cast<double>(tokens.size() - 1);

  CpuBackend b1(2), b2(2);
  LlamaModel model(m, b1), reference(ref, b2);
  EvalOptions o;
  o.ctx = 64;
  Evaluator ev(model, &reference, o);
  const EvalResult r = ev.run(tokens);
  EXPECT_GT(r.mean_kl, 0.01);  // two unrelated random models
  EXPECT_NEAR(r.mean_kl, kl / count, 1e-5 * kl / count);
  EXPECT_NEAR(r.max_kl, max_kl, 1e-5 * max_kl);
  EXPECT_EQ(r.top1_matches, agree);
  EXPECT_LT(r.top1_agreement, 1.0);
  EXPECT_NEAR(r.reference_nll_sum, ref_nll, 1e-6 * ref_nll);
}

// A lower-precision copy of the same weights is close but not identical: small positive KL.
TEST(Evaluator, RoundedWeightsGiveSmallPositiveKl) {
  const ModelConfig c = tiny_config();
  const ModelData m32 = tiny_model(c, DType::F32, 31);
  const ModelData m16 = tiny_model(c, DType::BF16, 31);  // the same random numbers, rounded to bf16
  CpuBackend b1(2), b2(2);
  LlamaModel model(m16, b1), reference(m32, b2);
  EvalOptions o;
  o.ctx = 40;
  o.stride = 13;
  Evaluator ev(model, &reference, o);
  const EvalResult r = ev.run(random_tokens(200, c.vocab_size, 3));
  EXPECT_GT(r.mean_kl, 0.0);
  EXPECT_LT(r.mean_kl, 1e-3);
  EXPECT_GT(r.top1_agreement, 0.9);

  // And far below two unrelated models.
  const ModelData other = tiny_model(c, DType::F32, 32);
  LlamaModel unrelated(other, b1);
  Evaluator ev2(unrelated, &reference, o);
  EXPECT_GT(ev2.run(random_tokens(200, c.vocab_size, 3)).mean_kl, 100 * r.mean_kl);
}

TEST(Evaluator, RefusesMismatchedVocabularyAndOversizedWindows) {
  ModelConfig c = tiny_config();
  const ModelData m = tiny_model(c, DType::F32, 1);
  c.vocab_size = 60;
  const ModelData smaller = tiny_model(c, DType::F32, 1);
  CpuBackend backend(1);
  LlamaModel model(m, backend), other(smaller, backend);
  EvalOptions o;
  o.ctx = 32;
  EXPECT_THROW(Evaluator(model, &other, o), Error);
  o.ctx = m.config.max_seq_len + 1;
  EXPECT_THROW(Evaluator(model, nullptr, o), Error);
  o.ctx = 16;
  o.stride = 16;
  EXPECT_THROW(Evaluator(model, nullptr, o), Error);
  o.stride = 0;
  Evaluator ev(model, nullptr, o);
  EXPECT_THROW(ev.run(std::vector<int>{1}), Error);
  EXPECT_THROW(ev.run(std::vector<int>{1, m.config.vocab_size}), Error);  // id outside the vocabulary
}

}  // namespace
}  // namespace tessera
