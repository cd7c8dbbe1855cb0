#include "engine/model/backend_weights.h"

namespace tessera {

namespace {
const float* data_or_null(const std::vector<float>& v) {
  return v.empty() ? nullptr : v.data();
}
}  // namespace

BackendWeights::BackendWeights(const ModelWeights& w, const RopeTable& host_rope, Backend& backend)
    : backend_(backend) {
  const auto vec = [&](const std::vector<float>& v) { return floats(data_or_null(v), v.size()); };
  tok_embeddings = backend.upload(w.tok_embeddings);
  // Tied embeddings are one view: upload them once.
  const bool tied = w.lm_head.data == w.tok_embeddings.data && w.lm_head.dtype == w.tok_embeddings.dtype &&
                    w.lm_head.rows == w.tok_embeddings.rows && w.lm_head.cols == w.tok_embeddings.cols;
  lm_head = tied ? tok_embeddings : backend.upload(w.lm_head);
  layers.reserve(w.layers.size());
  for (const LayerWeights& lw : w.layers) {
    BackendLayerWeights& b = layers.emplace_back();
    b.attn_norm = vec(lw.attn_norm);
    b.wq = backend.upload(lw.wq);
    b.wk = backend.upload(lw.wk);
    b.wv = backend.upload(lw.wv);
    b.bq = vec(lw.bq);
    b.bk = vec(lw.bk);
    b.bv = vec(lw.bv);
    b.wo = backend.upload(lw.wo);
    b.ffn_norm = vec(lw.ffn_norm);
    b.w_gate = backend.upload(lw.w_gate);
    b.w_up = backend.upload(lw.w_up);
    b.w_down = backend.upload(lw.w_down);
  }
  final_norm = vec(w.final_norm);
  rope = host_rope;
  const size_t table = static_cast<size_t>(host_rope.max_pos) * static_cast<size_t>(host_rope.half_dim);
  rope.cos = floats(host_rope.cos, table);
  rope.sin = floats(host_rope.sin, table);
}

const float* BackendWeights::floats(const float* host, size_t count) {
  if (count == 0) return nullptr;
  if (backend_.host_memory()) return host;
  BackendBuffer& b = copies_.emplace_back(backend_.allocate(count * sizeof(float)));
  backend_.copy_to_backend(b.data(), host, count * sizeof(float));
  return b.as<const float>();
}

}  // namespace tessera
