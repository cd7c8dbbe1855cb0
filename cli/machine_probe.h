// Measures what the machine can do, so benchmarks report efficiency against the hardware, not just raw numbers.
#pragma once

#include <vector>

namespace tessera::cli {

// Sustained memory read bandwidth in GB/s (1e9 bytes/s) with `threads` threads streaming a buffer far larger
// than the caches. Best of a few passes.
double measure_read_bandwidth_gbs(int threads);

// Peak fp32 FMA throughput of one core in GFLOP/s (an FMA counts 2 flops), from a register-only loop.
// Uses AVX2+FMA when the CPU has it, else a scalar loop.
double measure_fma_peak_gflops();

struct MachineFigures {
  std::vector<double> read_bandwidth_gbs;  // one per entry of the `threads` list given to probe_machine
  double fma_peak_gflops_per_core = 0.0;
};

// Runs both measurements in a forked child process, so the 1 GiB probe buffer does not count in this
// process's peak RSS. Falls back to measuring in-process if fork fails.
MachineFigures probe_machine(const std::vector<int>& threads);

// Peak resident set size of this process so far, in bytes.
long long peak_rss_bytes();

}  // namespace tessera::cli
