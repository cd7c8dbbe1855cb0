// Helpers of the compression tests: model configs a little wider than tests/model/tiny_model.h's (so groups of
// 32..128 and ragged last groups both occur), logits on the reference backend, and error measures.
#pragma once

#include <cmath>
#include <cstring>
#include <span>
#include <vector>

#include "engine/backend/cpu/reference_backend.h"
#include "engine/model/kv_cache.h"
#include "engine/model/llama_model.h"
#include "quant/quant_traits.h"
#include "tests/model/tiny_model.h"

namespace tessera::test {

// dim 96 (three g32 groups, one ragged g64/g128 group), hidden 200 (ragged for every group size), GQA 4:2.
inline ModelConfig compress_config(bool tied = false, bool qkv_bias = false) {
  ModelConfig c = testing::tiny_config(4, 2, qkv_bias, tied);
  c.dim = 96;
  c.head_dim = 24;
  c.hidden_dim = 200;
  c.vocab_size = 83;
  c.max_seq_len = 96;
  return c;
}

// compress_config with 8 query heads in 4 KV groups of 12 channels: room for structured attention pruning.
inline ModelConfig gqa_compress_config(bool qkv_bias = true) {
  ModelConfig c = compress_config(false, qkv_bias);
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.head_dim = 12;
  return c;
}

inline std::vector<float> logits_of(const ModelData& m, const std::vector<int>& tokens) {
  ReferenceBackend be;
  LlamaModel model(m, be, 64);
  KvCache cache = model.make_cache(static_cast<int>(tokens.size()));  // each layer's own widths
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kAll, logits.data());
  return logits;
}

inline double rel_l2(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// The whole matrix as fp32 [rows][cols].
inline std::vector<float> dequantized(const Matrix& w) {
  std::vector<float> out(static_cast<size_t>(w.rows * w.cols));
  for (int64_t r = 0; r < w.rows; ++r) quant::dequantize_matrix_row(w, r, out.data() + r * w.cols);
  return out;
}

inline bool same_bytes(const Matrix& a, const Matrix& b) {
  return a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols && a.group == b.group &&
         std::memcmp(a.data, b.data, a.bytes()) == 0;
}

inline std::vector<const Matrix*> matrices_of(const ModelData& m) {
  std::vector<const Matrix*> out{&m.weights.tok_embeddings};
  for (const auto& l : m.weights.layers)
    for (const Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) out.push_back(w);
  out.push_back(&m.weights.lm_head);
  return out;
}

inline const quant::TensorReport& find_report(const quant::CompressReport& r, const std::string& name) {
  for (const auto& t : r.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no report for " + name);
}

inline std::vector<int> some_tokens(int n, int vocab, int seed = 3) {
  std::vector<int> t{1};
  uint32_t x = static_cast<uint32_t>(seed) * 2654435761u + 12345u;
  while (static_cast<int>(t.size()) < n) {
    x = x * 1664525u + 1013904223u;
    t.push_back(3 + static_cast<int>((x >> 8) % static_cast<uint32_t>(vocab - 3)));
  }
  return t;
}

}  // namespace tessera::test
