// tessera bench with --tp/--pp/--sequences: prefill and decode throughput of the leader/worker runtime, one
// process or a parallel job under mpirun, with several sequences in flight (pipeline micro-batches) and the
// leader's time inside communication calls.
#pragma once

#include "cli/options.h"
#include "cli/parallel_job.h"

namespace tessera::cli {

struct ParallelBenchOptions {
  ModelOptions model;
  ParallelOptions parallel;
  int threads = 1;  // per rank
  int prompt_len = 128;
  int gen_tokens = 32;
  int sequences = 1;  // in flight at once
  bool json_output = false;
};

int run_parallel_bench(const ParallelBenchOptions& options);

}  // namespace tessera::cli
