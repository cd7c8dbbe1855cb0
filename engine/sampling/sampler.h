// Turns next-token logits into a token: repetition penalty, temperature, top-k, top-p, min-p, seeded RNG.
// Order of operations follows Hugging Face / vLLM: penalty on raw logits, temperature, then the filters, then
// a draw from the renormalised distribution. Temperature 0 means greedy (argmax after the penalty).
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <utility>
#include <vector>

namespace tessera {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off; keep tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1 = off; >1 discourages tokens already in the context (CTRL rule)
  std::optional<uint64_t> seed;     // unset = nondeterministic

  // Throws tessera::Error for values out of range.
  void validate() const;
  bool greedy() const { return temperature == 0.0f; }
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, int vocab_size);

  // Picks the next token. `logits` is modified in place (penalty, temperature). `context` lists tokens seen so
  // far (prompt and generated) for the repetition penalty.
  int sample(float* logits, std::span<const int> context);

  const SamplingParams& params() const { return params_; }

 private:
  void apply_repetition_penalty(float* logits, std::span<const int> context);

  SamplingParams params_;
  int vocab_size_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> candidates_;  // scratch, reserved once
  std::vector<uint8_t> seen_;                      // scratch for the penalty
};

}  // namespace tessera
