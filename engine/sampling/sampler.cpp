#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "engine/core/check.h"

namespace tessera {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature))
    throw Error("temperature must be >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw Error("top_k must be >= 0 (0 disables it), got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) throw Error("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(min_p >= 0.0f && min_p <= 1.0f)) throw Error("min_p must be in [0, 1], got " + std::to_string(min_p));
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty))
    throw Error("repetition_penalty must be > 0, got " + std::to_string(repetition_penalty));
}

Sampler::Sampler(const SamplingParams& params, int vocab_size)
    : params_(params), vocab_size_(vocab_size), rng_(params.seed ? *params.seed : std::random_device{}()) {
  params_.validate();
  TESSERA_CHECK(vocab_size > 0);
  candidates_.reserve(static_cast<size_t>(vocab_size));
  seen_.assign(static_cast<size_t>(vocab_size), 0);
}

void Sampler::apply_repetition_penalty(float* logits, std::span<const int> context) {
  if (params_.repetition_penalty == 1.0f) return;
  const float penalty = params_.repetition_penalty;
  for (int t : context) {
    if (t < 0 || t >= vocab_size_ || seen_[static_cast<size_t>(t)]) continue;
    seen_[static_cast<size_t>(t)] = 1;
    float& l = logits[t];
    l = l > 0.0f ? l / penalty : l * penalty;
  }
  for (int t : context)
    if (t >= 0 && t < vocab_size_) seen_[static_cast<size_t>(t)] = 0;
}

int Sampler::sample(float* logits, std::span<const int> context) {
  apply_repetition_penalty(logits, context);
  if (params_.greedy()) return static_cast<int>(std::max_element(logits, logits + vocab_size_) - logits);

  // Softmax at temperature T over all tokens, kept as (prob, id) candidates.
  const float inv_t = 1.0f / params_.temperature;
  const float max_logit = *std::max_element(logits, logits + vocab_size_);
  candidates_.clear();
  double sum = 0.0;
  for (int i = 0; i < vocab_size_; ++i) {
    const float p = std::exp((logits[i] - max_logit) * inv_t);
    candidates_.emplace_back(p, i);
    sum += p;
  }
  auto by_prob_desc = [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::nth_element(candidates_.begin(), candidates_.begin() + static_cast<long>(keep) - 1, candidates_.end(),
                     by_prob_desc);
    candidates_.resize(keep);
    sum = 0.0;
    for (const auto& c : candidates_) sum += c.first;
  }
  if (params_.min_p > 0.0f) {
    // p_i >= min_p * p_max, in unnormalised units; the max (exp(0) = 1 before top-k) is always kept.
    float p_max = 0.0f;
    for (const auto& c : candidates_) p_max = std::max(p_max, c.first);
    const float cutoff = params_.min_p * p_max;
    std::erase_if(candidates_, [&](const std::pair<float, int>& c) { return c.first < cutoff; });
    sum = 0.0;
    for (const auto& c : candidates_) sum += c.first;
  }
  if (params_.top_p < 1.0f) {
    // Only tokens with p >= (1 - top_p) / (n - 1) can be inside the nucleus: sort just those.
    const size_t n = candidates_.size();
    if (n > 1) {
      const double cutoff = (1.0 - params_.top_p) / static_cast<double>(n - 1) * sum;
      auto mid = std::partition(candidates_.begin(), candidates_.end(),
                                [&](const std::pair<float, int>& c) { return c.first >= cutoff; });
      if (mid == candidates_.begin()) mid = candidates_.end();
      std::sort(candidates_.begin(), mid, by_prob_desc);
      double cumulative = 0.0;
      size_t last = static_cast<size_t>(mid - candidates_.begin());
      for (size_t i = 0; i < last; ++i) {
        cumulative += candidates_[i].first;
        if (cumulative >= params_.top_p * sum) {
          last = i + 1;
          break;
        }
      }
      candidates_.resize(last);
      sum = cumulative;
      if (sum <= 0.0)
        for (const auto& c : candidates_) sum += c.first;
    }
  }
  // Draw: candidates in a fixed order (sorted by id) so the same seed gives the same token.
  std::sort(candidates_.begin(), candidates_.end(),
            [](const std::pair<float, int>& a, const std::pair<float, int>& b) { return a.second < b.second; });
  const double r = std::generate_canonical<double, 53>(rng_) * sum;
  double cumulative = 0.0;
  for (const auto& c : candidates_) {
    cumulative += c.first;
    if (r < cumulative) return c.second;
  }
  return candidates_.back().second;
}

}  // namespace tessera
