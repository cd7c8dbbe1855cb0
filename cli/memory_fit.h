// Whether a model's weights fit this machine's memory, decided before anything is loaded: `tessera plan` prints it,
// and load() refuses a random-weight preset that cannot fit (its weights are anonymous memory, not pages of a
// file that the kernel can drop) instead of generating for minutes and being killed by the OOM killer.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "engine/model/memory_plan.h"
#include "loaders/model_inspect.h"
#include "quant/compress.h"

namespace tessera::cli {

// This machine's MemAvailable (/proc/meminfo) in bytes; throws tessera::Error when it cannot be read.
size_t mem_available();

// Every matrix of `model` as it will be stored once `compress` has run: the resolved scheme, or the loaded dtype
// where it is "keep". Throws tessera::Error for a rule that matches no weight.
std::vector<StoredWeight> stored_weights(const ModelDescription& model, const quant::CompressOptions& compress);

// What loading a random preset holds at its peak on one rank. With compression that makes the weights one at a
// time (no pruning, no calibration), the compressed shard plus its largest uncompressed matrix; otherwise the
// whole uncompressed shard (pruning and calibration read all of it before anything is compressed).
struct PresetLoadMemory {
  size_t peak = 0;
  size_t stored = 0;             // the shard's weights as stored after compression, with the runtime's workspace
  size_t largest_in_flight = 0;  // the largest uncompressed matrix (0 when everything is made first)
  size_t uncompressed = 0;       // the shard's weights as generated
};
PresetLoadMemory preset_load_memory(const ModelDescription& preset, const quant::CompressOptions& compress,
                                    bool made_one_at_a_time, const ModelShard& shard);

// Throws tessera::Error naming the numbers and what to do when the peak exceeds `available` (this rank's share of
// the machine; `ranks_here` ranks share it). `compressed`: the load already compresses (the hint differs).
void refuse_if_over(const std::string& what, const PresetLoadMemory& need, size_t available, int ranks_here,
                    bool compressed);

}  // namespace tessera::cli
