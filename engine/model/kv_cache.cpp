#include "engine/model/kv_cache.h"

#include "engine/core/check.h"

namespace tessera {

KvCache::KvCache(const ModelConfig& config, int capacity)
    : KvCache(std::vector<int>(static_cast<size_t>(config.n_layers), config.kv_dim()), capacity) {}

KvCache::KvCache(const std::vector<int>& layer_kv_dims, int capacity) : KvCache(layer_kv_dims, capacity, nullptr) {}

KvCache::KvCache(Backend& backend, const std::vector<int>& layer_kv_dims, int capacity)
    : KvCache(layer_kv_dims, capacity, &backend) {}

KvCache::KvCache(const std::vector<int>& layer_kv_dims, int capacity, Backend* backend) : capacity_(capacity) {
  TESSERA_CHECK(capacity > 0);
  size_t total = 0;
  for (int d : layer_kv_dims) {
    TESSERA_CHECK(d > 0);
    total += 2 * static_cast<size_t>(capacity) * static_cast<size_t>(d);
  }
  const size_t bytes = total * sizeof(float);
  storage_ = backend != nullptr ? backend->allocate(bytes) : allocate_host_buffer(bytes);
  float* base = storage_.as<float>();
  for (int d : layer_kv_dims) {
    const size_t per_layer = static_cast<size_t>(capacity) * static_cast<size_t>(d);
    layers_.push_back(KvLayer{base, base + per_layer, capacity, d});
    base += 2 * per_layer;
  }
}

}  // namespace tessera
