#include "loaders/model_inspect.h"

#include <filesystem>

#include "engine/core/check.h"
#include "loaders/dummy_model.h"
#include "loaders/model_loader.h"
#include "loaders/quantized_checkpoint.h"

namespace tessera {

namespace {

const Matrix& matrix_of(const ModelWeights& w, const StoredWeight& s) {
  if (s.kind == ShardedWeight::kEmbeddings) return w.tok_embeddings;
  if (s.kind == ShardedWeight::kLmHead) return w.lm_head;
  const LayerWeights& l = w.layers[static_cast<size_t>(s.layer)];
  switch (s.kind) {
    case ShardedWeight::kWq:
      return l.wq;
    case ShardedWeight::kWk:
      return l.wk;
    case ShardedWeight::kWv:
      return l.wv;
    case ShardedWeight::kWo:
      return l.wo;
    case ShardedWeight::kWGate:
      return l.w_gate;
    case ShardedWeight::kWUp:
      return l.w_up;
    default:
      return l.w_down;
  }
}

std::string format_of(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(path)) return "llama2.c checkpoint";
  return is_quantized_checkpoint(path) ? "tessera quantize output" : "Hugging Face safetensors";
}

}  // namespace

ModelDescription describe_loaded(const ModelData& model) {
  TESSERA_CHECK_MSG(model.shard.layer_end == 0, "describe_loaded needs the whole model, not a shard");
  ModelDescription d;
  d.source = model.source;
  d.config = model.config;
  d.weights = model_weights(model.config, DType::F32);
  for (StoredWeight& s : d.weights) {
    const Matrix& m = matrix_of(model.weights, s);
    s.dtype = m.dtype;
    s.group = m.group;
  }
  return d;
}

ModelDescription describe_model(const std::string& path) {
  // load_model maps the files and builds views; the views are only read for their dtype and group here, and the
  // mapping is released on return.
  ModelDescription d = describe_loaded(load_model(path));
  d.format = format_of(path);
  return d;
}

ModelDescription describe_preset(const std::string& preset, DType dtype) {
  ModelDescription d;
  d.source = preset;
  d.format = "random-weight preset";
  d.config = dummy_preset_config(preset);
  d.weights = model_weights(d.config, dtype);
  return d;
}

}  // namespace tessera
