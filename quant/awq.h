// Activation-aware weight quantization (AWQ-style, Lin et al. 2023) for the load-time pipeline in compress.h.
//
// Weights that see large activations on some input channels lose the most when quantized. Scaling those input
// channels of the weight up by s_c (and the activation down by 1/s_c) before quantization keeps the function
// unchanged but moves quantization error to channels that matter less. Per group of projections that share an
// input, s_c = mean|x_c|^alpha (normalised) and alpha is searched on a grid to minimise the output error
// ||X W^T - X Wq^T||_F on recorded calibration activations. 1/s is folded into the op that produces the input:
//   kAttnIn  (wq, wk, wv)   -> attn_norm weights
//   kFfnIn   (w_gate, w_up) -> ffn_norm weights
//   kFfnMid  (w_down)       -> rows of w_up (silu(g) * u is linear in u)
//   kAttnOut (wo)           -> rows of wv and bv; with GQA a value channel feeds every query head of its group,
//                              so the statistics are averaged over the group and the scale is shared.
// The per-layer steps here are the building blocks; compress_model (compress.h) runs them when
// CompressOptions::activation_aware is set.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/core/thread_pool.h"
#include "engine/model/llama_model.h"
#include "engine/model/weights.h"
#include "parallel/communicator.h"
#include "quant/compress.h"
#include "quant/quant_spec.h"
#include "quant/shard_calibration.h"

namespace tessera::quant {

inline constexpr int kNumLinearInputs = 4;  // LinearInput values, in enum order

// Statistics of one projection input over the calibration tokens.
struct InputStats {
  int cols = 0;
  int64_t rows_seen = 0;
  std::vector<float> mean_abs;  // [cols] mean |x_c|
  std::vector<float> mean_sq;   // [cols] mean x_c^2
  std::vector<float> samples;   // [n_samples][cols]: a uniform sample of the rows seen (reservoir)
  int n_samples = 0;
};

struct LayerStats {
  std::array<InputStats, kNumLinearInputs> inputs;  // indexed by LinearInput
  const InputStats& at(LinearInput which) const { return inputs[static_cast<size_t>(which)]; }
};

struct CalibrationOptions {
  int max_samples = 256;        // activation rows kept per input for the scale search
  int max_chunk_tokens = 512;   // longest forward pass (also bounded by the model's context)
  int max_total_tokens = 4096;  // calibration tokens beyond this are ignored
  uint64_t seed = 0x5eed;       // reservoir sampling
  // A shard's groups (not owned): the tensor-parallel group when the model has tp_size > 1, the pipeline group
  // (rank = stage) when pp_size > 1. Every rank of them calls collect_activation_stats in step.
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
};

// Runs the model as it is (normally unquantized) over `tokens` (BOS first) in chunks of at most the context and
// records statistics of every projection input of every layer it holds (index 0 = its first). Chunks after the
// first get BOS prepended. Runs on the CPU backend (see make_calibration_backend). `progress(done, total)` counts
// chunks. A shard gives what one process gives for its layers (up to rounding): a pipeline stage starts from the
// previous stage's outputs and sends its own to the next, and a tensor-parallel rank records the whole of the
// inputs of wo and w_down, gathered over its group.
// Throws tessera::Error for fewer than 2 tokens or a token outside the vocabulary.
std::vector<LayerStats> collect_activation_stats(const ModelData& model, std::span<const int> tokens, ThreadPool& pool,
                                                 const CalibrationOptions& options = {},
                                                 const std::function<void(size_t, size_t)>& progress = nullptr);

// A calibration text cut into forward passes of at most chunk_len tokens: the first is tokens[0, chunk_len), each
// later one BOS + the next chunk_len - 1 tokens.
std::vector<std::vector<int>> calibration_chunks(std::span<const int> tokens, int chunk_len, int bos_id);

// The backend the calibration forward runs on: the CPU backend with as many threads as `pool`.
std::unique_ptr<Backend> make_calibration_backend(ThreadPool& pool);

// One weight of a group that shares an input, with the scheme it will be stored in.
struct AwqMember {
  const Matrix* weight = nullptr;
  QuantSpec spec;  // keep() = stays as is (no error)
};

struct AwqSearchOptions {
  std::vector<float> alphas = {0.0f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f};
  int max_rows = 128;         // activation rows (of stats.samples) used to measure the output error
  int max_weight_rows = 256;  // output rows per weight used to measure it (evenly spaced; all when fewer)
};

struct AwqSearchResult {
  float alpha = 0.0f;
  std::vector<float> scale;  // [cols]; all ones for alpha 0
  double error = 0.0;        // estimated squared output error with `scale`
  double rtn_error = 0.0;    // the same with no scaling (alpha 0)
};

// The channel magnitudes a search starts from: stats.mean_abs, averaged over `tie_groups` consecutive blocks of
// `block` channels when tie_groups > 1 (GQA: the query heads that read one kv head), so tied channels get one
// scale. Dead channels are raised to 1e-4 of the largest.
std::vector<float> channel_magnitudes(const InputStats& stats, int tie_groups = 1, int block = 0);

// Scales for one alpha: m^alpha normalised so that max * min = 1.
std::vector<float> scales_for_alpha(std::span<const float> magnitudes, float alpha);

// Grid search of alpha for a group sharing one input: for each alpha, quantize W diag(s) of every member with its
// scheme (importance mean_sq / s^2) and measure ||X (W - Q(W diag(s)) diag(1/s))^T||^2 on the recorded rows.
// Deterministic for any thread count.
AwqSearchResult search_scales(std::span<const AwqMember> members, const InputStats& stats,
                              std::span<const float> magnitudes, ThreadPool& pool,
                              const AwqSearchOptions& options = {});

// Tensor parallelism: the rows of a weight that search_scales measures on one process (evenly spaced over its
// whole_rows, at most max_rows), gathered whole over `tp` from each rank's part `local` (held as `split`), so every
// rank can search as one process does; every rank of the group calls it in step. Result [sampled rows][whole cols].
detail::WholeMatrix gather_sampled_rows(Communicator& tp, const Matrix& local, const WeightSplit& split,
                                        int64_t whole_rows, int max_rows);

// ||X W^T - X W'^T||_F^2 for rows of x [n][w.cols], where W' = decode(encode(W diag(s))) diag(1/s) with `spec`
// (s empty = ones; importance optional). For tests and reports.
double output_error(const Matrix& w, const QuantSpec& spec, std::span<const float> scale, const float* x, int n,
                    ThreadPool& pool, std::span<const float> importance = {});

// What the search decided for one layer, by LinearInput: a per-channel scale of that input (empty = not scaled)
// and the chosen alpha (-1 = not searched). The kAttnOut scale has q_dim entries (equal within a GQA group).
struct AwqLayerPlan {
  std::array<std::vector<float>, kNumLinearInputs> scale;
  std::array<float, kNumLinearInputs> alpha = {-1.0f, -1.0f, -1.0f, -1.0f};
};

// Runs compress_model's pipeline with a given scale plan (one entry per layer) instead of searching one: every
// matrix is re-encoded as stored = diag(1/r) W diag(s) with the plan's scales (tensors whose spec is keep but
// which a scale touches are materialised as f32) and the norms/biases are folded. With all specs f32 this is a
// pure re-parametrisation: the model computes the same function. options.activation_aware is ignored.
CompressReport compress_model_with_plan(ModelData& model, const CompressOptions& options,
                                        const std::vector<AwqLayerPlan>& plan);

// Row re-encoding shared by the pipeline and the search: `dtype` may be plain (f32/f16/bf16) or quantized.
void encode_row(const float* x, int64_t cols, DType dtype, int group, const float* importance, void* row);
void decode_row(const void* row, int64_t cols, DType dtype, int group, float* out);

}  // namespace tessera::quant
