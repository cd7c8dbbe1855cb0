// What `tessera plan` needs to know of a model without loading it: its configuration and how each weight
// matrix is stored (dtype and group), for every format load_model reads and for the random-weight presets.
#pragma once

#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "engine/model/memory_plan.h"
#include "engine/model/model_config.h"
#include "engine/model/weights.h"

namespace tessera {

struct ModelDescription {
  std::string source;  // path or preset name, for messages
  std::string format;  // "llama2.c checkpoint", "Hugging Face safetensors", "tessera quantize output", ...
  ModelConfig config;
  std::vector<StoredWeight> weights;  // every matrix as loaded, in model_weights() order
};

// Reads a checkpoint's description through load_model: the files are memory-mapped and only their headers (and
// the small fp32 norm vectors) are read; matrix bytes are never touched, so this costs no memory beyond the
// mapping's address space. Throws tessera::Error as load_model does (missing path, malformed file).
ModelDescription describe_model(const std::string& path);

// A random-weight preset (loaders/dummy_model.h) with weights of `dtype`; nothing is generated. Throws
// tessera::Error listing the presets for an unknown name.
ModelDescription describe_preset(const std::string& preset, DType dtype);

// The description of weights already in memory (whole model, not a shard).
ModelDescription describe_loaded(const ModelData& model);

}  // namespace tessera
