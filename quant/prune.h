// Load-time pruning, run by the compression pipeline (compress.h) before quantization: prune, then quantize the
// survivors. Methods, chosen per weight with a default (--prune METHOD:SPARSITY) and name rules (--prune-rule):
//   magnitude:S          zero the fraction S of each tensor's weights of smallest |w| (threshold per tensor)
//   magnitude-global:S   one |w| threshold across every tensor with this spec
//   wanda:S              per output row, zero the fraction S of smallest |w_rc| * ||x_c|| (Sun et al. 2023),
//                        ||x_c|| over the calibration text
//   sparsegpt:S          layer-wise optimal-brain-surgeon reconstruction with the calibration Hessian X^T X
//                        (Frantar & Alistarh 2023): weights are zeroed column by column and the error is
//                        compensated in the columns not yet processed
//   METHOD:N:M           (magnitude, wanda, sparsegpt) N:M semi-structured: at most N nonzeros in every M
//                        consecutive inputs (2:4, 4:8); 2:4 with int8/int4 is stored compressed (sparse_formats.h)
//   structured:S         remove whole FFN intermediate channels and attention KV groups (a kv head with its query
//                        heads), the fraction S of each, by importance; the matrices physically shrink.
//                        structured-ffn:S and structured-attn:S do one kind only.
// S is a fraction (0.5) or a percentage (50%). Unstructured and N:M specs apply to the projections
// layers.<L>.<wq|wk|wv|wo|w_gate|w_up|w_down> (the default to all of them; lm_head only through a rule naming it,
// and only when it is not tied to the embedding table); structured specs apply to the blocks layers.<L>.ffn and
// layers.<L>.attn. The last matching rule wins; a rule that matches nothing it could apply to is an error.
//
// Wanda and SparseGPT calibrate on the calibration text (CompressOptions::calibration_tokens) sequentially, as in
// their papers: layer L's inputs are recorded with layers < L already pruned (one forward pass per layer, stopped
// after layer L). Structured pruning ranks channels by calibration activations when a text is given, else by
// weight norms.
//
// On a shard (tensor/pipeline parallelism) every unstructured and N:M method gives what one process gives, up to
// the rounding of the sharded calibration forward, with two exceptions refused with an error: magnitude-global
// (one threshold across tensors held by different ranks) and structured pruning (whole channels chosen across
// the tensor).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "engine/core/thread_pool.h"
#include "engine/model/weights.h"

namespace tessera {
class Communicator;
}

namespace tessera::quant {

enum class PruneMethod {
  kNone,
  kMagnitude,
  kMagnitudeGlobal,
  kWanda,
  kSparseGpt,
  kStructured,
  kStructuredFfn,
  kStructuredAttn
};

struct PruneSpec {
  PruneMethod method = PruneMethod::kNone;
  double sparsity = 0.0;  // fraction removed (unstructured, structured); 1 - n/m for N:M
  int n = 0;              // N:M: at most n nonzeros in every m consecutive inputs; 0 = not N:M
  int m = 0;

  // "none", "magnitude:0.5", "wanda:50%", "sparsegpt:2:4", "structured-ffn:0.3", ...; throws tessera::Error with
  // the accepted forms otherwise.
  static PruneSpec parse(const std::string& text);
  std::string to_string() const;
  bool none() const { return method == PruneMethod::kNone; }
  bool structured() const {
    return method == PruneMethod::kStructured || method == PruneMethod::kStructuredFfn ||
           method == PruneMethod::kStructuredAttn;
  }
  bool nm() const { return n > 0; }
  bool two_of_four() const { return n == 2 && m == 4; }
  bool calibrated() const { return method == PruneMethod::kWanda || method == PruneMethod::kSparseGpt; }
};

struct PruneRule {
  std::string pattern;
  PruneSpec spec;
  // "PATTERN=SPEC", e.g. "layers.0.*=none" or "*.w_down=wanda:0.3"; throws tessera::Error naming the bad rule.
  static PruneRule parse(const std::string& text);
};

struct PruneOptions {
  PruneSpec default_spec;
  std::vector<PruneRule> rules;
  int multiple = 2;  // kept FFN channels and kept KV groups stay divisible by this (tensor parallelism)
  // The tensor-parallel group when the model is a shard with tp_size > 1 (not owned; every rank of it runs
  // prune_model with the same options, in step). Methods whose choice for a weight needs more than its shard
  // (per-tensor magnitude thresholds, Wanda and SparseGPT on row-parallel wo / w_down) gather the whole tensor
  // over it, and the calibration pass runs the sharded model, so each rank keeps what one process would keep.
  Communicator* tp = nullptr;
  // The pipeline group (rank = stage) when the model is a stage of a pipeline (not owned): Wanda and SparseGPT
  // calibrate stage after stage, each starting from the previous stage's pruned outputs, sent over it. Its waits
  // last as long as the earlier stages take to prune, so it should carry no short deadline.
  Communicator* pp = nullptr;
  bool active() const;
};

// What pruning did to one weight (or, for structured pruning, to one matrix of a block).
struct PruneTensorReport {
  std::string name;
  std::string spec;  // PruneSpec::to_string()
  DType dtype_before = DType::F32;
  int64_t rows_before = 0, cols_before = 0, rows_after = 0, cols_after = 0;
  size_t bytes_before = 0;
  double zeros_before = 0.0;  // fraction of exactly-zero weights before / after
  double zeros_after = 0.0;
  double relative_change = 0.0;   // ||W - W'||_F / ||W||_F (removed rows/columns count as zeroed)
  std::vector<int> removed_rows;  // structured: original indices of removed output rows
  std::vector<int> removed_cols;  // structured: original indices of removed input columns
  bool two_of_four = false;       // 2:4 pattern: int8/int4 schemes store it compressed
};

struct PruneReport {
  std::vector<PruneTensorReport> tensors;
  double seconds = 0.0;
  int calibration_passes = 0;  // forward passes over the calibration text
};

// Prunes `model` in place: pruned matrices get new storage in model.store, in their original dtype when it is
// f32/f16/bf16 (zeros are exact; SparseGPT's updated survivors are rounded to it) and f32 otherwise. Structured
// pruning shrinks the matrices (layers may keep different counts under per-layer rules) and sets the config's
// hidden_dim / n_heads / n_kv_heads to the widest layer's. Throws tessera::Error for requests it cannot honour
// (calibrated methods without tokens, unmatched rules).
PruneReport prune_model(ModelData& model, const PruneOptions& options, std::span<const int> calibration_tokens,
                        ThreadPool& pool, const std::function<void(size_t, size_t)>& progress = nullptr);

// ---- Building blocks (exposed for tests and reports) ----

// Zeroes entries of w [rows][cols] (row-major fp32) so that exactly round(sparsity * rows * cols) of the
// candidates are removed: the smallest score[r * cols + c] over the whole matrix (per_row = false) or the smallest
// round(sparsity * cols) of each row (per_row = true); ties go to the lower index. n > 0 instead removes the
// m - n smallest scores of every m consecutive inputs of each row (a ragged last group keeps at most n).
void prune_by_score(float* w, int64_t rows, int64_t cols, const float* score, double sparsity, bool per_row, int n,
                    int m);

// SparseGPT on one matrix: w [rows][cols] fp32 row-major is pruned to `spec` (sparsity or N:M) and its survivors
// updated to minimise ||X (W - W')^T||^2 given hessian = X^T X [cols][cols] (any positive scale; dead inputs with
// a zero diagonal are zeroed). damp: fraction of the mean diagonal added to it. blocksize: columns per lazy
// update. mask (optional, [rows][cols], nonzero = prune) fixes which weights are removed instead of the rule.
void sparsegpt_prune(float* w, int64_t rows, int64_t cols, const float* hessian, const PruneSpec& spec,
                     ThreadPool& pool, double damp = 0.01, int blocksize = 128, const uint8_t* mask = nullptr);

// Kept indices (ascending) of `count` units with importance `score`: the top round_to_multiple(count * (1 -
// sparsity)) (at least `multiple`, at most count); ties keep the lower index.
std::vector<int> structured_keep(std::span<const float> score, double sparsity, int multiple);

}  // namespace tessera::quant
