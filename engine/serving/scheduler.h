// Iteration-level scheduling policy for continuous batching. Every step it decides which sequences run and how
// many of their tokens, under three limits: max_num_seqs running sequences, max_step_tokens tokens per step (so a
// long prompt is prefilled in chunks and running decodes are not stalled behind it) and the free KV blocks.
//
// Order within a step: (1) one decode token for every running sequence that is generating, oldest first; when
// its next row needs a block and none is free, the newest running sequence is preempted (its blocks freed, its
// tokens recomputed later: it goes back to the front of the queue); (2) the next prefill chunk of running
// sequences still reading their prompt; (3) admission of waiting sequences, first come first served, when the
// pool has blocks for the whole prompt plus a small watermark and nothing was preempted this step.
//
// Pure bookkeeping over SeqSchedState records owned by the caller; no model, no threads (engine thread only).
#pragma once

#include <deque>
#include <vector>

#include "engine/serving/block_manager.h"

namespace tessera::serving {

// What the scheduler knows of a sequence. The engine owns it and updates n_tokens/n_computed after each step.
struct SeqSchedState {
  int id = 0;
  int n_tokens = 0;    // tokens known so far: prompt plus generated (the next step needs rows up to here)
  int n_computed = 0;  // leading tokens whose keys/values are in the cache
};

struct SchedulerConfig {
  int max_num_seqs = 64;
  int max_step_tokens = 256;
  int watermark_blocks = 0;  // admission keeps this many blocks free for running sequences' decodes
};

// One sequence's share of a step: tokens [pos0, pos0 + n_tokens) of the sequence.
struct ScheduledChunk {
  int seq_id = 0;
  int pos0 = 0;
  int n_tokens = 0;
  bool logits = false;  // the chunk reaches the end of the known tokens: sample the next one
  // Set by the engine, not the scheduler: the logits of every row are wanted too (prompt logprobs).
  bool all_logits = false;
};

// The [vocab] logits rows a chunk produces: n_tokens with all_logits (the last is the sampling row when logits is
// set too), else one when logits is set.
inline int logit_rows(const ScheduledChunk& c) {
  return c.all_logits ? c.n_tokens : c.logits ? 1 : 0;
}

struct StepPlan {
  std::vector<ScheduledChunk> chunks;  // decodes first, then prefill chunks
  std::vector<int> preempted;          // sequences sent back to the queue; their cache must be dropped
  std::vector<int> admitted;           // sequences that left the queue this step
  int n_tokens = 0;                    // sum of chunk sizes
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager& blocks);

  // Appends to the waiting queue. The record must outlive its time in the scheduler.
  void add(SeqSchedState* seq);
  // Drops a sequence (finished or cancelled) from the queue or the running set and frees its blocks.
  void remove(int seq_id);
  // Plans the next step. Preempted sequences have n_computed reset to 0 here.
  StepPlan schedule();

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool idle() const { return running_.empty() && waiting_.empty(); }
  const SchedulerConfig& config() const { return config_; }

 private:
  void preempt_newest(StepPlan& plan);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::deque<SeqSchedState*> waiting_;
  std::vector<SeqSchedState*> running_;  // in admission order, oldest first
};

}  // namespace tessera::serving
