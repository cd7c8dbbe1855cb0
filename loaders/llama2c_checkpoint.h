// llama2.c checkpoints: the legacy layout (7 x int32 header, negative vocab_size = untied classifier, RoPE
// tables after the final norm) and export.py's version 1 "ak42" layout (256-byte header, fp32, different array
// order, no RoPE tables). Weights stay in the memory map.
#pragma once

#include <cstdint>
#include <string>

#include "engine/model/weights.h"

namespace tessera {

inline constexpr uint32_t kLlama2cMagic = 0x616b3432;  // "ak42" read as a little-endian uint32

// Loads either layout (told apart by the magic). Throws tessera::Error naming the file and the problem.
ModelData load_llama2c_checkpoint(const std::string& path);

}  // namespace tessera
