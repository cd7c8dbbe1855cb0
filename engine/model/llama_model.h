// The Llama-family decoder (Llama 1/2/3, Mistral, Qwen2), written once against the Backend op interface.
//
// The model runs whatever shard of the weights it is given (ModelData::layout(), engine/model/shard.h): its
// layers, its heads, FFN channels and vocabulary rows. Layer dimensions come from the weight shapes. With tensor
// parallelism every rank of a stage makes the same calls in the same order and the model performs the
// collectives itself: an all-reduce after wo and after w_down, one after the vocab-parallel embedding, and an
// all-gather of the vocab-parallel logits. Pipeline stages are chained by the caller (engine/runtime/
// model_runner.h) through the stage calls embed / run_layers / head.
//
// Memory: the model keeps everything its backend reads in the backend's memory space (BackendWeights, scratch,
// KV caches from make_cache). Its collectives go through an ActivationExchange, which hands backend memory to the
// communicator directly (CPU with MPI, GPU with NCCL) or stages it through host memory (GPU with MPI). Only
// activation observers need a host backend (they read the activations on the host).
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/model/activation_exchange.h"
#include "engine/model/backend_weights.h"
#include "engine/model/kv_cache.h"
#include "engine/model/rope.h"
#include "engine/model/weights.h"
#include "parallel/communicator.h"

namespace tessera {

enum class LogitsMode {
  kLast,  // logits of the last input row only: [vocab]
  kAll,   // logits of every input row: [n][vocab] (evaluation, tests)
};

// The inputs of a layer's linear projections, as seen during a forward pass. Calibration (activation-aware
// quantization, pruning) records statistics of them.
enum class LinearInput {
  kAttnIn,   // rmsnorm(x): input of wq, wk, wv              [n][dim]
  kAttnOut,  // attention output: input of wo                 [n][q_dim]
  kFfnIn,    // rmsnorm(x): input of w_gate, w_up             [n][dim]
  kFfnMid,   // silu(gate) * up: input of w_down              [n][hidden_dim]
};

class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  // Called on the forward thread with n rows of `cols` values each (host memory), valid only during the call.
  // `layer` is the layer's index in the whole model.
  virtual void observe(int layer, LinearInput which, const float* x, int n, int cols) = 0;
};

// One sequence's part of a batch: n_tokens consecutive rows at positions pos0.., its keys and values go to
// `cache`; `logits` asks for the logits of its last row, `all_logits` for those of every row (a prompt's
// log-probabilities), each computed as the last row alone would be.
struct SequenceChunk {
  KvCache* cache = nullptr;
  int pos0 = 0;
  int n_tokens = 0;
  bool logits = true;
  bool all_logits = false;
};

class LlamaModel {
 public:
  // max_batch_tokens bounds the rows processed in one pass; longer single-sequence inputs are split into chunks
  // of that size. All scratch buffers are allocated here, none in forward(). `tp` is the tensor-parallel group
  // of this rank's stage (not owned; needed when the shard's tp_size > 1, its size must match). Weights are
  // uploaded to a device backend here. Throws tessera::Error for a tensor/pipeline shard on a device backend.
  LlamaModel(const ModelData& model, Backend& backend, int max_batch_tokens = 256, Communicator* tp = nullptr);

  const ModelConfig& config() const { return model_.config; }
  const ModelShard& shard() const { return shard_; }
  Backend& backend() { return backend_; }
  int max_batch_tokens() const { return max_batch_tokens_; }

  // A contiguous KV cache for this shard's layers and kv heads, in the backend's memory.
  KvCache make_cache(int capacity) const;
  // A pool of KV blocks for this shard's layers and kv heads, in the backend's memory: paged caches
  // (KvCache(pool)) for many sequences. block_size: a power of two.
  std::unique_ptr<KvPool> make_kv_pool(int num_blocks, int block_size) const;

  // Runs `tokens` at positions pos0.. (prefill when tokens.size() > 1, decode when 1), appending their keys and
  // values to `cache`, and writes logits to `logits` (host memory, sized per `mode`). Needs the whole pipeline
  // on this rank (pp_size 1). Throws tessera::Error if the positions exceed the cache or a token id is outside
  // the vocabulary.
  void forward(std::span<const int> tokens, int pos0, KvCache& cache, LogitsMode mode, float* logits);

  // Several sequences as one batch (at most max_batch_tokens rows in all): matmuls over every row together,
  // attention per sequence. tokens: each chunk's tokens, chunk after chunk. logits: one [vocab] row per chunk
  // with `logits` set and n_tokens rows per chunk with `all_logits` set, in order. Needs pp_size 1.
  void forward_batch(std::span<const int> tokens, std::span<const SequenceChunk> chunks, float* logits);

  // --- pipeline stage calls (what forward_batch is made of) ------------------------------------------------
  // The activations between stages: [max_batch_tokens][dim] in backend memory; a stage reads and writes its first
  // `rows` rows (ModelRunner moves them with an ActivationExchange).
  float* hidden() { return x_.as<float>(); }
  // First stage: hidden <- embeddings of the tokens (checked against the vocabulary).
  void embed(std::span<const int> tokens);
  // Runs hidden through this shard's layers. Checks each chunk's positions against its cache.
  void run_layers(std::span<const SequenceChunk> chunks);
  // Last stage: final norm and lm_head. all_rows: logits of every row ([rows][vocab]); otherwise, chunk after
  // chunk, n_tokens rows for a chunk with `all_logits`, one for a chunk with `logits`. Every tensor-parallel rank
  // gets the full vocabulary.
  void head(std::span<const SequenceChunk> chunks, bool all_rows, float* logits);

  // Rows in a batch of chunks; throws when it exceeds max_batch_tokens.
  int batch_rows(std::span<const SequenceChunk> chunks) const;

  // Host bytes per batch row besides the activations (positions, row runs, attention calls), for memory planning.
  static size_t bookkeeping_bytes_per_row() { return sizeof(int) + sizeof(RowRun) + sizeof(AttentionCall); }

  // Calibration hook; null (the default) turns it off. Not owned. Throws tessera::Error on a device backend (the
  // observer reads host memory).
  void set_observer(ActivationObserver* observer);

 private:
  void check_positions(std::span<const SequenceChunk> chunks) const;
  std::vector<int> layer_kv_dims() const;  // kv_dim of each of this shard's layers
  // Logits of `rows` rows of normalized activations xb (backend memory): the lm_head into `out` ([rows][this
  // shard's vocabulary], backend memory); per_row: each row stands alone (Backend::matmul_rows).
  void lm_head(const float* xb, int rows, bool per_row, float* out);
  // Vocab-parallel: every rank's lm_head rows gathered into host_logits ([rows][vocab], host memory).
  void gather_logits(const float* xb, int rows, bool per_row, float* host_logits);
  // Batch invariance: every chunk is computed exactly as if it ran alone. Single-token chunks (decodes) go through
  // the per-row matmuls, longer chunks (prefill) through the blocked ones (whose rows do not depend on each other
  // either), so a batch is cut into runs of consecutive chunks of one kind.
  struct RowRun {
    int row0 = 0;
    int rows = 0;
    bool single = false;
  };
  void plan_row_runs(std::span<const SequenceChunk> chunks);
  // Calls per_row(in, rows, out) or blocked(in, rows, out) for each run of the batch's rows (x rows in_cols wide,
  // y rows out_cols wide).
  template <typename PerRow, typename Blocked>
  void for_each_run(const float* x, int64_t in_cols, float* y, int64_t out_cols, const PerRow& per_row,
                    const Blocked& blocked) const;
  // y = x w^T (+ bias), and the fused gate/up MLP, over the batch's rows, run by run.
  void linear(const float* x, const Matrix& w, const float* bias, float* y);
  void linear_silu_mul(const float* x, const Matrix& gate, const Matrix& up, float* out);

  const ModelData& model_;
  ModelShard shard_;
  Backend& backend_;
  Communicator* tp_;
  int max_batch_tokens_;
  RopeCache rope_;
  BackendWeights weights_;  // what the backend reads: model_.weights itself on a host backend
  // Scratch in backend memory, [max_batch_tokens][...]
  BackendBuffer x_, xb_, q_, k_, v_, att_, proj_, hidden_;
  BackendBuffer logits_;  // device backends, whole vocabulary: [max_batch_tokens][vocab], copied to the caller
  std::unique_ptr<ActivationExchange> tp_exchange_;  // tp > 1: the all-reduces and the logits' all-gather
  BackendBuffer zero_row_;                           // vocab-parallel embedding: [dim] zeros for others' tokens
  BackendBuffer shard_logits_;                       // vocab-parallel lm_head: [rows][vocab_padded], grown on use
  std::vector<int> positions_;
  std::vector<RowRun> row_runs_;                // reserved for max_batch_tokens runs: planning a step allocates nothing
  std::vector<AttentionCall> attention_calls_;  // one layer's calls, one per chunk (reserved likewise)
  std::vector<float> gathered_logits_;  // vocab-parallel lm_head: every rank's shard_logits_ rows, grown on first use
  ActivationObserver* observer_ = nullptr;
};

}  // namespace tessera
