// One model replica as the continuous-batching engine runs it, shared by `tessera serve` and `tessera batch`.
//
// On the replica's leader (rank 0 of its tensor x pipeline group, or the only process) ServingStack loads the
// shard, builds the runner and the ServingEngine whose thread drives it. The replica's other ranks call
// run_replica_worker, which loads their shard and executes the leader's steps until the leader stops them.
#pragma once

#include <CLI/CLI.hpp>
#include <cstddef>
#include <memory>
#include <string>

#include "cli/options.h"
#include "cli/parallel_job.h"
#include "engine/serving/engine.h"
#include "engine/serving/metrics.h"

namespace tessera::cli {

// The engine's limits, as options of the subcommands that run it.
struct EngineOptions {
  int max_num_seqs = 64;
  int max_queue = 256;
  int max_step_tokens = 256;
  int block_size = 16;
  std::string kv_memory = "1GiB";  // per rank

  // Registers --max-num-seqs, --max-step-tokens, --block-size, --kv-memory and, when with_queue, --max-queue.
  void add_to(CLI::App& app, bool with_queue);
};

class ServingStack {
 public:
  // Loads this replica's model (the leader's shard) and starts the engine. Call on replica leaders only.
  ServingStack(const ModelOptions& model, const EngineOptions& engine, ParallelJob& job,
               serving::ServingMetrics& metrics);
  // Finishes the engine's requests and stops the replica's workers.
  ~ServingStack();
  ServingStack(const ServingStack&) = delete;
  ServingStack& operator=(const ServingStack&) = delete;

  serving::ServingEngine& engine() { return *engine_; }
  // The model's tokenizer, or for random weights without one, token ids spelled as numbers.
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelConfig& config() const;
  // "<source> ready on <backend>: context N, KV pool ..." for the ready banner.
  std::string describe() const;
  // Stops accepting, finishes every accepted request, then stops the replica's workers. Idempotent.
  void shutdown();

 private:
  struct Parts;  // the loaded model, backend, runner and step model, in construction order
  std::unique_ptr<Parts> parts_;
  std::unique_ptr<Tokenizer> id_tokenizer_;
  const Tokenizer* tokenizer_ = nullptr;
  std::unique_ptr<serving::ServingEngine> engine_;
};

// The replica's other ranks: load the shard and execute the leader's steps until it stops them.
void run_replica_worker(const ModelOptions& model, const EngineOptions& engine, ParallelJob& job);

}  // namespace tessera::cli
