#include "cli/memory_fit.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "cli/byte_size.h"
#include "engine/core/check.h"

namespace tessera::cli {

size_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long kib = 0;
    if (std::sscanf(line.c_str(), "MemAvailable: %llu kB", &kib) == 1) return static_cast<size_t>(kib) * 1024;
  }
  throw Error("cannot read MemAvailable from /proc/meminfo: pass the memory per rank with --memory SIZE");
}

std::vector<StoredWeight> stored_weights(const ModelDescription& model, const quant::CompressOptions& compress) {
  std::vector<std::string> names;
  for (const StoredWeight& w : model.weights) names.push_back(w.name());
  // The whole model is described, so a rule matching nothing is a typo, as in a single-process load.
  const std::vector<quant::QuantSpec> specs = quant::resolve_quant_specs(compress, names, /*check_unused=*/true);
  std::vector<StoredWeight> out = model.weights;
  for (size_t i = 0; i < out.size(); ++i) {
    if (specs[i].keep()) continue;
    out[i].dtype = *specs[i].dtype;
    out[i].group = is_grouped(out[i].dtype) ? specs[i].group : 0;
  }
  return out;
}

PresetLoadMemory preset_load_memory(const ModelDescription& preset, const quant::CompressOptions& compress,
                                    bool made_one_at_a_time, const ModelShard& shard) {
  const ModelConfig& c = preset.config;
  const WorkspaceOptions workspace;
  const RankMemory stored = plan_rank_memory(c, shard, stored_weights(preset, compress), workspace);
  const RankMemory generated = plan_rank_memory(c, shard, preset.weights, workspace);
  PresetLoadMemory m;
  m.stored = stored.fixed_bytes();
  m.uncompressed = generated.weight_bytes();
  if (made_one_at_a_time) {
    for (const StoredWeight& w : preset.weights)
      m.largest_in_flight = std::max(m.largest_in_flight, shard_weight_bytes(c, shard, w));
    m.peak = m.stored + m.largest_in_flight;
  } else {
    m.peak = std::max(m.uncompressed + stored.workspace.total(), m.stored);
  }
  return m;
}

void refuse_if_over(const std::string& what, const PresetLoadMemory& need, size_t available, int ranks_here,
                    bool compressed) {
  if (need.peak <= available) return;
  const std::string held = need.largest_in_flight > 0
                               ? "its weights as stored with the workspace " + format_bytes(need.stored) +
                                     ", and one matrix of " + format_bytes(need.largest_in_flight) + " in flight"
                               : "its weights as generated " + format_bytes(need.uncompressed) + " first";
  const std::string share = ranks_here > 1 ? ", shared by the " + std::to_string(ranks_here) + " ranks on it" : "";
  throw Error(what + " needs about " + format_bytes(need.peak) + " of memory on this rank (" + held +
              ") but this machine has " + format_bytes(available * static_cast<size_t>(std::max(1, ranks_here))) +
              " available" + share +
              (compressed ? ": choose a smaller scheme" : ": quantize it at load (e.g. --quant int4:g128)") +
              ", or split it with --tp/--pp over more machines (`tessera plan` shows what each layout needs)");
}

}  // namespace tessera::cli
