#include "engine/serving/runner_step_model.h"

#include <algorithm>

#include "engine/core/check.h"

namespace tessera::serving {

RunnerStepModel::RunnerStepModel(ModelRunner& runner) : runner_(runner) {}

int RunnerStepModel::slot_for(int seq_id, int rows, int keep) {
  const int limit = runner_.config().max_seq_len;
  auto it = slot_of_.find(seq_id);
  if (it == slot_of_.end()) {
    int slot = next_slot_;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      ++next_slot_;
    }
    // Paged: blocks for exactly what the step needs (growing takes blocks, copies nothing), as the engine's
    // BlockManager counted them. Contiguous: 64 positions at first avoids many tiny growths during decode.
    const int first = runner_.kv_pool() != nullptr ? rows : std::max(std::min(64, limit), std::min(rows, limit));
    runner_.open_slot(slot, first);
    it = slot_of_.emplace(seq_id, slot).first;
  }
  const int slot = it->second;
  const int capacity = runner_.slot_capacity(slot);
  if (capacity < rows && runner_.kv_pool() != nullptr) {
    runner_.grow_slot(slot, rows, keep);
  } else if (capacity < rows) {
    // Doubling keeps the copies O(total rows).
    int grown = capacity;
    while (grown < rows) grown *= 2;
    runner_.grow_slot(slot, std::max(std::min(grown, limit), rows), keep);
  }
  return slot;
}

void RunnerStepModel::forward(std::span<const int> tokens, std::span<const ScheduledChunk> chunks, float* logits) {
  batch_.clear();
  for (const ScheduledChunk& c : chunks) {
    const int slot = slot_for(c.seq_id, c.pos0 + c.n_tokens, c.pos0);
    const int32_t logits = c.all_logits ? StepChunk::kAllRows : c.logits ? StepChunk::kLastRow : StepChunk::kNoRows;
    batch_.push_back(StepChunk{slot, c.pos0, c.n_tokens, logits});
  }
  runner_.step(batch_, tokens, logits);
}

void RunnerStepModel::release(int seq_id) {
  const auto it = slot_of_.find(seq_id);
  if (it == slot_of_.end()) return;
  runner_.close_slot(it->second);
  free_slots_.push_back(it->second);
  slot_of_.erase(it);
}

}  // namespace tessera::serving
