// Memory of one rank of a model before anything is loaded (`tessera plan`): the bytes of each weight as the rank
// will store it, the KV cache per token, and the scratch the runtime allocates. Pure computation, no I/O.
//
// Agreement with the loader is by construction: a rank's slices come from plan_shard / split_of (what
// shard_weights and the dummy generator cut), a stored row's size from dtype_row_bytes (what Matrix::bytes() and
// the quantizer allocate), KV rows from the shard's kv heads (what LlamaModel::make_cache allocates).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "engine/model/model_config.h"
#include "engine/model/shard.h"

namespace tessera {

// How one weight matrix of the whole model is stored once loaded and compressed.
struct StoredWeight {
  ShardedWeight kind = ShardedWeight::kWq;
  int layer = -1;  // global layer index; -1 for tok_embeddings and lm_head
  DType dtype = DType::F32;
  int group = 0;  // Q4/Q4A/NF4 group size, 0 otherwise

  // The canonical name that quantization rules match: "tok_embeddings", "layers.3.wq", "lm_head".
  std::string name() const;
};

// Every matrix of a model in the compression pipeline's order (tok_embeddings, each layer's wq wk wv wo w_gate
// w_up w_down, lm_head), all stored as `dtype`. lm_head is listed for tied models too: a rule may give it its own
// storage.
std::vector<StoredWeight> model_weights(const ModelConfig& config, DType dtype);

struct MatrixShape {
  int64_t rows = 0;
  int64_t cols = 0;
};

// The part of `weight` that `shard` holds (0 x 0 when the shard does not hold it: another stage's layer or the
// embeddings / lm_head outside the first / last stage).
MatrixShape shard_shape(const ModelConfig& config, const ModelShard& shard, const StoredWeight& weight);

// Bytes the shard stores for `weight` (rows x dtype_row_bytes). A tied lm_head sharing the embedding table is
// accounted by plan_rank_memory, not here.
size_t shard_weight_bytes(const ModelConfig& config, const ModelShard& shard, const StoredWeight& weight);

// Bytes of KV cache per token position on this shard: fp32 keys and values of its layers and its kv heads
// (2 x layers x kv_heads x head_dim x 4), what LlamaModel::make_cache allocates per position.
size_t kv_bytes_per_token(const ModelConfig& config, const ModelShard& shard);

// The runtime settings that size the scratch buffers.
struct WorkspaceOptions {
  int max_step_tokens = 256;  // LlamaModel's max_batch_tokens (serve --max-step-tokens; generate uses 256)
  int max_num_seqs = 64;      // sequences per step: at most min(this, max_step_tokens) rows of logits
  int in_flight = 0;          // pipeline steps in flight (0: pp_size, as the CLI's default)
};

// Scratch allocated besides weights and KV cache, in bytes.
struct WorkspaceBytes {
  size_t activations = 0;  // LlamaModel: max_step_tokens x (3 dim + 2 q + 2 kv + hidden) fp32 + positions
  size_t rope = 0;         // RopeCache: context x head_dim fp32 (cos and sin tables)
  size_t logits = 0;       // logits buffers: steps in flight x rows x vocab fp32 (+ the vocab-parallel gather)
  size_t total() const { return activations + rope + logits; }
};

WorkspaceBytes workspace_bytes(const ModelConfig& config, const ModelShard& shard, const WorkspaceOptions& options);

// Matrix bytes of one storage scheme (dtype + group).
struct SchemeBytes {
  DType dtype = DType::F32;
  int group = 0;
  size_t bytes = 0;
  size_t tensors = 0;  // matrices stored this way (a tied lm_head sharing the embeddings counts once)
};

struct RankMemory {
  int world_rank = 0;  // stage * tp_size + tp_rank, as under mpirun
  ModelShard shard;
  std::vector<SchemeBytes> matrices;  // by storage scheme, in order of first appearance
  size_t vector_bytes = 0;            // fp32 norm weights and q/k/v biases
  WorkspaceBytes workspace;
  size_t kv_per_token = 0;

  size_t weight_bytes() const;
  // Weights + workspace: what the rank needs before any KV cache.
  size_t fixed_bytes() const { return weight_bytes() + workspace.total(); }
  // KV token positions that fit in `memory` next to the fixed bytes (0 when even those do not fit).
  int64_t kv_tokens(size_t memory) const;
};

// One rank's memory. `weights`: every matrix of the whole model as stored (model_weights, with the schemes
// resolved); the shard takes its slices of them. A tied lm_head on a rank that also holds the embeddings shares
// their storage when both are stored the same way (as compress_model and shard_weights do).
RankMemory plan_rank_memory(const ModelConfig& config, const ModelShard& shard, std::span<const StoredWeight> weights,
                            const WorkspaceOptions& options);

// Every rank of a tp x pp job, in world-rank order. `request` gives tp_size, pp_size, pp_layers and
// column_align (its tp_rank / pp_stage are ignored). Throws tessera::Error when the layout cannot split the
// model (plan_shard's messages).
std::vector<RankMemory> plan_memory(const ModelConfig& config, std::span<const StoredWeight> weights,
                                    const ShardRequest& request, const WorkspaceOptions& options);

}  // namespace tessera
