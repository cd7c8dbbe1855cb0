#include "loaders/weight_assembly.h"

#include <cstring>

#include "engine/core/check.h"

namespace tessera {
namespace {

const FoundTensor& require(const ModelData& model, TensorFormat format, const TensorFinder& find, Slot slot,
                           int layer) {
  const FoundTensor* t = find(slot, layer);
  if (t == nullptr) {
    std::string why;
    if (slot == Slot::kLmHead) why = " (the config says the embeddings are not tied)";
    if (slot == Slot::kBq || slot == Slot::kBk || slot == Slot::kBv)
      why = " (" + model.config.arch + " has q/k/v biases)";
    throw Error(model.source + ": missing tensor '" + tensor_name(format, slot, layer) + "'" + why);
  }
  const std::vector<int64_t> want = expected_shape(model.config, slot);
  if (t->shape != want)
    throw Error(t->file + ": tensor '" + t->name + "' has shape " + shape_string(t->shape) + ", expected " +
                shape_string(want) + " from the model config");
  return *t;
}

std::vector<float> to_vector(const FoundTensor& t) {
  // Element by element through memcpy: the data may sit at any address (see to_matrix).
  const size_t n = static_cast<size_t>(t.shape[0]), size = dtype_size(t.dtype);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    alignas(4) uint8_t element[4];
    std::memcpy(element, t.data + i * size, size);
    v[i] = load_as_f32(element, t.dtype, 0);
  }
  return v;
}

Matrix to_matrix(ModelData& model, const FoundTensor& t) {
  Matrix m;
  m.dtype = t.dtype;
  m.rows = t.shape[0];
  m.cols = t.shape[1];
  // Kernels read elements through typed pointers, so a view must be aligned for its type. safetensors does not
  // promise that (the JSON header has any length); llama2.c files always are.
  if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0) {
    m.data = t.data;
  } else {
    uint8_t* copy = model.store->allocate(m.bytes());
    std::memcpy(copy, t.data, m.bytes());
    m.data = copy;
  }
  return m;
}

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<int64_t> expected_shape(const ModelConfig& c, Slot slot) {
  switch (slot) {
    case Slot::kTokEmbeddings:
    case Slot::kLmHead:
      return {c.vocab_size, c.dim};
    case Slot::kAttnNorm:
    case Slot::kFfnNorm:
    case Slot::kFinalNorm:
      return {c.dim};
    case Slot::kWq:
      return {c.q_dim(), c.dim};
    case Slot::kWk:
    case Slot::kWv:
      return {c.kv_dim(), c.dim};
    case Slot::kBq:
      return {c.q_dim()};
    case Slot::kBk:
    case Slot::kBv:
      return {c.kv_dim()};
    case Slot::kWo:
      return {c.dim, c.q_dim()};
    case Slot::kWGate:
    case Slot::kWUp:
      return {c.hidden_dim, c.dim};
    case Slot::kWDown:
      return {c.dim, c.hidden_dim};
  }
  TESSERA_CHECK(false);
  return {};
}

void assemble_weights(ModelData& model, TensorFormat format, const TensorFinder& find) {
  const ModelConfig& c = model.config;
  ModelWeights& w = model.weights;
  auto matrix = [&](Slot s, int layer) { return to_matrix(model, require(model, format, find, s, layer)); };
  auto vector = [&](Slot s, int layer) { return to_vector(require(model, format, find, s, layer)); };

  w.tok_embeddings = matrix(Slot::kTokEmbeddings, -1);
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w.layers[static_cast<size_t>(i)];
    l.attn_norm = vector(Slot::kAttnNorm, i);
    l.wq = matrix(Slot::kWq, i);
    l.wk = matrix(Slot::kWk, i);
    l.wv = matrix(Slot::kWv, i);
    if (c.qkv_bias) {
      l.bq = vector(Slot::kBq, i);
      l.bk = vector(Slot::kBk, i);
      l.bv = vector(Slot::kBv, i);
    }
    l.wo = matrix(Slot::kWo, i);
    l.ffn_norm = vector(Slot::kFfnNorm, i);
    l.w_gate = matrix(Slot::kWGate, i);
    l.w_up = matrix(Slot::kWUp, i);
    l.w_down = matrix(Slot::kWDown, i);
  }
  w.final_norm = vector(Slot::kFinalNorm, -1);
  w.lm_head = c.tied_embeddings ? w.tok_embeddings : matrix(Slot::kLmHead, -1);
}

}  // namespace tessera
