#include "engine/serving/llama_step_model.h"

#include <algorithm>
#include <cstring>

#include "engine/core/check.h"

namespace tessera::serving {

LlamaStepModel::LlamaStepModel(LlamaModel& model) : model_(model) {}

KvCache& LlamaStepModel::cache_for(int seq_id, int rows, int keep) {
  std::unique_ptr<KvCache>& slot = caches_[seq_id];
  if (slot && slot->capacity() >= rows) return *slot;
  // Doubling keeps the copies O(total rows); 64 rows at first avoids many tiny growths during decode.
  const int limit = model_.config().max_seq_len;
  int capacity = slot ? slot->capacity() : 64;
  while (capacity < rows) capacity *= 2;
  capacity = std::max(std::min(capacity, limit), rows);
  auto grown = std::make_unique<KvCache>(model_.make_cache(capacity));
  if (slot) {
    for (int l = 0; l < grown->n_layers(); ++l) {
      const KvLayer from = slot->layer(l), to = grown->layer(l);
      TESSERA_CHECK(from.stride == to.stride);
      const size_t bytes = static_cast<size_t>(keep) * static_cast<size_t>(from.stride) * sizeof(float);
      if (keep > 0) {
        std::memcpy(to.k_row(0), from.k_row(0), bytes);
        std::memcpy(to.v_row(0), from.v_row(0), bytes);
      }
    }
  }
  slot = std::move(grown);
  return *slot;
}

void LlamaStepModel::forward(std::span<const int> tokens, std::span<const ScheduledChunk> chunks, float* logits) {
  batch_.clear();
  for (const ScheduledChunk& c : chunks) {
    KvCache& cache = cache_for(c.seq_id, c.pos0 + c.n_tokens, c.pos0);
    batch_.push_back(SequenceChunk{&cache, c.pos0, c.n_tokens, c.logits});
  }
  model_.forward_batch(tokens, batch_, logits);
}

}  // namespace tessera::serving
