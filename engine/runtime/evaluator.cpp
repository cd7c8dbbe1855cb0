#include "engine/runtime/evaluator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "engine/core/check.h"

namespace tessera {

namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

int effective_stride(int ctx, int stride) {
  return stride == 0 ? ctx / 2 : stride;
}

void validate(int ctx, int stride) {
  if (ctx < 2) throw Error("evaluation window (ctx) must be at least 2 tokens, got " + std::to_string(ctx));
  const int s = effective_stride(ctx, stride);
  if (s < 1 || s > ctx - 1)
    throw Error("evaluation stride must be between 1 and ctx - 1 = " + std::to_string(ctx - 1) + ", got " +
                std::to_string(s) + " (windows must overlap so that every token is scored with context)");
}

// Log-softmax of one row of float logits, computed in double. Returns the index of the first maximum.
int log_softmax(const float* z, int n, double* out) {
  int best = 0;
  for (int v = 1; v < n; ++v)
    if (z[v] > z[best]) best = v;
  const double m = z[best];
  double s = 0.0;
  for (int v = 0; v < n; ++v) {
    const double d = static_cast<double>(z[v]) - m;
    out[v] = d;
    s += std::exp(d);
  }
  const double log_s = std::log(s);
  for (int v = 0; v < n; ++v) out[v] -= log_s;
  return best;
}

// KL(P || Q) from log-probabilities, in nats. Terms with P(v) == 0 contribute nothing.
double kl_divergence(const double* log_p, const double* log_q, int n) {
  double kl = 0.0;
  for (int v = 0; v < n; ++v) {
    const double p = std::exp(log_p[v]);
    if (p > 0.0) kl += p * (log_p[v] - log_q[v]);
  }
  // Rounding can leave a tiny negative sum for identical distributions; KL is never negative.
  return std::max(kl, 0.0);
}

void check_fits(const LlamaModel& m, int ctx, const char* which) {
  if (ctx > m.config().max_seq_len)
    throw Error(std::string("evaluation window of ") + std::to_string(ctx) + " tokens exceeds the " + which +
                " model's context length (" + std::to_string(m.config().max_seq_len) + " tokens): use a smaller ctx");
}

// Validates the options before anything is allocated; returns ctx.
int checked_ctx(const LlamaModel& model, const EvalOptions& options) {
  validate(options.ctx, options.stride);
  check_fits(model, options.ctx, "evaluated");
  return options.ctx;
}

}  // namespace

std::vector<EvalWindow> eval_windows(int64_t n_tokens, int ctx, int stride) {
  validate(ctx, stride);
  if (n_tokens < 2) throw Error("evaluation needs at least 2 tokens, got " + std::to_string(n_tokens));
  const int s = effective_stride(ctx, stride);
  std::vector<EvalWindow> windows;
  int64_t prev_end = 0;
  for (int64_t begin = 0;; begin += s) {
    const int64_t end = std::min<int64_t>(begin + ctx, n_tokens);
    windows.push_back({begin, end, std::max(prev_end, begin + 1)});
    prev_end = end;
    if (end == n_tokens) break;
  }
  return windows;
}

Evaluator::Evaluator(LlamaModel& model, LlamaModel* reference, const EvalOptions& options)
    : model_(model),
      reference_(reference),
      options_(options),
      vocab_(model.config().vocab_size),
      cache_(model.make_cache(checked_ctx(model, options))) {
  options_.stride = effective_stride(options_.ctx, options_.stride);
  const size_t rows = sz(options_.ctx) * sz(vocab_);
  logits_.assign(rows, 0.0f);
  logp_.assign(sz(vocab_), 0.0);
  if (reference_) {
    if (reference_->config().vocab_size != vocab_)
      throw Error("the reference model has a vocabulary of " + std::to_string(reference_->config().vocab_size) +
                  " tokens but the evaluated model has " + std::to_string(vocab_) +
                  ": KL divergence and top-1 agreement need the same vocabulary");
    check_fits(*reference_, options_.ctx, "reference");
    ref_cache_.emplace(reference_->make_cache(options_.ctx));
    ref_logits_.assign(rows, 0.0f);
    ref_logp_.assign(sz(vocab_), 0.0);
  }
}

EvalResult Evaluator::run(std::span<const int> tokens) {
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const std::vector<EvalWindow> windows = eval_windows(n, options_.ctx, options_.stride);
  EvalResult r;
  r.has_reference = reference_ != nullptr;
  const int64_t total = n - 1;
  const size_t V = sz(vocab_);
  for (const EvalWindow& w : windows) {
    const auto slice = tokens.subspan(sz(w.begin), sz(w.end - w.begin));
    model_.forward(slice, 0, cache_, LogitsMode::kAll, logits_.data());
    if (reference_) reference_->forward(slice, 0, *ref_cache_, LogitsMode::kAll, ref_logits_.data());
    // Target t[j] is predicted by the logits of row j - 1 - begin of this window.
    for (int64_t j = w.score_begin; j < w.end; ++j) {
      const size_t row = sz(j - 1 - w.begin);
      const int target = tokens[sz(j)];
      const int top = log_softmax(logits_.data() + row * V, vocab_, logp_.data());
      r.nll_sum -= logp_[sz(target)];
      if (reference_) {
        const int ref_top = log_softmax(ref_logits_.data() + row * V, vocab_, ref_logp_.data());
        r.reference_nll_sum -= ref_logp_[sz(target)];
        const double kl = kl_divergence(ref_logp_.data(), logp_.data(), vocab_);
        r.kl_sum += kl;
        r.max_kl = std::max(r.max_kl, kl);
        if (top == ref_top) ++r.top1_matches;
      }
    }
    r.tokens += w.end - w.score_begin;
    ++r.windows;
    if (options_.progress) options_.progress(r.tokens, total);
  }
  TESSERA_CHECK(r.tokens == total);
  const double count = static_cast<double>(r.tokens);
  r.mean_nll = r.nll_sum / count;
  r.perplexity = std::exp(r.mean_nll);
  if (reference_) {
    r.reference_mean_nll = r.reference_nll_sum / count;
    r.reference_perplexity = std::exp(r.reference_mean_nll);
    r.mean_kl = r.kl_sum / count;
    r.top1_agreement = static_cast<double>(r.top1_matches) / count;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace tessera
