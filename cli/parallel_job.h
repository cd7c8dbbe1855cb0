// Tensor / pipeline parallel runs of the CLI: the --tp/--pp/--pp-layers/--comm-timeout options, MPI start-up
// under mpirun, this rank's communicators and its ModelRunner role.
//
//   mpirun -np 4 tessera generate --tp 2 --pp 2 --model ...
//
// Rank 0 leads (reads the prompt, samples, prints); the other ranks load their shard and serve the leader's
// steps until it stops them. A rank that fails ends the whole job (MPI_Abort) after printing its error, so no
// rank is ever left waiting.
#pragma once

#include <CLI/CLI.hpp>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cli/options.h"
#include "engine/model/shard.h"
#include "engine/runtime/model_runner.h"

namespace tessera::cli {

struct ParallelOptions {
  int tp = 1;
  int pp = 1;
  std::vector<int> pp_layers;
  double comm_timeout = 300.0;  // seconds per collective / transfer
  int in_flight = 0;            // pipeline micro-batches in flight (0: pp)
  int dp = 1;                   // data-parallel replicas of tp x pp ranks each (0: the job size / (tp x pp))

  void add_to(CLI::App& app);
  // --dp, for the subcommands that run replicas (batch).
  void add_dp_to(CLI::App& app);
  int model_ranks() const { return tp * pp; }
};

// One per process for the lifetime of a subcommand. Without --tp/--pp and outside mpirun it is a single
// process and starts no MPI.
//
// With data parallelism (--dp) the job holds dp replicas of the model, each tp x pp consecutive ranks
// (replica r = world ranks r*tp*pp ...); inside a replica everything is as in a job of its own: its first rank
// leads it, and groups() / tp_data() are the replica's communicators.
class ParallelJob {
 public:
  // Starts MPI when needed and checks dp x tp x pp against the number of ranks (on every rank, before loading).
  // options.dp == 0 is resolved from the job size (options() then holds the number).
  explicit ParallelJob(const ParallelOptions& options);
  ~ParallelJob();
  ParallelJob(const ParallelJob&) = delete;
  ParallelJob& operator=(const ParallelJob&) = delete;

  bool parallel() const { return world_size_ > 1; }
  // Rank 0 of the whole job (with --dp: the coordinator, also replica 0's leader).
  bool leader() const { return world_rank_ == 0; }
  // The first rank of this rank's replica: it drives the replica's ModelRunner.
  bool replica_leader() const { return world_rank_ % options_.model_ranks() == 0; }
  int replica() const { return world_rank_ / options_.model_ranks(); }
  int replicas() const { return options_.dp; }
  // World rank of replica r's leader.
  int replica_leader_rank(int r) const { return r * options_.model_ranks(); }
  // Messages between the replica leaders and rank 0 (world ranks), without a deadline while idle; null when
  // there is one replica.
  Communicator* coordination() const { return coordination_; }
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  const ParallelOptions& options() const { return options_; }
  // What this rank loads (load() turns it into a ModelShard once the model's config is known).
  ShardRequest shard_request() const;
  // The communicators for ModelRunner; null when the model (replica) is one process. The tp group is
  // `tp_data()` for the model.
  const ParallelGroups* groups() const { return options_.model_ranks() > 1 ? &groups_ : nullptr; }
  Communicator* tp_data() const { return options_.model_ranks() > 1 ? groups_.tp : nullptr; }
  // The model's own tensor-parallel collectives go through `comm` (NCCL between GPUs: make_model_tp in
  // cli/device.h) instead of tp_data(); timed with the others. Null: keep tp_data().
  void use_model_tp(std::unique_ptr<Communicator> comm);
  // What LlamaModel takes as its tensor-parallel communicator.
  Communicator* model_tp() const;
  // Every rank must agree on the model and options: compares fingerprints, throws on a mismatch.
  void check_consistent(const std::string& what, uint64_t fingerprint) const;
  // Seconds spent inside data-plane communication since the last reset (timed wrappers), for bench.
  double comm_seconds() const;
  void reset_comm_seconds();

  // Runs a subcommand's body. In a parallel job an error on any rank is printed with the rank and ends the
  // whole job at once (a clean unwind would leave the other ranks waiting for steps that never come).
  template <typename Body>
  int run(Body&& body) {
    try {
      return body();
    } catch (const std::exception& e) {
      fail(e);
      throw;
    }
  }

  // Ends the job from an error path: MPI_Abort(status) when parallel; returns otherwise.
  static void abort_if_parallel(int status);

 private:
  void fail(const std::exception& e) const;  // parallel: print and abort; otherwise return

  struct Mpi;  // MPI runtime and communicators (parallel_job.cpp), absent in a single process
  ParallelOptions options_;
  int world_rank_ = 0;
  int world_size_ = 1;
  std::unique_ptr<Mpi> mpi_;
  ParallelGroups groups_;
  Communicator* coordination_ = nullptr;
};

// What every rank of a job must agree on before loading (model path or preset, dtype, compression, parallel
// layout), and after loading (the model's configuration), condensed for ParallelJob::check_consistent.
uint64_t options_fingerprint(const ModelOptions& model, const ParallelOptions& parallel);
uint64_t config_fingerprint(const ModelConfig& config);

}  // namespace tessera::cli
