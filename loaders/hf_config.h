// Hugging Face config.json -> ModelConfig for the supported architectures (Llama, Mistral, Qwen2).
#pragma once

#include <string>

#include "engine/model/model_config.h"

namespace tessera {

// Reads and validates `config_path`. Throws tessera::Error naming the file for unreadable JSON, an unsupported
// architecture or RoPE scaling, wrongly typed or absurd fields.
ModelConfig read_hf_config(const std::string& config_path);

}  // namespace tessera
