// The calibration pass of Wanda and SparseGPT: layer L's projection inputs, recorded with the model as it is (layers
// before L already pruned), stopping each forward pass once layer L's last input has been seen. Also the gathers
// that give a tensor-parallel rank the whole of what it holds a part of, and the relay of calibration activations
// from pipeline stage to stage.
#include <algorithm>
#include <cstring>
#include <functional>
#include <optional>

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

// Between pipeline stages, at load time (nothing else is in flight then).
constexpr int kCalibrationTag = 21;

int chunk_len_of(const ModelConfig& c) {
  return std::max(2, std::min(512, c.max_seq_len));
}

// Runs every calibration chunk through this shard's layers, from its tokens on the first stage and from
// stage_in on later ones, with `observer` attached; `each(hidden, n)` gets each chunk's output unless the
// observer ended the pass early.
void run_chunks(const ModelData& model, std::span<const int> tokens, const StageInputs& stage_in, ThreadPool& pool,
                Communicator* tp, ActivationObserver* observer,
                const std::function<void(const float* hidden, int n)>& each) {
  const ModelConfig& c = model.config;
  const ModelShard shard = model.layout();
  const int chunk_len = chunk_len_of(c);
  const std::vector<std::vector<int>> chunks = calibration_chunks(tokens, chunk_len, c.bos_id);
  TESSERA_CHECK(shard.first_stage() ? stage_in.empty() : stage_in.size() == chunks.size());
  std::unique_ptr<Backend> backend = make_calibration_backend(pool);
  LlamaModel lm(model, *backend, chunk_len, tp);
  lm.set_observer(observer);
  KvCache cache = lm.make_cache(chunk_len);
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int n = static_cast<int>(chunks[i].size());
    if (shard.first_stage()) {
      lm.embed(chunks[i]);
    } else {
      TESSERA_CHECK(stage_in[i].size() == sz(n) * sz(c.dim));
      std::copy(stage_in[i].begin(), stage_in[i].end(), lm.hidden());
    }
    const SequenceChunk ch{&cache, 0, n, /*logits=*/false};
    try {
      lm.run_layers({&ch, 1});
    } catch (const StopForward&) {
      continue;  // the observed layer's inputs are all recorded for this chunk
    }
    if (each) each(lm.hidden(), n);
  }
}

}  // namespace

WholeMatrix gather_split(Communicator& tp, const float* local, int64_t rows, int64_t cols, const WeightSplit& split) {
  const int n = tp.size();
  const int64_t mine[2] = {split.range.begin, split.range.end};
  std::vector<int64_t> ranges(2 * sz(n));
  tp.all_gather_bytes(mine, sizeof mine, ranges.data());
  TESSERA_CHECK(split.range.size() == (split.by_rows ? rows : cols));
  int64_t extent = 0, span = 0;  // whole size of the split dimension; the widest part
  for (int r = 0; r < n; ++r) {
    extent = std::max(extent, ranges[2 * sz(r) + 1]);
    span = std::max(span, ranges[2 * sz(r) + 1] - ranges[2 * sz(r)]);
  }
  // Every rank sends `span` rows (or columns) so the gather has one size; the padding is never read.
  const int64_t other = split.by_rows ? cols : rows;
  std::vector<float> send(sz(span) * sz(other), 0.0f), all(sz(n) * send.size());
  if (split.by_rows) {
    std::memcpy(send.data(), local, sz(rows) * sz(cols) * sizeof(float));
  } else {
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(send.data() + sz(i) * sz(span), local + sz(i) * sz(cols), sz(cols) * sizeof(float));
  }
  tp.all_gather(send.data(), send.size(), all.data());
  WholeMatrix out;
  out.rows = split.by_rows ? extent : rows;
  out.cols = split.by_rows ? cols : extent;
  out.data.assign(sz(out.rows) * sz(out.cols), 0.0f);
  for (int r = 0; r < n; ++r) {
    const int64_t begin = ranges[2 * sz(r)], count = ranges[2 * sz(r) + 1] - begin;
    const float* part = all.data() + sz(r) * send.size();
    if (split.by_rows) {
      std::memcpy(out.data.data() + sz(begin) * sz(cols), part, sz(count) * sz(cols) * sizeof(float));
    } else {
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(out.data.data() + sz(i) * sz(extent) + sz(begin), part + sz(i) * sz(span),
                    sz(count) * sizeof(float));
    }
  }
  return out;
}

void take_split(const WholeMatrix& whole, const WeightSplit& split, float* local) {
  const int64_t begin = split.range.begin, count = split.range.size();
  if (split.by_rows) {
    std::memcpy(local, whole.data.data() + sz(begin) * sz(whole.cols), sz(count) * sz(whole.cols) * sizeof(float));
    return;
  }
  for (int64_t i = 0; i < whole.rows; ++i)
    std::memcpy(local + sz(i) * sz(count), whole.data.data() + sz(i) * sz(whole.cols) + sz(begin),
                sz(count) * sizeof(float));
}

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
  run_chunks(model, tokens, stage_in, pool, tp, &observer, nullptr);
  return observer.take();
}

StageInputs stage_outputs(const ModelData& model, std::span<const int> tokens, const StageInputs& stage_in,
                          ThreadPool& pool, Communicator* tp) {
  StageInputs out;
  run_chunks(model, tokens, stage_in, pool, model.layout().tp_size > 1 ? tp : nullptr, nullptr,
             [&](const float* hidden, int n) { out.emplace_back(hidden, hidden + sz(n) * sz(model.config.dim)); });
  return out;
}

StageInputs receive_stage_inputs(Communicator& pp, const ModelData& model, std::span<const int> tokens) {
  const ModelShard shard = model.layout();
  TESSERA_CHECK(pp.rank() == shard.pp_stage && !shard.first_stage());
  StageInputs in;
  for (const std::vector<int>& chunk : calibration_chunks(tokens, chunk_len_of(model.config), model.config.bos_id)) {
    in.emplace_back(chunk.size() * sz(model.config.dim));
    pp.recv(in.back().data(), in.back().size() * sizeof(float), shard.pp_stage - 1, kCalibrationTag);
  }
  return in;
}

void send_stage_outputs(Communicator& pp, const ModelData& model, const StageInputs& out) {
  const ModelShard shard = model.layout();
  TESSERA_CHECK(pp.rank() == shard.pp_stage && !shard.last_stage());
  for (const std::vector<float>& chunk : out)
    pp.send(chunk.data(), chunk.size() * sizeof(float), shard.pp_stage + 1, kCalibrationTag);
}

}  // namespace tessera::quant::detail
