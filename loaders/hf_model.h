// Hugging Face model directories: config.json plus safetensors weights (one file, sharded with
// model.safetensors.index.json, or every *.safetensors file in the directory when there is no index).
#pragma once

#include <string>

#include "engine/model/weights.h"

namespace tessera {

// Throws tessera::Error naming the file and the problem. F32/F16/BF16 matrices are used in place.
ModelData load_hf_model(const std::string& dir);

}  // namespace tessera
