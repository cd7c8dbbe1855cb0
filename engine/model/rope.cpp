#include "engine/model/rope.h"

#include <cmath>
#include <numbers>

namespace tessera {

std::vector<double> rope_inverse_frequencies(const ModelConfig& config) {
  const int half = config.head_dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i)
    inv[static_cast<size_t>(i)] = 1.0 / std::pow(static_cast<double>(config.rope_theta), 2.0 * i / config.head_dim);
  const RopeScaling& s = config.rope_scaling;
  if (!s.enabled) return inv;
  // Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate smoothly in between.
  const double low_freq_wavelen = s.original_max_position / s.low_freq_factor;
  const double high_freq_wavelen = s.original_max_position / s.high_freq_factor;
  for (double& f : inv) {
    const double wavelen = 2.0 * std::numbers::pi / f;
    if (wavelen < high_freq_wavelen) continue;
    if (wavelen > low_freq_wavelen) {
      f /= s.factor;
    } else {
      const double smooth =
          (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = (1.0 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv;
}

RopeCache::RopeCache(const ModelConfig& config, int max_pos) {
  const int half = config.head_dim / 2;
  const std::vector<double> inv = rope_inverse_frequencies(config);
  cos_.resize(static_cast<size_t>(max_pos) * half);
  sin_.resize(cos_.size());
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = p * inv[static_cast<size_t>(i)];
      cos_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(angle));
      sin_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  table_ = RopeTable{cos_.data(), sin_.data(), half, max_pos, config.rope_style};
}

}  // namespace tessera
