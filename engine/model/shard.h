// Which part of a model one rank holds under tensor parallelism (tp) x pipeline parallelism (pp).
//
// Tensor parallel ranks of a stage split every layer: query heads, kv heads (replicated when there are fewer kv
// heads than ranks), FFN hidden channels and the vocabulary (embedding rows and lm_head rows). Column-parallel
// matrices (wq, wk, wv, w_gate, w_up, lm_head) keep a row range; row-parallel ones (wo, w_down) keep a column
// range and their partial outputs are summed with one all-reduce. Pipeline stages hold contiguous layer ranges;
// the first stage embeds, the last applies the final norm and lm_head.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/model_config.h"

namespace tessera {

struct IndexRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const IndexRange&) const = default;
};

struct ModelShard {
  int tp_rank = 0, tp_size = 1;
  int pp_stage = 0, pp_size = 1;
  int layer_begin = 0, layer_end = 0;  // global indices of the layers held
  IndexRange heads;                    // query heads
  IndexRange kv_heads;                 // kv heads (one replicated head when n_kv_heads < tp_size)
  IndexRange hidden;                   // FFN intermediate channels
  IndexRange vocab;                    // embedding and lm_head rows
  int64_t vocab_padded = 0;            // the largest vocab shard: the all-gather of logits sends this per rank

  bool first_stage() const { return pp_stage == 0; }
  bool last_stage() const { return pp_stage == pp_size - 1; }
  bool whole() const { return tp_size == 1 && pp_size == 1; }
  int n_layers() const { return layer_end - layer_begin; }
  std::string describe() const;  // "tp 1/2, pp 0/1, layers 0-4"
};

// The weights a shard cuts, and how: column-parallel ones keep a row range, row-parallel ones a column range.
enum class ShardedWeight { kEmbeddings, kWq, kWk, kWv, kWo, kWGate, kWUp, kWDown, kLmHead };
struct WeightSplit {
  bool by_rows = true;  // false: by columns
  IndexRange range;     // rows or columns kept
};
// The one place that knows which weight is split which way (also the q/k/v bias ranges: by_rows of wq/wk/wv).
WeightSplit split_of(const ModelShard& shard, const ModelConfig& config, ShardedWeight weight);

// The whole model as one shard.
ModelShard whole_model_shard(const ModelConfig& config);

struct ShardRequest {
  int tp_rank = 0, tp_size = 1;
  int pp_stage = 0, pp_size = 1;
  std::vector<int> pp_layers;  // layers per stage (pp_size entries summing to n_layers); empty = even split
  // Column splits of row-parallel matrices (wo, w_down) fall on multiples of this, so grouped quantization
  // applied per shard uses the same groups as one process (the largest group size of the schemes in use).
  int column_align = 1;
};

// Validates the request against the model (heads, kv heads, layers divisible; splits aligned) and returns this
// rank's shard. Throws tessera::Error with a message naming the numbers that do not fit.
ModelShard plan_shard(const ModelConfig& config, const ShardRequest& request);

}  // namespace tessera
