// The calibration pass of Wanda and SparseGPT: layer L's projection inputs, recorded with the model as it is (layers
// before L already pruned), stopping each forward pass once layer L's last input has been seen.
#include <optional>

#include "engine/core/check.h"
#include "quant/prune_internal.h"

namespace tessera::quant::detail {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

class LayerObserver final : public ActivationObserver {
 public:
  // column_split: for each input a rank holds only some columns of (tensor parallelism), which ones; gathered
  // whole before recording.
  LayerObserver(int layer, const std::array<bool, kInputs>& sum_sq, const std::array<bool, kInputs>& hessian,
                ThreadPool& pool, Communicator* tp, const std::array<std::optional<WeightSplit>, kInputs>& column_split)
      : layer_(layer),
        want_sum_sq_(sum_sq),
        want_hessian_(hessian),
        pool_(pool),
        tp_(tp),
        column_split_(column_split) {}

  void observe(int layer, LinearInput which, const float* x, int n, int cols) override {
    if (layer != layer_) return;
    const auto w = static_cast<size_t>(which);
    WholeMatrix whole;
    if (column_split_[w] && (want_sum_sq_[w] || want_hessian_[w])) {
      whole = gather_split(*tp_, x, n, cols, *column_split_[w]);
      x = whole.data.data();
      cols = static_cast<int>(whole.cols);
    }
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
  Communicator* tp_;
  std::array<std::optional<WeightSplit>, kInputs> column_split_;
  LayerInputs out_;
};

}  // namespace

LayerInputs calibrate_layer(const ModelData& model, int layer, std::span<const int> tokens,
                            const std::array<bool, kInputs>& want_sum_sq, const std::array<bool, kInputs>& want_hessian,
                            ThreadPool& pool, Communicator* tp, const StageInputs& stage_in) {
  const ModelConfig& c = model.config;
  if (tokens.size() < 2)
    throw Error("pruning calibration needs at least 2 tokens, got " + std::to_string(tokens.size()));
  std::array<std::optional<WeightSplit>, kInputs> column_split;
  const ModelShard shard = model.layout();
  if (shard.tp_size > 1) {
    TESSERA_CHECK(tp != nullptr && tp->size() == shard.tp_size);
    column_split[static_cast<size_t>(LinearInput::kAttnOut)] = split_of(shard, c, ShardedWeight::kWo);
    column_split[static_cast<size_t>(LinearInput::kFfnMid)] = split_of(shard, c, ShardedWeight::kWDown);
  } else {
    tp = nullptr;
  }
  // Observers see layer indices of the whole model.
  LayerObserver observer(shard.layer_begin + layer, want_sum_sq, want_hessian, pool, tp, column_split);
  run_calibration_chunks(model, tokens, calibration_chunk_len(c), stage_in, pool, tp, &observer, nullptr);
  return observer.take();
}

StageInputs stage_outputs(const ModelData& model, std::span<const int> tokens, const StageInputs& stage_in,
                          ThreadPool& pool, Communicator* tp) {
  StageInputs out;
  run_calibration_chunks(
      model, tokens, calibration_chunk_len(model.config), stage_in, pool, model.layout().tp_size > 1 ? tp : nullptr,
      nullptr, [&](const float* hidden, int n) { out.emplace_back(hidden, hidden + sz(n) * sz(model.config.dim)); });
  return out;
}

}  // namespace tessera::quant::detail
