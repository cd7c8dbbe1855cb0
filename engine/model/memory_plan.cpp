#include "engine/model/memory_plan.h"

#include <algorithm>

#include "engine/core/check.h"
#include "engine/model/llama_model.h"

namespace tessera {

namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

const char* slot_name(ShardedWeight kind) {
  switch (kind) {
    case ShardedWeight::kEmbeddings:
      return "tok_embeddings";
    case ShardedWeight::kLmHead:
      return "lm_head";
    case ShardedWeight::kWq:
      return "wq";
    case ShardedWeight::kWk:
      return "wk";
    case ShardedWeight::kWv:
      return "wv";
    case ShardedWeight::kWo:
      return "wo";
    case ShardedWeight::kWGate:
      return "w_gate";
    case ShardedWeight::kWUp:
      return "w_up";
    case ShardedWeight::kWDown:
      return "w_down";
  }
  TESSERA_CHECK(false);
  return "";
}

// The whole model's [rows][cols] of a matrix (the shapes weight_assembly checks checkpoints against).
MatrixShape whole_shape(const ModelConfig& c, ShardedWeight kind) {
  switch (kind) {
    case ShardedWeight::kEmbeddings:
    case ShardedWeight::kLmHead:
      return {c.vocab_size, c.dim};
    case ShardedWeight::kWq:
      return {c.q_dim(), c.dim};
    case ShardedWeight::kWk:
    case ShardedWeight::kWv:
      return {c.kv_dim(), c.dim};
    case ShardedWeight::kWo:
      return {c.dim, c.q_dim()};
    case ShardedWeight::kWGate:
    case ShardedWeight::kWUp:
      return {c.hidden_dim, c.dim};
    case ShardedWeight::kWDown:
      return {c.dim, c.hidden_dim};
  }
  TESSERA_CHECK(false);
  return {};
}

bool holds(const ModelShard& s, const StoredWeight& w) {
  if (w.kind == ShardedWeight::kEmbeddings) return s.first_stage();
  if (w.kind == ShardedWeight::kLmHead) return s.last_stage();
  return w.layer >= s.layer_begin && w.layer < s.layer_end;
}

bool same_storage(const StoredWeight& a, const StoredWeight& b) {
  return a.dtype == b.dtype && (!is_grouped(a.dtype) || a.group == b.group);
}

void add_bytes(std::vector<SchemeBytes>& by_scheme, const StoredWeight& w, size_t bytes) {
  const int group = is_grouped(w.dtype) ? w.group : 0;
  auto it = std::find_if(by_scheme.begin(), by_scheme.end(),
                         [&](const SchemeBytes& s) { return s.dtype == w.dtype && s.group == group; });
  if (it == by_scheme.end()) it = by_scheme.insert(by_scheme.end(), SchemeBytes{w.dtype, group, 0, 0});
  it->bytes += bytes;
  ++it->tensors;
}

constexpr ShardedWeight kLayerWeights[] = {ShardedWeight::kWq,   ShardedWeight::kWk,    ShardedWeight::kWv,
                                           ShardedWeight::kWo,   ShardedWeight::kWGate, ShardedWeight::kWUp,
                                           ShardedWeight::kWDown};

}  // namespace

std::string StoredWeight::name() const {
  if (layer < 0) return slot_name(kind);
  return "layers." + std::to_string(layer) + "." + slot_name(kind);
}

std::vector<StoredWeight> model_weights(const ModelConfig& config, DType dtype) {
  std::vector<StoredWeight> out;
  out.push_back({ShardedWeight::kEmbeddings, -1, dtype, 0});
  for (int l = 0; l < config.n_layers; ++l)
    for (ShardedWeight kind : kLayerWeights) out.push_back({kind, l, dtype, 0});
  out.push_back({ShardedWeight::kLmHead, -1, dtype, 0});
  return out;
}

MatrixShape shard_shape(const ModelConfig& config, const ModelShard& shard, const StoredWeight& weight) {
  if (!holds(shard, weight)) return {};
  MatrixShape shape = whole_shape(config, weight.kind);
  const WeightSplit split = split_of(shard, config, weight.kind);
  (split.by_rows ? shape.rows : shape.cols) = split.range.size();
  return shape;
}

size_t shard_weight_bytes(const ModelConfig& config, const ModelShard& shard, const StoredWeight& weight) {
  const MatrixShape shape = shard_shape(config, shard, weight);
  if (shape.rows == 0) return 0;
  return sz(shape.rows) * dtype_row_bytes(weight.dtype, shape.cols, is_grouped(weight.dtype) ? weight.group : 0);
}

size_t kv_bytes_per_token(const ModelConfig& config, const ModelShard& shard) {
  return 2 * sz(shard.n_layers()) * sz(shard.kv_heads.size()) * sz(config.head_dim) * sizeof(float);
}

WorkspaceBytes workspace_bytes(const ModelConfig& c, const ModelShard& s, const WorkspaceOptions& o) {
  TESSERA_CHECK(o.max_step_tokens > 0 && o.max_num_seqs > 0 && o.in_flight >= 0);
  WorkspaceBytes w;
  const size_t rows = sz(o.max_step_tokens);
  const size_t q = sz(s.heads.size() * c.head_dim), kv = sz(s.kv_heads.size() * c.head_dim);
  // LlamaModel's x_, xb_, proj_ [rows][dim]; q_, att_ [rows][q]; k_, v_ [rows][kv]; hidden_ [rows][hidden]; and
  // its per-row bookkeeping (positions, row runs, attention calls).
  w.activations = rows * (3 * sz(c.dim) + 2 * q + 2 * kv + sz(s.hidden.size())) * sizeof(float) +
                  rows * LlamaModel::bookkeeping_bytes_per_row();
  // RopeCache(config, config.max_seq_len): cos and sin of head_dim / 2 frequencies per position.
  w.rope = 2 * sz(c.max_seq_len) * sz(c.head_dim / 2) * sizeof(float);
  // One logits row per sequence with logits in a step; the last stage keeps one buffer per step in flight
  // (ModelRunner's ring), vocab-parallel ranks also their local rows and the all-gather's result; the leader
  // (world rank 0) receives the rows into its own buffer.
  const size_t logit_rows = sz(std::min(o.max_num_seqs, o.max_step_tokens));
  const size_t vocab = sz(c.vocab_size);
  if (s.last_stage()) {
    const size_t in_flight = s.pp_size > 1 ? sz(o.in_flight > 0 ? o.in_flight : s.pp_size) : 1;
    w.logits += in_flight * logit_rows * vocab * sizeof(float);
    if (s.tp_size > 1) w.logits += logit_rows * sz(s.vocab_padded) * (1 + sz(s.tp_size)) * sizeof(float);
  }
  if (s.tp_rank == 0 && s.pp_stage == 0) w.logits += logit_rows * vocab * sizeof(float);
  return w;
}

size_t RankMemory::weight_bytes() const {
  size_t total = vector_bytes;
  for (const SchemeBytes& s : matrices) total += s.bytes;
  return total;
}

int64_t RankMemory::kv_tokens(size_t memory) const {
  if (memory <= fixed_bytes() || kv_per_token == 0) return 0;
  return static_cast<int64_t>((memory - fixed_bytes()) / kv_per_token);
}

RankMemory plan_rank_memory(const ModelConfig& config, const ModelShard& shard, std::span<const StoredWeight> weights,
                            const WorkspaceOptions& options) {
  RankMemory r;
  r.world_rank = shard.pp_stage * shard.tp_size + shard.tp_rank;
  r.shard = shard;
  const StoredWeight* embeddings = nullptr;
  for (const StoredWeight& w : weights) {
    if (w.kind == ShardedWeight::kEmbeddings) embeddings = &w;
    if (!holds(shard, w)) continue;
    // A tied lm_head on the rank that holds the embedding table is a second view of it, unless a rule stored it
    // differently (compress_model then encodes it separately).
    if (w.kind == ShardedWeight::kLmHead && config.tied_embeddings && shard.first_stage() && embeddings != nullptr &&
        same_storage(w, *embeddings))
      continue;
    add_bytes(r.matrices, w, shard_weight_bytes(config, shard, w));
  }
  // fp32 vectors: attn_norm and ffn_norm per layer, q/k/v biases (their matrices' row ranges), final_norm.
  size_t floats = sz(shard.n_layers()) * 2 * sz(config.dim);
  if (config.qkv_bias)
    floats += sz(shard.n_layers()) * sz((shard.heads.size() + 2 * shard.kv_heads.size()) * config.head_dim);
  if (shard.last_stage()) floats += sz(config.dim);
  r.vector_bytes = floats * sizeof(float);
  r.workspace = workspace_bytes(config, shard, options);
  r.kv_per_token = kv_bytes_per_token(config, shard);
  return r;
}

std::vector<RankMemory> plan_memory(const ModelConfig& config, std::span<const StoredWeight> weights,
                                    const ShardRequest& request, const WorkspaceOptions& options) {
  if (request.tp_size < 1 || request.pp_size < 1) throw Error("--tp and --pp must be at least 1");
  std::vector<RankMemory> ranks;
  for (int stage = 0; stage < request.pp_size; ++stage) {
    for (int t = 0; t < request.tp_size; ++t) {
      ShardRequest q = request;
      q.pp_stage = stage;
      q.tp_rank = t;
      ranks.push_back(plan_rank_memory(config, plan_shard(config, q), weights, options));
    }
  }
  return ranks;
}

}  // namespace tessera
