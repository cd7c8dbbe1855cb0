// Standard model shapes with random weights generated at load, for benchmarking without checkpoints
// (like vLLM's --load-format dummy). No tokenizer is needed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/dtype.h"
#include "engine/model/weights.h"

namespace tessera {

// Names accepted by make_dummy_model: llama-110m, tinyllama-1.1b, llama2-7b, llama3-8b, llama2-70b.
std::vector<std::string> dummy_preset_names();

// Config of a preset; throws tessera::Error listing the valid names for an unknown one.
ModelConfig dummy_preset_config(const std::string& preset);

// When the random weights are made: all before make_dummy_model returns, or each when first needed (ModelData's
// PendingWeights; load-time compression makes them one at a time, so the uncompressed model never exists whole).
enum class DummyFill { kAtLoad, kOnDemand };

// Builds the preset with weights of `dtype` drawn uniformly at a scale that keeps activations finite.
// Generation is multithreaded and deterministic for a given seed: a tensor's values do not depend on when it is
// made or on the others. With `shard`, only that rank's part is generated (the same values as cutting the whole
// model with shard_weights), so a large preset split over many ranks never exists whole on any of them.
ModelData make_dummy_model(const std::string& preset, DType dtype, uint64_t seed = 0, const ModelShard* shard = nullptr,
                           DummyFill when = DummyFill::kAtLoad);

}  // namespace tessera
