// What the serving engine needs from a model: run one scheduled step (several sequences' chunks together) and
// forget a sequence's cache. The engine thread is the only caller. RunnerStepModel adapts ModelRunner; tests use
// deterministic fakes so scheduling is tested without weights.
#pragma once

#include <span>

#include "engine/serving/scheduler.h"

namespace tessera::serving {

class StepModel {
 public:
  virtual ~StepModel() = default;
  virtual int vocab_size() const = 0;
  // Longest sequence (prompt plus generated) the model can hold.
  virtual int context_length() const = 0;
  // tokens: every chunk's tokens, chunk after chunk (chunks[i].n_tokens each, at positions chunks[i].pos0...).
  // logits: chunk after chunk, logit_rows(chunk) [vocab] rows: the logits after each of its tokens with all_logits,
  // after its last token with only logits. A chunk's last row is the same with or without all_logits (greedy
  // outputs must not change). Throws tessera::Error on bad input.
  virtual void forward(std::span<const int> tokens, std::span<const ScheduledChunk> chunks, float* logits) = 0;
  // Drops the keys and values of a sequence (finished, cancelled or preempted). No-op for unknown ids.
  virtual void release(int seq_id) = 0;
};

}  // namespace tessera::serving
