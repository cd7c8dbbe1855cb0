// tessera bench on the leader/worker runtime (engine/runtime/model_runner.h): one process, or one tensor x
// pipeline parallel job under mpirun. The model is loaded once; then for every threads x batch x prompt length x
// generation length combination the leader measures prefill and decode throughput, the per-token decode latency
// percentiles and its share of time inside communication, and every rank reports its peak RSS.
//
// A batch is `batch` sequences decoded together: each decode step carries one token of every sequence of a
// micro-batch. Without a pipeline the whole batch is one step; with pp stages it is split into micro-batches
// (default min(pp, batch)) that keep the stages busy on different sequences at once. Prompts are prefilled one
// per step, as many steps in flight as there are micro-batches.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/device.h"
#include "cli/options.h"
#include "cli/parallel_job.h"

namespace tessera::cli {

struct ParallelBenchOptions {
  ModelOptions model;
  ParallelOptions parallel;     // one tp x pp layout
  DeviceOptions device;         // every rank's backend (cuda: the rank's GPU; threads then do not apply)
  std::vector<int> threads{1};  // per rank
  std::vector<int> batches{1};
  std::vector<int> prompt_lens{128};
  std::vector<int> gen_lens{32};
  int micro_batches = 0;  // decode steps in flight per round; 0: min(pp, batch)
};

struct ParallelBenchResult {
  bool leader = true;                // only the leader's rows are filled
  std::vector<nlohmann::json> rows;  // one per combination, in the order measured
};

// Runs every combination of `options` in this process's job (ParallelJob: a single process, or every rank of an
// mpirun job); each rank must be given the same options (checked before loading). on_row, when set, is called on
// the leader with each row as soon as it is measured (progress output).
ParallelBenchResult run_parallel_bench(const ParallelBenchOptions& options,
                                       const std::function<void(const nlohmann::json&)>& on_row = {});

// One human-readable line for a row of run_parallel_bench.
std::string describe_parallel_row(const nlohmann::json& row);

// How the weights are stored after loading, for reports: the dummy dtype, or the first projection's scheme
// after load-time compression ("bf16", "int4:g32", ...).
std::string stored_weight_format(const LoadedModel& loaded, const ModelOptions& options);

}  // namespace tessera::cli
