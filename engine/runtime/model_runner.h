// Runs the model for rank 0 (the leader) the same way whether it is one process or a tensor x pipeline
// parallel job, and keeps every other rank (the workers) executing the leader's steps.
//
// Every step is a plan: which sequence slots, at which positions, how many tokens. The leader sends the plan
// over the control plane (a broadcast in its stage's tensor-parallel group; a message down each pipeline),
// every rank runs its part of the model, activations go stage to stage over the data plane, and the last
// stage's first tensor-parallel rank returns the logits to the leader. With pipeline parallelism the leader
// may have several steps in flight (begin_step ... finish_step in order), so different sequences keep
// different stages busy at the same time.
//
// World ranks are laid out stage-major: world rank = pp_stage * tp_size + tp_rank; rank 0 leads.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "engine/model/llama_model.h"
#include "parallel/communicator.h"

namespace tessera {

// One sequence's part of a step: `n_tokens` tokens at positions pos0.. into KV slot `slot`; `logits` asks for
// the logits of its last token (kLastRow) or of every token (kAllRows: a prompt's log-probabilities; the last row
// is the same as with kLastRow). Plain ints: it travels in plans.
struct StepChunk {
  static constexpr int32_t kNoRows = 0, kLastRow = 1, kAllRows = 2;
  int32_t slot = 0;
  int32_t pos0 = 0;
  int32_t n_tokens = 0;
  int32_t logits = kLastRow;
};

// A paged KV cache for the runner's slots: every rank keeps one pool of num_blocks blocks of block_size rows (a
// power of two) and each open slot holds blocks of it. Ranks apply the same slot operations in the same order, so
// their pools fill alike and a block the leader can take every rank can take.
struct PagedKvOptions {
  int num_blocks = 0;
  int block_size = 16;
};

// This rank's communicators in a parallel job (not owned). Control-plane groups wait for the next plan without
// a deadline (a server may idle for hours); data-plane groups carry the comm timeout.
// Host-memory communicators (MPI): the runner also sends its step's chunks and tokens through the data ones. The
// model's own tensor-parallel communicator (LlamaModel's `tp`) may instead be a device one (NCCL).
struct ParallelGroups {
  Communicator* world = nullptr;       // data: the whole job (logits back to rank 0)
  Communicator* tp = nullptr;          // data: this stage's tensor-parallel group
  Communicator* tp_control = nullptr;  // control: the same ranks
  Communicator* pp = nullptr;          // data: this tensor-parallel slot's pipeline (stage to stage)
  Communicator* pp_control = nullptr;  // control: the same ranks
};

class ModelRunner {
 public:
  // groups: null for a single process. max_in_flight bounds the leader's unfinished steps (pipeline
  // micro-batches). paged: slots take blocks of a KV pool instead of each owning a contiguous cache. Both must be
  // the same on every rank.
  explicit ModelRunner(LlamaModel& model, const ParallelGroups* groups = nullptr, int max_in_flight = 4,
                       std::optional<PagedKvOptions> paged = std::nullopt);
  // The leader stops the workers if it has not yet (e.g. when an error unwinds it).
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  bool is_leader() const { return leader_; }
  const ModelConfig& config() const { return model_.config(); }
  LlamaModel& model() { return model_; }
  int max_batch_tokens() const { return model_.max_batch_tokens(); }
  // Steps that may be in flight at once: 1 without pipeline parallelism.
  int max_in_flight() const { return max_in_flight_; }
  int in_flight() const { return static_cast<int>(pending_.size()); }
  // Capacity of an open slot, 0 when closed.
  int slot_capacity(int slot) const;
  // The KV pool of a paged runner (null otherwise).
  const KvPool* kv_pool() const { return pool_.get(); }

  // --- leader only ------------------------------------------------------------------------------------------
  // A KV cache of `capacity` positions for sequence slot `slot` on every rank (replacing an open one). Paged:
  // blocks for `capacity` positions. Throws tessera::Error (before anything is sent) when the context or the pool
  // is too small.
  void open_slot(int slot, int capacity);
  void close_slot(int slot);
  // Gives an open slot room for `capacity` positions, keeping the keys and values of its first `keep` positions
  // (paged: of every position; it only takes more blocks, nothing is copied).
  void grow_slot(int slot, int capacity, int keep);
  // Starts a step; tokens: every chunk's tokens, chunk after chunk. Throws tessera::Error (before anything is
  // sent) for a closed slot, positions beyond the slot or the context, a token outside the vocabulary, or more
  // rows than max_batch_tokens.
  void begin_step(std::span<const StepChunk> chunks, std::span<const int> tokens, bool all_rows = false);
  // Finishes the oldest unfinished step: chunk after chunk, one [vocab] row per chunk with kLastRow and n_tokens
  // rows per chunk with kAllRows; or with all_rows every row of the step, [rows][vocab].
  void finish_step(float* logits);
  void step(std::span<const StepChunk> chunks, std::span<const int> tokens, float* logits, bool all_rows = false) {
    begin_step(chunks, tokens, all_rows);
    finish_step(logits);
  }
  // Ends the workers' serve() loops. Idempotent.
  void stop_workers();

  // --- workers ----------------------------------------------------------------------------------------------
  // Executes the leader's plans until it stops the job.
  void serve();

 private:
  struct Plan {
    int32_t op = 0;
    int32_t n_chunks = 0;
    int32_t n_rows = 0;
    int32_t all_rows = 0;
    int32_t slot = 0;
    int32_t capacity = 0;
  };
  void validate(std::span<const StepChunk> chunks, std::span<const int> tokens) const;
  void send_plan(const Plan& plan);  // leader: to the stage-0 group and down the pipeline
  Plan receive_plan();               // workers
  void forward_plan(const Plan& plan);
  void apply_slot_op(const Plan& plan);
  void execute_step(const Plan& plan);
  int logit_rows(const Plan& plan) const;

  LlamaModel& model_;
  ModelShard shard_;
  std::optional<ParallelGroups> groups_;
  bool leader_ = true;
  int max_in_flight_ = 1;
  bool stopped_ = false;
  std::unique_ptr<ActivationExchange> pp_exchange_;  // pipelines: the hidden state from stage to stage
  std::unique_ptr<KvPool> pool_;  // paged runners; declared before slots_, whose caches hold its blocks
  std::vector<std::optional<KvCache>> slots_;
  // Plan payload and the model's view of it.
  std::vector<StepChunk> chunks_;
  std::vector<int> tokens_;
  std::vector<SequenceChunk> seq_chunks_;
  // Logits: the leader's own (no pipeline) or the last stage's ring of buffers in flight to the leader.
  std::vector<std::vector<float>> logits_ring_;
  std::vector<uint64_t> ring_send_;  // start_send id per ring buffer (0: none)
  size_t ring_next_ = 0;
  std::deque<int> pending_;  // leader: logit rows of each unfinished step
};

}  // namespace tessera
