// StepModel over ModelRunner: a step runs as one runner step (one forward_batch on every rank: matmuls over all
// sequences' rows together, attention per sequence), so the server runs the same in one process and as rank 0
// of a tensor x pipeline parallel job. Each sequence gets a runner slot. With a paged runner (the server's) the slot
// holds blocks of every rank's KV pool, exactly as many as the engine's BlockManager reserved for it (same block
// size and count), so admission by free blocks is admission by real memory. With a contiguous runner (tests) a slot
// is a cache of its own, opened at 64 positions and grown by doubling up to the context.
#pragma once

#include <unordered_map>
#include <vector>

#include "engine/runtime/model_runner.h"
#include "engine/serving/step_model.h"

namespace tessera::serving {

class RunnerStepModel final : public StepModel {
 public:
  explicit RunnerStepModel(ModelRunner& runner);

  int vocab_size() const override { return runner_.config().vocab_size; }
  int context_length() const override { return runner_.config().max_seq_len; }
  // Rows one step may carry (the engine's max_step_tokens must not exceed it).
  int max_step_tokens() const { return runner_.max_batch_tokens(); }
  void forward(std::span<const int> tokens, std::span<const ScheduledChunk> chunks, float* logits) override;
  void release(int seq_id) override;

 private:
  // The slot of seq_id with room for `rows` positions; keeps its first `keep` positions when it grows.
  int slot_for(int seq_id, int rows, int keep);

  ModelRunner& runner_;
  std::unordered_map<int, int> slot_of_;  // seq_id -> runner slot
  std::vector<int> free_slots_;
  int next_slot_ = 0;
  std::vector<StepChunk> batch_;
};

}  // namespace tessera::serving
