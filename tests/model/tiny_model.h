// Test helper: a small Llama-family model with random weights of a chosen storage type, built in memory.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>

#include "engine/core/check.h"
#include "engine/model/weights.h"

namespace tessera::testing {

inline ModelConfig tiny_config(int n_heads = 4, int n_kv_heads = 2, bool qkv_bias = false, bool tied = false) {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 72;
  c.n_layers = 2;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.head_dim = 8;
  c.vocab_size = 61;
  c.max_seq_len = 64;
  c.qkv_bias = qkv_bias;
  c.tied_embeddings = tied;
  c.rope_style = RopeStyle::kHalfSplit;
  return c;
}

inline ModelData tiny_model(const ModelConfig& c, DType dtype, uint64_t seed = 1) {
  ModelData m;
  m.config = c;
  m.source = "tiny-random";
  std::mt19937_64 rng(seed);
  auto matrix = [&](int rows, int cols) {
    std::normal_distribution<float> dist(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
    Matrix w{dtype, rows, cols, nullptr};
    uint8_t* buf = m.store->allocate(w.bytes());
    for (int64_t i = 0; i < static_cast<int64_t>(rows) * cols; ++i) {
      const float v = dist(rng);
      switch (dtype) {
        case DType::F32:
          std::memcpy(buf + 4 * i, &v, 4);
          break;
        case DType::F16: {
          const uint16_t h = f32_to_f16(v);
          std::memcpy(buf + 2 * i, &h, 2);
          break;
        }
        case DType::BF16: {
          const uint16_t h = f32_to_bf16(v);
          std::memcpy(buf + 2 * i, &h, 2);
          break;
        }
        default:
          TESSERA_CHECK_MSG(false, "plain weight dtype expected");
      }
    }
    w.data = buf;
    return w;
  };
  auto vec = [&](int n, float center, float spread) {
    std::uniform_real_distribution<float> dist(center - spread, center + spread);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = dist(rng);
    return v;
  };
  m.weights.tok_embeddings = matrix(c.vocab_size, c.dim);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights lw;
    lw.attn_norm = vec(c.dim, 1.0f, 0.2f);
    lw.wq = matrix(c.q_dim(), c.dim);
    lw.wk = matrix(c.kv_dim(), c.dim);
    lw.wv = matrix(c.kv_dim(), c.dim);
    if (c.qkv_bias) {
      lw.bq = vec(c.q_dim(), 0.0f, 0.3f);
      lw.bk = vec(c.kv_dim(), 0.0f, 0.3f);
      lw.bv = vec(c.kv_dim(), 0.0f, 0.3f);
    }
    lw.wo = matrix(c.dim, c.q_dim());
    lw.ffn_norm = vec(c.dim, 1.0f, 0.2f);
    lw.w_gate = matrix(c.hidden_dim, c.dim);
    lw.w_up = matrix(c.hidden_dim, c.dim);
    lw.w_down = matrix(c.dim, c.hidden_dim);
    m.weights.layers.push_back(std::move(lw));
  }
  m.weights.final_norm = vec(c.dim, 1.0f, 0.2f);
  m.weights.lm_head = c.tied_embeddings ? m.weights.tok_embeddings : matrix(c.vocab_size, c.dim);
  return m;
}

}  // namespace tessera::testing
