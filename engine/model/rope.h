// RoPE frequency tables (with Llama-3 frequency scaling) for every position up to a maximum.
#pragma once

#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/model_config.h"

namespace tessera {

// Inverse frequencies theta^(-2i/d) for i < head_dim/2, scaled per config.rope_scaling (Llama-3.1 rule).
std::vector<double> rope_inverse_frequencies(const ModelConfig& config);

class RopeCache {
 public:
  RopeCache(const ModelConfig& config, int max_pos);
  const RopeTable& table() const { return table_; }

 private:
  std::vector<float> cos_;
  std::vector<float> sin_;
  RopeTable table_;
};

}  // namespace tessera
