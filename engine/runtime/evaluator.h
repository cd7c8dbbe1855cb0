// Teacher-forced quality evaluation of a model on a token stream: sliding-window perplexity and, against a
// reference (teacher) model run on the same windows, the KL divergence and top-1 agreement of the next-token
// distributions. This is how a compressed model is compared with the uncompressed one.
//
// Windows (the Hugging Face "perplexity of fixed-length models" scheme): the stream t[0..N) is cut into windows
// [b, min(b + ctx, N)) with b = 0, stride, 2*stride, ... until a window reaches the end of the stream. Every
// window is run from position 0 with an empty KV cache, as a plain slice of the stream: nothing is prepended, so
// only the first window starts with BOS (when the stream does; tokenize the text with BOS first). The first window
// scores all its predictions t[1..end); a later window scores only the targets not scored before, t[prev_end..end),
// each with at least ctx - stride tokens of context. Every target t[1..N) is scored exactly once: N - 1 predictions.
// stride must be in [1, ctx - 1] so that the first target of every window has context inside the window.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "engine/model/kv_cache.h"
#include "engine/model/llama_model.h"

namespace tessera {

struct EvalOptions {
  int ctx = 256;   // window length in tokens (positions 0..ctx-1); at most the models' max_seq_len
  int stride = 0;  // window advance; 0 = ctx / 2
  // Called after each window with the number of predictions scored so far and the total; may be null.
  std::function<void(int64_t scored, int64_t total)> progress;
};

// One window: the stream slice [begin, end) it runs and the targets [score_begin, end) it scores.
struct EvalWindow {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t score_begin = 0;
};

// The windows for a stream of n_tokens (n_tokens >= 2). Throws tessera::Error for ctx < 2 or a stride outside
// [1, ctx - 1] (stride 0 means ctx / 2).
std::vector<EvalWindow> eval_windows(int64_t n_tokens, int ctx, int stride);

struct EvalResult {
  int64_t tokens = 0;   // predictions scored (N - 1)
  int64_t windows = 0;  // forward passes per model
  double nll_sum = 0.0;
  double mean_nll = 0.0;    // nats per token
  double perplexity = 0.0;  // exp(mean_nll)
  // With a reference model only (has_reference):
  bool has_reference = false;
  double reference_nll_sum = 0.0;
  double reference_mean_nll = 0.0;
  double reference_perplexity = 0.0;
  double kl_sum = 0.0;
  double mean_kl = 0.0;         // mean over scored positions of KL(P_ref || P_model), nats
  double max_kl = 0.0;          // largest per-position KL
  int64_t top1_matches = 0;     // positions where argmax(P_model) == argmax(P_ref)
  double top1_agreement = 0.0;  // top1_matches / tokens
  double seconds = 0.0;         // wall time of run()
};

class Evaluator {
 public:
  // reference may be null (perplexity only). Not owned; both must outlive the evaluator. All buffers (KV caches,
  // logits, log-probabilities) are allocated here. Throws tessera::Error when the vocabularies differ or ctx does
  // not fit a model's context length.
  Evaluator(LlamaModel& model, LlamaModel* reference, const EvalOptions& options);

  // Scores `tokens` (ids in the models' vocabulary, at least 2). Throws tessera::Error for invalid input.
  EvalResult run(std::span<const int> tokens);

  const EvalOptions& options() const { return options_; }

 private:
  LlamaModel& model_;
  LlamaModel* reference_;
  EvalOptions options_;
  int vocab_;
  KvCache cache_;
  std::optional<KvCache> ref_cache_;        // with a reference only
  std::vector<float> logits_, ref_logits_;  // [ctx][vocab]
  std::vector<double> logp_, ref_logp_;     // [vocab] log-softmax of one row
};

}  // namespace tessera
