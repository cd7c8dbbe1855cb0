// The calibration forward pass of a model that may be a shard (tensor-parallel slice, pipeline stage), shared by
// the load-time steps that record activations: Wanda / SparseGPT pruning (prune_calibrate.cpp) and the
// activation-aware quantization search (awq.cpp). A shard's ranks run it in step: tensor-parallel ranks all-reduce
// inside the forward and gather split inputs whole; a pipeline stage starts from the previous stage's outputs,
// received over the pipeline group, and sends its own on.
#pragma once

#include <functional>
#include <span>
#include <vector>

#include "engine/core/thread_pool.h"
#include "engine/model/llama_model.h"
#include "engine/model/shard.h"
#include "engine/model/weights.h"
#include "parallel/communicator.h"

namespace tessera::quant::detail {

// The longest calibration forward pass: at most max_tokens and the model's context.
int calibration_chunk_len(const ModelConfig& config, int max_tokens = 512);

// A pipeline stage's calibration input: per calibration chunk, the hidden states [n_tokens][dim] leaving the
// previous stage's layers. Empty on the first stage, which embeds the tokens.
using StageInputs = std::vector<std::vector<float>>;

// Thrown by an observer to end the current pass early (its layer's inputs are all recorded); run_calibration_chunks
// catches it and goes on with the next chunk.
struct StopForward {};

// Runs every chunk of `tokens` (calibration_chunks with chunk_len) through this shard's layers as they are now, from
// the tokens on the first stage and from stage_in on later ones, with `observer` attached (may be null). tp: the
// tensor-parallel group of a shard with tp_size > 1, else null. `each(hidden, n)` (may be null) gets each chunk's
// output unless the observer ended the pass early. Throws tessera::Error for a token outside the vocabulary.
void run_calibration_chunks(const ModelData& model, std::span<const int> tokens, int chunk_len,
                            const StageInputs& stage_in, ThreadPool& pool, Communicator* tp,
                            ActivationObserver* observer, const std::function<void(const float* hidden, int n)>& each);

// The transfer of calibration activations between pipeline stages over the pipeline group (rank = stage), chunk by
// chunk as run_calibration_chunks cuts `tokens`: receive blocks until the previous stage has sent.
StageInputs receive_stage_inputs(Communicator& pp, const ModelData& model, std::span<const int> tokens, int chunk_len);
void send_stage_outputs(Communicator& pp, const ModelData& model, const StageInputs& out);

// A matrix split over a tensor-parallel group by rows or by columns (this rank holds split.range of them,
// `local` [rows][cols] f32), gathered whole on every rank. Ranks holding the same range (kv heads replicated when
// n_kv_heads < tp) send the same values.
struct WholeMatrix {
  std::vector<float> data;  // [rows][cols]
  int64_t rows = 0, cols = 0;
};
WholeMatrix gather_split(Communicator& tp, const float* local, int64_t rows, int64_t cols, const WeightSplit& split);
// This rank's part of a gathered matrix back into `local`.
void take_split(const WholeMatrix& whole, const WeightSplit& split, float* local);

}  // namespace tessera::quant::detail
