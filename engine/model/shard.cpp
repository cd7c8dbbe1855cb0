#include "engine/model/shard.h"

#include <cmath>
#include <numeric>

#include "engine/core/check.h"

namespace tessera {

namespace {

std::string str(int64_t v) {
  return std::to_string(v);
}

// Part r of `total` split into `parts` pieces whose inner boundaries are multiples of `align` (as even as that
// allows). Throws when a piece would be empty.
IndexRange aligned_part(int64_t total, int parts, int r, int64_t align, const std::string& what) {
  auto boundary = [&](int i) -> int64_t {
    if (i == 0) return 0;
    if (i == parts) return total;
    const double ideal = static_cast<double>(total) * i / parts / static_cast<double>(align);
    return std::min<int64_t>(total, static_cast<int64_t>(std::llround(ideal)) * align);
  };
  const IndexRange range{boundary(r), boundary(r + 1)};
  for (int i = 0; i < parts; ++i)
    if (boundary(i + 1) <= boundary(i))
      throw Error("cannot split " + what + " (" + str(total) + ") into " + str(parts) +
                  " tensor-parallel parts at multiples of " + str(align) + " (the quantization group size)");
  return range;
}

}  // namespace

std::string ModelShard::describe() const {
  return "tp " + str(tp_rank) + "/" + str(tp_size) + ", pp " + str(pp_stage) + "/" + str(pp_size) + ", layers " +
         str(layer_begin) + "-" + str(layer_end - 1);
}

WeightSplit split_of(const ModelShard& s, const ModelConfig& c, ShardedWeight w) {
  const IndexRange q{s.heads.begin * c.head_dim, s.heads.end * c.head_dim};
  const IndexRange kv{s.kv_heads.begin * c.head_dim, s.kv_heads.end * c.head_dim};
  switch (w) {
    case ShardedWeight::kEmbeddings:
    case ShardedWeight::kLmHead:
      return {true, s.vocab};
    case ShardedWeight::kWq:
      return {true, q};
    case ShardedWeight::kWk:
    case ShardedWeight::kWv:
      return {true, kv};
    case ShardedWeight::kWo:
      return {false, q};
    case ShardedWeight::kWGate:
    case ShardedWeight::kWUp:
      return {true, s.hidden};
    case ShardedWeight::kWDown:
      return {false, s.hidden};
  }
  TESSERA_CHECK(false);
  return {};
}

ModelShard whole_model_shard(const ModelConfig& c) {
  ModelShard s;
  s.layer_end = c.n_layers;
  s.heads = {0, c.n_heads};
  s.kv_heads = {0, c.n_kv_heads};
  s.hidden = {0, c.hidden_dim};
  s.vocab = {0, c.vocab_size};
  s.vocab_padded = c.vocab_size;
  return s;
}

ModelShard plan_shard(const ModelConfig& c, const ShardRequest& q) {
  const int tp = q.tp_size, pp = q.pp_size;
  if (tp < 1 || pp < 1) throw Error("--tp and --pp must be at least 1");
  TESSERA_CHECK(q.tp_rank >= 0 && q.tp_rank < tp && q.pp_stage >= 0 && q.pp_stage < pp && q.column_align >= 1);
  ModelShard s = whole_model_shard(c);
  s.tp_rank = q.tp_rank;
  s.tp_size = tp;
  s.pp_stage = q.pp_stage;
  s.pp_size = pp;

  // Pipeline stages: contiguous layer ranges.
  if (pp > c.n_layers)
    throw Error("--pp " + str(pp) + " is more pipeline stages than the model has layers (" + str(c.n_layers) + ")");
  std::vector<int> counts = q.pp_layers;
  if (counts.empty()) {
    for (int i = 0; i < pp; ++i) counts.push_back(c.n_layers / pp + (i < c.n_layers % pp ? 1 : 0));
  } else {
    if (static_cast<int>(counts.size()) != pp)
      throw Error("--pp-layers lists " + str(static_cast<int64_t>(counts.size())) + " stages, but --pp is " + str(pp));
    for (int n : counts)
      if (n < 1) throw Error("--pp-layers: every stage needs at least one layer");
    if (std::accumulate(counts.begin(), counts.end(), 0) != c.n_layers)
      throw Error("--pp-layers must add up to the model's " + str(c.n_layers) + " layers");
  }
  s.layer_begin = std::accumulate(counts.begin(), counts.begin() + q.pp_stage, 0);
  s.layer_end = s.layer_begin + counts[static_cast<size_t>(q.pp_stage)];

  if (tp == 1) return s;
  // Tensor parallelism: whole heads per rank.
  if (c.n_heads % tp != 0)
    throw Error("--tp " + str(tp) + " does not divide the model's " + str(c.n_heads) + " attention heads");
  const int heads = c.n_heads / tp;
  s.heads = {static_cast<int64_t>(q.tp_rank) * heads, static_cast<int64_t>(q.tp_rank + 1) * heads};
  if (c.n_kv_heads % tp == 0) {
    const int kv = c.n_kv_heads / tp;
    s.kv_heads = {static_cast<int64_t>(q.tp_rank) * kv, static_cast<int64_t>(q.tp_rank + 1) * kv};
  } else if (tp % c.n_kv_heads == 0) {
    // Fewer kv heads than ranks: each rank keeps the one kv head its query heads read (replicated).
    const int64_t h = q.tp_rank / (tp / c.n_kv_heads);
    s.kv_heads = {h, h + 1};
  } else {
    throw Error("--tp " + str(tp) + " and the model's " + str(c.n_kv_heads) +
                " kv heads do not divide one another (needed to split or replicate them)");
  }
  const int64_t wo_split = static_cast<int64_t>(heads) * c.head_dim;
  if (wo_split % q.column_align != 0)
    throw Error("--tp " + str(tp) + " splits the attention output projection at column " + str(wo_split) +
                ", not a multiple of the quantization group size " + str(q.column_align) +
                "; use a smaller group or a smaller --tp");
  s.hidden = aligned_part(c.hidden_dim, tp, q.tp_rank, q.column_align, "the FFN hidden size");
  const int64_t chunk = (c.vocab_size + tp - 1) / tp;
  s.vocab = {std::min<int64_t>(c.vocab_size, q.tp_rank * chunk),
             std::min<int64_t>(c.vocab_size, (q.tp_rank + 1) * chunk)};
  s.vocab_padded = chunk;
  return s;
}

}  // namespace tessera
