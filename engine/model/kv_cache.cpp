#include "engine/model/kv_cache.h"

#include "engine/core/check.h"

namespace tessera {

KvCache::KvCache(const ModelConfig& config, int capacity) : capacity_(capacity) {
  TESSERA_CHECK(capacity > 0);
  const size_t per_layer = static_cast<size_t>(capacity) * static_cast<size_t>(config.kv_dim());
  storage_.assign(per_layer * 2 * static_cast<size_t>(config.n_layers), 0.0f);
  layers_.resize(static_cast<size_t>(config.n_layers));
  for (int l = 0; l < config.n_layers; ++l) {
    float* base = storage_.data() + per_layer * 2 * static_cast<size_t>(l);
    layers_[static_cast<size_t>(l)] = KvLayer{base, base + per_layer, capacity};
  }
}

}  // namespace tessera
