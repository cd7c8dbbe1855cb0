// Per-sequence KV cache: for every layer, keys and values of each position as fp32 rows [capacity][kv_dim].
// Contiguous for now; the paged cache of the serving engine replaces the storage, not the model code.
// The storage lives in a backend's memory space (LlamaModel::make_cache); the constructors without a backend make
// host memory, which the CPU backends use.
#pragma once

#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/model_config.h"

namespace tessera {

class KvCache {
 public:
  // Every layer of the whole model, in host memory.
  KvCache(const ModelConfig& config, int capacity);
  // One layer per entry of layer_kv_dims, each with rows of that many floats (a shard: its layers, its kv heads;
  // see LlamaModel::make_cache), in host memory.
  KvCache(const std::vector<int>& layer_kv_dims, int capacity);
  // The same in `backend`'s memory (zeroed; the backend must outlive the cache's use).
  KvCache(Backend& backend, const std::vector<int>& layer_kv_dims, int capacity);

  int capacity() const { return capacity_; }
  int n_layers() const { return static_cast<int>(layers_.size()); }
  KvLayer layer(int l) { return layers_[static_cast<size_t>(l)]; }
  size_t bytes() const { return storage_.bytes(); }

 private:
  KvCache(const std::vector<int>& layer_kv_dims, int capacity, Backend* backend);

  int capacity_;
  BackendBuffer storage_;
  std::vector<KvLayer> layers_;
};

}  // namespace tessera
