// Turns the tensors a checkpoint reader found into ModelWeights: one place that knows which slots a config
// needs, the shape each must have, and how vectors (fp32 copies) and matrices (zero-copy views) are built.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "engine/model/weights.h"
#include "loaders/tensor_names.h"

namespace tessera {

// A tensor as found in a checkpoint, not yet checked against the config.
struct FoundTensor {
  std::string file;  // for messages
  std::string name;  // the format's own name, for messages
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into storage owned by model.store
};

// Returns the tensor stored for a slot (layer -1 for non-layer slots), or nullptr when the checkpoint lacks it.
using TensorFinder = std::function<const FoundTensor*(Slot slot, int layer)>;

// The shape a slot must have under `config`.
std::vector<int64_t> expected_shape(const ModelConfig& config, Slot slot);

// Fills model.weights from model.config: every needed slot must be present (biases only with qkv_bias, lm_head
// only when untied; tied lm_head = tok_embeddings view) with the expected shape. Throws tessera::Error naming
// the file and tensor. Matrices stay views into the checkpoint unless misaligned for their dtype (then copied
// into model.store).
void assemble_weights(ModelData& model, TensorFormat format, const TensorFinder& find);

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace tessera
