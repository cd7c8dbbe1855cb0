#include "quant/shard_calibration.h"

#include <algorithm>
#include <cstring>

#include "engine/core/check.h"
#include "engine/model/kv_cache.h"
#include "quant/awq.h"

namespace tessera::quant::detail {
namespace {

size_t sz(int64_t v) {
  return static_cast<size_t>(v);
}

// Between pipeline stages, at load time (nothing else is in flight then).
constexpr int kCalibrationTag = 21;

}  // namespace

int calibration_chunk_len(const ModelConfig& config, int max_tokens) {
  return std::max(2, std::min(max_tokens, config.max_seq_len));
}

void run_calibration_chunks(const ModelData& model, std::span<const int> tokens, int chunk_len,
                            const StageInputs& stage_in, ThreadPool& pool, Communicator* tp,
                            ActivationObserver* observer, const std::function<void(const float* hidden, int n)>& each) {
  const ModelConfig& c = model.config;
  const ModelShard shard = model.layout();
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
    if (rows > 0) std::memcpy(send.data(), local, sz(rows) * sz(cols) * sizeof(float));
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

StageInputs receive_stage_inputs(Communicator& pp, const ModelData& model, std::span<const int> tokens, int chunk_len) {
  const ModelShard shard = model.layout();
  TESSERA_CHECK(pp.rank() == shard.pp_stage && !shard.first_stage());
  StageInputs in;
  for (const std::vector<int>& chunk : calibration_chunks(tokens, chunk_len, model.config.bos_id)) {
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
