// A deterministic stand-in for the model: the logits of a sequence depend on every token it has cached, so an
// engine that feeds a wrong token, position or recomputation gets different "greedy" outputs. It also records
// protocol violations (a chunk that does not continue the cached rows).
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/serving/step_model.h"

namespace tessera::serving {

class FakeStepModel final : public StepModel {
 public:
  FakeStepModel(int vocab, int context) : vocab_(vocab), context_(context) {}

  int vocab_size() const override { return vocab_; }
  int context_length() const override { return context_; }

  void forward(std::span<const int> tokens, std::span<const ScheduledChunk> chunks, float* logits) override {
    size_t offset = 0, row = 0;
    ++steps;
    if (step_delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(step_delay_us.load()));
    int n = 0;
    for (const ScheduledChunk& c : chunks) {
      std::vector<int>& h = cached_[c.seq_id];
      if (static_cast<int>(h.size()) < c.pos0) ++violations;  // a gap: rows the engine never computed
      h.resize(static_cast<size_t>(c.pos0));
      for (int i = 0; i < c.n_tokens; ++i) h.push_back(tokens[offset + static_cast<size_t>(i)]);
      offset += static_cast<size_t>(c.n_tokens);
      n += c.n_tokens;
      if (c.all_logits) {
        ++all_logits_chunks;
        all_logits_rows += c.n_tokens;
      }
      // Every row's logits with all_logits (row i: after the history up to pos0 + i), else the last row's.
      for (int i = c.all_logits ? 0 : c.n_tokens - 1; i < c.n_tokens && (c.logits || c.all_logits); ++i)
        fill_logits(h, c.pos0 + i + 1, logits + row++ * static_cast<size_t>(vocab_));
    }
    max_step_tokens = std::max(max_step_tokens.load(), n);
  }

  // The logits after the first `len` tokens of history h: a peak at a token that depends on all of them, and
  // log-probabilities that tests can recompute.
  void fill_logits(const std::vector<int>& h, int len, float* out) const {
    uint64_t x = 1469598103934665603ull;
    for (size_t i = 0; i < static_cast<size_t>(len); ++i)
      x = (x ^ static_cast<uint64_t>(h[i] + 7 * i)) * 1099511628211ull;
    const int target = static_cast<int>(x % static_cast<uint64_t>(vocab_));
    for (int j = 0; j < vocab_; ++j) out[j] = -static_cast<float>((j - target) * (j - target)) * 0.01f;
  }
  void release(int seq_id) override { cached_.erase(seq_id); }

  std::atomic<int> step_delay_us{0};  // makes a step slow enough to act on mid-generation
  std::atomic<int> violations{0};
  std::atomic<int> steps{0};
  std::atomic<int> max_step_tokens{0};
  std::atomic<int> all_logits_chunks{0};  // chunks that asked for every row's logits
  std::atomic<int> all_logits_rows{0};

 private:
  int vocab_, context_;
  std::unordered_map<int, std::vector<int>> cached_;  // engine thread only
};

}  // namespace tessera::serving
