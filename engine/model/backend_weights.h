// What LlamaModel reads, in its backend's memory space: every weight matrix (Backend::upload), the norm weights,
// biases and the RoPE table. On a host-memory backend these are the loaded views and vectors themselves (no copy,
// no memory); on a device backend, device copies made once at construction.
#pragma once

#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/weights.h"

namespace tessera {

struct BackendLayerWeights {
  const float* attn_norm = nullptr;
  Matrix wq, wk, wv;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;  // null without biases
  Matrix wo;
  const float* ffn_norm = nullptr;
  Matrix w_gate, w_up, w_down;
};

class BackendWeights {
 public:
  // `rope` is a host table (RopeCache::table()). The weights, the backend and the table must outlive this.
  BackendWeights(const ModelWeights& weights, const RopeTable& rope, Backend& backend);
  BackendWeights(const BackendWeights&) = delete;
  BackendWeights& operator=(const BackendWeights&) = delete;

  Matrix tok_embeddings, lm_head;
  std::vector<BackendLayerWeights> layers;
  const float* final_norm = nullptr;
  RopeTable rope;

 private:
  // Backend copy of `count` host floats (the host pointer itself on a host backend; null when count is 0).
  const float* floats(const float* host, size_t count);

  Backend& backend_;
  std::vector<BackendBuffer> copies_;  // device backends only
};

}  // namespace tessera
