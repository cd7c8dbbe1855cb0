// The calibration pass of Wanda and SparseGPT: layer L's projection inputs, recorded with the model as it is (layers
// before L already pruned), stopping each forward pass once layer L's last input has been seen.
#include <algorithm>

#include "engine/core/check.h"
#include "engine/model/kv_cache.h"
#include "quant/awq.h"
#include "quant/prune_internal.h"

namespace tessera::quant::detail {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// Thrown by the observer to end a forward pass early; never leaves calibrate_layer.
struct StopForward {};

class LayerObserver final : public ActivationObserver {
 public:
  LayerObserver(int layer, const std::array<bool, kInputs>& sum_sq, const std::array<bool, kInputs>& hessian,
                ThreadPool& pool)
      : layer_(layer), want_sum_sq_(sum_sq), want_hessian_(hessian), pool_(pool) {}

  void observe(int layer, LinearInput which, const float* x, int n, int cols) override {
    if (layer != layer_) return;
    const auto w = static_cast<size_t>(which);
    if (want_sum_sq_[w]) {
      auto& s = out_.sum_sq[w];
      if (s.empty()) s.assign(sz(cols), 0.0);
      TESSERA_CHECK(s.size() == sz(cols));
      for (int i = 0; i < n; ++i)
        for (int c = 0; c < cols; ++c)
          s[sz(c)] += static_cast<double>(x[sz(i) * sz(cols) + sz(c)]) * x[sz(i) * sz(cols) + sz(c)];
    }
    if (want_hessian_[w]) {
      auto& h = out_.hessian[w];
      if (h.empty()) h.assign(sz(cols) * sz(cols), 0.0f);
      TESSERA_CHECK(h.size() == sz(cols) * sz(cols));
      // H += X^T X, rows of H split over the pool (the backend is idle between ops).
      pool_.parallel_for(cols, 8, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          float* hr = h.data() + sz(r) * sz(cols);
          for (int i = 0; i < n; ++i) {
            const float* xi = x + sz(i) * sz(cols);
            const float a = xi[r];
            if (a == 0.0f) continue;
            for (int c = 0; c < cols; ++c) hr[c] += a * xi[c];
          }
        }
      });
    }
    if (which == LinearInput::kAttnIn) out_.rows += n;
    if (which == LinearInput::kFfnMid) throw StopForward{};
  }

  LayerInputs take() { return std::move(out_); }

 private:
  int layer_;
  std::array<bool, kInputs> want_sum_sq_, want_hessian_;
  ThreadPool& pool_;
  LayerInputs out_;
};

}  // namespace

LayerInputs calibrate_layer(const ModelData& model, int layer, std::span<const int> tokens,
                            const std::array<bool, kInputs>& want_sum_sq, const std::array<bool, kInputs>& want_hessian,
                            ThreadPool& pool) {
  const ModelConfig& c = model.config;
  if (tokens.size() < 2)
    throw Error("pruning calibration needs at least 2 tokens, got " + std::to_string(tokens.size()));
  const int chunk_len = std::max(2, std::min(512, c.max_seq_len));
  std::unique_ptr<Backend> backend = make_calibration_backend(pool);
  LlamaModel lm(model, *backend, chunk_len);
  LayerObserver observer(layer, want_sum_sq, want_hessian, pool);
  lm.set_observer(&observer);
  KvCache cache = lm.make_cache(chunk_len);
  std::vector<float> logits(sz(c.vocab_size));
  for (size_t pos = 0; pos < tokens.size();) {
    std::vector<int> chunk;
    if (pos > 0) chunk.push_back(c.bos_id);
    const size_t take = std::min(tokens.size() - pos, sz(chunk_len) - chunk.size());
    chunk.insert(chunk.end(), tokens.begin() + static_cast<std::ptrdiff_t>(pos),
                 tokens.begin() + static_cast<std::ptrdiff_t>(pos + take));
    pos += take;
    try {
      lm.forward(chunk, 0, cache, LogitsMode::kLast, logits.data());
    } catch (const StopForward&) {
      // layer `layer` fully observed for this chunk
    }
  }
  return observer.take();
}

}  // namespace tessera::quant::detail
