// Cuts a loaded model down to one rank's shard (engine/model/shard.h) before anything reads the weights.
//
// Loaders hand out views into memory-mapped checkpoints, so nothing has been read yet when this runs: a row
// range of a matrix stays a view (only those rows will ever be touched), a column range is copied out row by row
// (only those bytes are read), layers of other pipeline stages are dropped untouched. The bytes taken are
// counted in ModelData::shard_bytes_read. Load-time quantization runs afterwards, on the shard.
#pragma once

#include "engine/model/weights.h"

namespace tessera {

// Replaces model.weights by the shard's slices (storage stays in model.store) and sets model.shard.
// Column slices of quantized matrices (an already-quantized checkpoint) must start and end on block boundaries;
// otherwise throws tessera::Error.
void shard_weights(ModelData& model, const ModelShard& shard);

}  // namespace tessera
