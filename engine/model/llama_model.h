// The Llama-family decoder (Llama 1/2/3, Mistral, Qwen2), written once against the Backend op interface.
#pragma once

#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/kv_cache.h"
#include "engine/model/rope.h"
#include "engine/model/weights.h"

namespace tessera {

enum class LogitsMode {
  kLast,  // logits of the last input row only: [vocab]
  kAll,   // logits of every input row: [n][vocab] (evaluation, tests)
};

// The inputs of a layer's linear projections, as seen during a forward pass. Calibration (activation-aware
// quantization, pruning) records statistics of them.
enum class LinearInput {
  kAttnIn,   // rmsnorm(x): input of wq, wk, wv              [n][dim]
  kAttnOut,  // attention output: input of wo                 [n][q_dim]
  kFfnIn,    // rmsnorm(x): input of w_gate, w_up             [n][dim]
  kFfnMid,   // silu(gate) * up: input of w_down              [n][hidden_dim]
};

class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  // Called on the forward thread with n rows of `cols` values each (host memory), valid only during the call.
  virtual void observe(int layer, LinearInput which, const float* x, int n, int cols) = 0;
};

class LlamaModel {
 public:
  // max_batch_tokens bounds the rows processed in one pass; longer inputs are split into chunks of that size.
  // All scratch buffers are allocated here, none in forward().
  LlamaModel(const ModelData& model, Backend& backend, int max_batch_tokens = 256);

  const ModelConfig& config() const { return model_.config; }
  Backend& backend() { return backend_; }

  // Runs `tokens` at positions pos0.. (prefill when tokens.size() > 1, decode when 1), appending their keys and
  // values to `cache`, and writes logits to `logits` (host memory, sized per `mode`).
  // Throws tessera::Error if the positions exceed the cache or a token id is outside the vocabulary.
  void forward(std::span<const int> tokens, int pos0, KvCache& cache, LogitsMode mode, float* logits);

  // Calibration hook; null (the default) turns it off. Not owned.
  void set_observer(ActivationObserver* observer) { observer_ = observer; }

 private:
  void forward_chunk(const int* tokens, int n, int pos0, KvCache& cache, bool want_logits, LogitsMode mode,
                     float* logits);

  const ModelData& model_;
  Backend& backend_;
  int max_batch_tokens_;
  RopeCache rope_;
  // Scratch, [max_batch_tokens][...]
  std::vector<float> x_, xb_, q_, att_, proj_, hidden_;
  std::vector<int> positions_;
  ActivationObserver* observer_ = nullptr;
};

}  // namespace tessera
