// Entry point for loading a model from disk: picks the format from the path.
//   - a directory with config.json            -> Hugging Face (safetensors, sharded or not)
//   - a file whose first bytes are "ak42" magic -> llama2.c versioned checkpoint (fp32, version 1)
//   - any other regular file                  -> llama2.c legacy checkpoint (7 x int32 header)
//   - a directory whose config.json has "tessera_format" -> a model saved by `tessera quantize` (already compressed)
// Errors (missing file, malformed header, wrong shapes, ...) throw tessera::Error naming the file and the problem.
#pragma once

#include <string>

#include "engine/model/weights.h"

namespace tessera {

ModelData load_model(const std::string& path);

}  // namespace tessera
