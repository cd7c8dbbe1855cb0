#include "engine/model/llama_model.h"

#include <algorithm>
#include <string>

#include "engine/core/check.h"

namespace tessera {

namespace {
size_t sz(int v) {
  return static_cast<size_t>(v);
}
}  // namespace

LlamaModel::LlamaModel(const ModelData& model, Backend& backend, int max_batch_tokens)
    : model_(model),
      backend_(backend),
      max_batch_tokens_(std::max(1, max_batch_tokens)),
      rope_(model.config, model.config.max_seq_len) {
  const ModelConfig& c = model.config;
  const size_t rows = sz(max_batch_tokens_);
  x_.resize(rows * sz(c.dim));
  xb_.resize(rows * sz(c.dim));
  q_.resize(rows * sz(c.q_dim()));
  att_.resize(rows * sz(c.q_dim()));
  proj_.resize(rows * sz(c.dim));
  hidden_.resize(rows * sz(c.hidden_dim));
  positions_.resize(rows);
}

void LlamaModel::forward(std::span<const int> tokens, int pos0, KvCache& cache, LogitsMode mode, float* logits) {
  const ModelConfig& c = model_.config;
  const int n = static_cast<int>(tokens.size());
  if (n == 0) throw Error("forward: no tokens");
  if (pos0 < 0 || pos0 + n > cache.capacity() || pos0 + n > c.max_seq_len)
    throw Error("sequence of " + std::to_string(pos0 + n) + " tokens exceeds the context (" +
                std::to_string(std::min(cache.capacity(), c.max_seq_len)) + " tokens)");
  for (int t : tokens)
    if (t < 0 || t >= c.vocab_size)
      throw Error("token id " + std::to_string(t) + " is outside the vocabulary (" + std::to_string(c.vocab_size) +
                  ")");
  for (int done = 0; done < n; done += max_batch_tokens_) {
    const int chunk = std::min(max_batch_tokens_, n - done);
    const bool last_chunk = done + chunk == n;
    float* out = mode == LogitsMode::kAll ? logits + sz(done) * sz(c.vocab_size) : logits;
    forward_chunk(tokens.data() + done, chunk, pos0 + done, cache, mode == LogitsMode::kAll || last_chunk, mode, out);
  }
}

void LlamaModel::forward_chunk(const int* tokens, int n, int pos0, KvCache& cache, bool want_logits, LogitsMode mode,
                               float* logits) {
  const ModelConfig& c = model_.config;
  const ModelWeights& w = model_.weights;
  Backend& be = backend_;
  const size_t dim = sz(c.dim);
  const size_t kv_dim = sz(c.kv_dim());
  const AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim};
  for (int i = 0; i < n; ++i) positions_[sz(i)] = pos0 + i;

  float* x = x_.data();
  float* xb = xb_.data();
  be.embedding(w.tok_embeddings, tokens, n, x);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[sz(l)];
    const KvLayer kv = cache.layer(l);
    // Keys and values are projected straight into their cache rows; RoPE then rotates q and k in place.
    float* k_rows = kv.k + sz(pos0) * kv_dim;
    float* v_rows = kv.v + sz(pos0) * kv_dim;
    be.rmsnorm(x, lw.attn_norm.data(), n, c.dim, c.rms_eps, xb);
    if (observer_) observer_->observe(l, LinearInput::kAttnIn, xb, n, c.dim);
    be.matmul(xb, n, lw.wq, lw.bq.empty() ? nullptr : lw.bq.data(), q_.data());
    be.matmul(xb, n, lw.wk, lw.bk.empty() ? nullptr : lw.bk.data(), k_rows);
    be.matmul(xb, n, lw.wv, lw.bv.empty() ? nullptr : lw.bv.data(), v_rows);
    be.rope(q_.data(), n, c.n_heads, positions_.data(), rope_.table());
    be.rope(k_rows, n, c.n_kv_heads, positions_.data(), rope_.table());
    be.attention(q_.data(), n, pos0, kv, shape, att_.data());
    if (observer_) observer_->observe(l, LinearInput::kAttnOut, att_.data(), n, c.q_dim());
    be.matmul(att_.data(), n, lw.wo, nullptr, proj_.data());
    be.add(x, proj_.data(), sz(n) * dim);

    be.rmsnorm(x, lw.ffn_norm.data(), n, c.dim, c.rms_eps, xb);
    if (observer_) observer_->observe(l, LinearInput::kFfnIn, xb, n, c.dim);
    be.matmul_silu_mul(xb, n, lw.w_gate, lw.w_up, hidden_.data());
    if (observer_) observer_->observe(l, LinearInput::kFfnMid, hidden_.data(), n, c.hidden_dim);
    be.matmul(hidden_.data(), n, lw.w_down, nullptr, proj_.data());
    be.add(x, proj_.data(), sz(n) * dim);
  }
  if (!want_logits) return;
  if (mode == LogitsMode::kAll) {
    be.rmsnorm(x, w.final_norm.data(), n, c.dim, c.rms_eps, xb);
    be.matmul(xb, n, w.lm_head, nullptr, logits);
  } else {
    const float* last = x + sz(n - 1) * dim;
    be.rmsnorm(last, w.final_norm.data(), 1, c.dim, c.rms_eps, xb);
    be.matmul(xb, 1, w.lm_head, nullptr, logits);
  }
}

}  // namespace tessera
