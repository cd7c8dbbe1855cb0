// tessera bench sweeps: every tp x pp layout of the --tp/--pp lists, each measured over every batch x prompt
// length x generation length (run_parallel_bench), merged into one CSV and/or JSON report.
//
// A layout of one rank runs in this process. A layout of tp x pp > 1 ranks needs an MPI job of that size, so
// the sweep starts one per layout:
//
//   mpiexec -n <tp*pp> [--oversubscribe] [--allow-run-as-root] [--mpi-args...] <this tessera> bench
//       <the same options> --tp <t> --pp <p> --json <temporary file>
//
// and merges the rows that job's leader wrote. Inside mpirun (the job is already started) only one layout can be
// measured: the one matching the job.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/bench_parallel.h"

namespace tessera::cli {

struct SweepOptions {
  ParallelBenchOptions bench;  // everything but the layout (bench.parallel's tp/pp are replaced per layout)
  std::vector<int> tps{1};
  std::vector<int> pps{1};
  std::string csv_path;      // "" = no CSV
  std::string json_path;     // "" = no JSON file
  bool json_stdout = false;  // one JSON object per row on stdout (human lines then go to stderr)
  std::string mpiexec = "mpiexec";
  std::string mpi_args;  // extra mpiexec arguments, split at whitespace
  // The options to repeat in each layout's job (everything the user gave except the layout and the outputs).
  std::vector<std::string> forwarded_args;
};

// True when mpirun/mpiexec started this process (Open MPI, PMIx or PMI variables): it is one rank of a job.
bool under_launcher();

// Runs the sweep; returns the exit status. Throws tessera::Error for bad options, a missing mpiexec, or a job
// that fails (after writing the rows measured before it).
int run_bench_sweep(const SweepOptions& options);

// Where the sweep's results come from: machine, date (UTC), command line and git revision ("" if unknown).
nlohmann::json sweep_metadata();

// Writes rows (each gets the metadata's fields) as CSV, and as {metadata..., "results": [rows]} JSON.
void write_bench_csv(const std::string& path, const nlohmann::json& metadata, const std::vector<nlohmann::json>& rows);
void write_bench_json(const std::string& path, const nlohmann::json& metadata, const std::vector<nlohmann::json>& rows);

}  // namespace tessera::cli
