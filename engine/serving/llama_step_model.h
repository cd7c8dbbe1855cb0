// StepModel over LlamaModel: a step runs as one LlamaModel::forward_batch call (matmuls over every sequence's
// rows together, attention per sequence). Each sequence has its own contiguous KvCache (LlamaModel::make_cache),
// grown by doubling up to the context; the BlockManager bounds how many rows they may use in all. When KvLayer
// gains block tables, the caches become views of one paged pool and only this file changes.
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "engine/model/llama_model.h"
#include "engine/serving/step_model.h"

namespace tessera::serving {

class LlamaStepModel final : public StepModel {
 public:
  explicit LlamaStepModel(LlamaModel& model);

  int vocab_size() const override { return model_.config().vocab_size; }
  int context_length() const override { return model_.config().max_seq_len; }
  // Rows one step may carry (the engine's max_step_tokens must not exceed it).
  int max_step_tokens() const { return model_.max_batch_tokens(); }
  void forward(std::span<const int> tokens, std::span<const ScheduledChunk> chunks, float* logits) override;
  void release(int seq_id) override { caches_.erase(seq_id); }

 private:
  // The cache of seq_id with room for at least `rows` rows (grown by copying its first `keep` rows).
  KvCache& cache_for(int seq_id, int rows, int keep);

  LlamaModel& model_;
  std::unordered_map<int, std::unique_ptr<KvCache>> caches_;
  std::vector<SequenceChunk> batch_;
};

}  // namespace tessera::serving
