// Private to quant/prune*.cpp: the pieces prune_model (prune.cpp) assembles from prune_structured.cpp and
// prune_calibrate.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "engine/core/thread_pool.h"
#include "engine/model/llama_model.h"
#include "engine/model/shard.h"
#include "engine/model/weights.h"
#include "quant/prune.h"
#include "quant/shard_calibration.h"

namespace tessera::quant::detail {

inline constexpr int kInputs = 4;  // LinearInput values, in enum order

// Statistics of the four projection inputs of one layer over the calibration tokens.
struct LayerInputs {
  std::array<std::vector<double>, kInputs> sum_sq;  // [cols] sum over rows of x_c^2 (empty when not asked for)
  std::array<std::vector<float>, kInputs> hessian;  // [cols][cols] X^T X (empty when not asked for)
  int64_t rows = 0;                                 // calibration rows seen (per input)
};

// Runs this shard's layers as they are now over `tokens` (cut by calibration_chunks into passes of at most 512
// tokens; later stages start from stage_in) and records the inputs of its layer `layer` (0 = the shard's first);
// each pass stops once that layer's last input has been seen.
// tp: the tensor-parallel group of a shard with tp_size > 1 (else null); every rank calls this in step, and the
// inputs of the row-parallel wo and w_down, of which a rank computes only its columns, are gathered whole, so
// the statistics are those of the whole model on every rank.
LayerInputs calibrate_layer(const ModelData& model, int layer, std::span<const int> tokens,
                            const std::array<bool, kInputs>& want_sum_sq, const std::array<bool, kInputs>& want_hessian,
                            ThreadPool& pool, Communicator* tp, const StageInputs& stage_in);

// Pipeline parallelism: stages calibrate in turn, as one process does layer after layer. The hidden states
// leaving this stage's layers for every calibration chunk: what the next stage calibrates on (sent with
// send_stage_outputs; the next stage's receive blocks until this stage has pruned).
StageInputs stage_outputs(const ModelData& model, std::span<const int> tokens, const StageInputs& stage_in,
                          ThreadPool& pool, Communicator* tp);

// A new matrix holding the given rows (any dtype, bytes copied) or columns (plain dtypes copied element-wise,
// quantized ones expanded to f32) of m, in `store`.
Matrix select_rows(WeightStore& store, const Matrix& m, const std::vector<int>& rows);
Matrix select_cols(WeightStore& store, const Matrix& m, const std::vector<int>& cols, ThreadPool& pool);

// Importance of each FFN channel (hidden unit) and of each KV group of one layer: with calibration statistics
// (mean x^2 of the w_down / wo input, may be empty) E[x_h^2] * ||w_down[:, h]||^2 summed over the unit's input
// channels (the expected squared contribution to the layer output); without, the weight-only proxy
// ||w_gate[h]||^2 ||w_up[h]||^2 ||w_down[:, h]||^2 (FFN) / ||wv rows||^2 ||wo columns||^2 (attention).
std::vector<float> ffn_importance(const LayerWeights& l, std::span<const float> mid_mean_sq, ThreadPool& pool);
std::vector<float> kv_group_importance(const LayerWeights& l, const ModelConfig& c,
                                       std::span<const float> attn_out_mean_sq, ThreadPool& pool);

// Removes the FFN channels / KV groups not in `keep` (ascending) from layer `layer`, appending one report entry per
// changed matrix.
void shrink_ffn(ModelData& model, int layer, const std::vector<int>& keep, const std::string& spec, ThreadPool& pool,
                std::vector<PruneTensorReport>& report);
void shrink_attention(ModelData& model, int layer, const std::vector<int>& kv_keep, const std::string& spec,
                      ThreadPool& pool, std::vector<PruneTensorReport>& report);

// Sum of squares of all weights and fraction of exact zeros (any dtype).
struct MatrixStats {
  double sum_sq = 0.0;
  double zeros = 0.0;
};
MatrixStats matrix_stats(const Matrix& m, ThreadPool& pool);

}  // namespace tessera::quant::detail
