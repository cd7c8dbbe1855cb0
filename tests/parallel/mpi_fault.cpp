// Failure scenarios for the MPI communicator, one per run, checked from outside by run_mpi_case.py:
//   mpi_fault <scenario> <timeout_s> [operation]
// scenario:
//   ok        every rank runs the operation and exits 0
//   exit      rank 1 calls std::_Exit(1) just before the operation
//   kill      rank 1 raises SIGKILL just before the operation
//   stall     rank 1 sleeps for 3 x timeout before the operation (alive but stuck)
//   truncate  rank 0 sends 16 bytes where rank 1 expects 8: an MPI error (MPI_ERR_TRUNCATE) on rank 1
//   mismatch  the last rank has another start-up fingerprint: every rank prints the error and exits 1
// operation (default all_reduce_sum): all_reduce_sum, all_gather, broadcast, barrier, argmax_all, split, recv
// (rank 0 receives from rank 1), send (rank 0 sends 8 MiB to rank 1, beyond any eager limit).
// Rank 0 prints "mpi_fault: rank 0 enters <operation> at <unix seconds>" so the wrapper can measure how long the
// job took to end after the failure.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/core/check.h"
#include "parallel/consistency.h"
#include "parallel/mpi_communicator.h"

namespace {

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void run_operation(tessera::MpiCommunicator& comm, const std::string& op) {
  const int r = comm.rank();
  const int p = comm.size();
  std::vector<float> data(1000, 1.0f);
  if (op == "all_reduce_sum") {
    comm.all_reduce_sum(data.data(), data.size());
  } else if (op == "all_gather") {
    std::vector<float> out(data.size() * p);
    comm.all_gather(data.data(), data.size(), out.data());
  } else if (op == "broadcast") {
    comm.broadcast(data.data(), data.size() * sizeof(float), 0);
  } else if (op == "barrier") {
    comm.barrier();
  } else if (op == "argmax_all") {
    comm.argmax_all({1.0f, r});
  } else if (op == "split") {
    comm.split(0, r);
  } else if (op == "recv") {
    if (r == 0) comm.recv(data.data(), data.size() * sizeof(float), 1, 0);
    if (r == 1) comm.send(data.data(), data.size() * sizeof(float), 0, 0);
  } else if (op == "send") {
    std::vector<char> big(8 << 20, 'x');
    if (r == 0) comm.send(big.data(), big.size(), 1, 0);
    if (r == 1) comm.recv(big.data(), big.size(), 0, 0);
  } else {
    std::fprintf(stderr, "mpi_fault: unknown operation %s\n", op.c_str());
    std::exit(2);
  }
}

}  // namespace

int main(int argc, char** argv) {
  tessera::MpiRuntime runtime(&argc, &argv);
  if (argc < 3) {
    std::fprintf(stderr, "usage: mpi_fault <scenario> <timeout_s> [operation]\n");
    return 2;
  }
  const std::string scenario = argv[1];
  const double timeout = std::atof(argv[2]);
  const std::string op = argc > 3 ? argv[3] : "all_reduce_sum";
  try {
    tessera::MpiCommunicator comm(runtime, timeout);
    const int r = comm.rank();
    comm.barrier();  // everyone is up
    if (scenario == "mismatch") {
      tessera::check_consistent(comm, "model file m.gguf", r == comm.size() - 1 ? 2 : 1);
    } else if (scenario == "truncate") {
      char buf[16] = {};
      if (r == 0) comm.send(buf, 16, 1, 0);
      if (r == 1) comm.recv(buf, 8, 0, 0);
    } else {
      if (r == 0) {
        std::printf("mpi_fault: rank 0 enters %s at %.3f\n", op.c_str(), unix_seconds());
        std::fflush(stdout);
      }
      if (r == 1 && scenario == "exit") std::_Exit(1);
      if (r == 1 && scenario == "kill") std::raise(SIGKILL);
      if (r == 1 && scenario == "stall") std::this_thread::sleep_for(std::chrono::duration<double>(3 * timeout));
      if (scenario != "ok" && scenario != "exit" && scenario != "kill" && scenario != "stall") {
        std::fprintf(stderr, "mpi_fault: unknown scenario %s\n", scenario.c_str());
        return 2;
      }
      run_operation(comm, op);
    }
    comm.barrier();
    std::printf("mpi_fault: rank %d done\n", r);
  } catch (const tessera::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
