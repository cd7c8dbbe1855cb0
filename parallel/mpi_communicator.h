// The MPI communicator (library tessera_parallel_mpi, built with TESSERA_ENABLE_MPI). mpi.h stays inside
// mpi_communicator.cpp: nothing here names an MPI type.
//
//   int main(int argc, char** argv) {
//     tessera::MpiRuntime mpi(&argc, &argv);                       // MPI_Init_thread ... MPI_Finalize
//     tessera::MpiCommunicator world(mpi, opts.comm_timeout_s);     // the whole job
//     auto stage = world.split(/*color=*/pp_rank, /*key=*/tp_rank);  // this stage's tensor-parallel group
//     try { ... } catch (const tessera::Error& e) { print(e); mpi.abort(1); }
//   }
//
// Failure model: no operation can hang forever. Every operation is issued as non-blocking MPI and polled with
// MPI_Test against the communicator's timeout (`--comm-timeout`, seconds, measured per operation from its
// start). When it expires the rank prints
//   tessera: rank R: <operation> on <name> timed out after T s (a peer rank may have died)
// to stderr and calls MPI_Abort on MPI_COMM_WORLD with status 3, which ends every rank of the job (aborting only
// a sub-communicator could leave the rest of the job waiting on its members). MPI errors are returned, not fatal
// inside MPI (MPI_ERRORS_RETURN), and end the job the same way:
//   tessera: rank R: <operation> on <name> failed: <MPI's error text> (a peer rank may have died)
// R is the rank in MPI_COMM_WORLD. When a rank dies, Open MPI's launcher (mpiexec) normally tears the job down on
// its own within about a second; the timeout is the backstop when it does not (another launcher, a rank that is
// alive but stuck, `--mca orte_abort_on_non_zero_status 0`).
//
// What a deadline cannot cover: MPI_Comm_split has no non-blocking form, so `split` first passes a timed barrier
// (every rank has arrived) and then splits; MPI_Finalize is preceded by a timed barrier in ~MpiRuntime.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace tessera {

// Owns MPI for the process: MPI_Init_thread in the constructor, MPI_Finalize in the destructor. One per process,
// created before and destroyed after every MpiCommunicator (MPI cannot be initialised twice). Requests
// MPI_THREAD_SERIALIZED: any one thread at a time may call MPI (e.g. an engine thread other than main), or with
// `concurrent_threads` MPI_THREAD_MULTIPLE: several threads at once, each on its own communicators (a batch
// replica's engine thread drives its model while the main thread talks to the coordinator).
class MpiRuntime {
 public:
  // Throws tessera::Error if MPI is already initialised or finalised, or lacks the thread level asked for.
  // `shutdown_timeout_seconds` bounds the barrier that ~MpiRuntime passes before MPI_Finalize.
  MpiRuntime(int* argc, char*** argv, double shutdown_timeout_seconds = 60.0, bool concurrent_threads = false);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  // Ends the whole job with `status` (MPI_Abort on MPI_COMM_WORLD) after flushing stdout and stderr. For error
  // paths: a rank that returns from main with an error while others wait would otherwise leave them to time out.
  [[noreturn]] void abort(int status) const;

 private:
  double shutdown_timeout_s_;
  int world_rank_ = 0;
  int world_size_ = 1;
};

class MpiCommunicator final : public Communicator {
 public:
  // Collective over MPI_COMM_WORLD: a private duplicate of it, so our traffic never matches anyone else's.
  // `timeout_seconds` > 0 (may be infinity) bounds every operation; otherwise throws tessera::Error.
  MpiCommunicator(const MpiRuntime& runtime, double timeout_seconds, std::string name = "world");
  ~MpiCommunicator() override;

  // Collective over this communicator: ranks with the same `color` (>= 0) form a new group, ordered by `key`
  // (then by rank here). E.g. with tp ranks per pipeline stage, split(rank / tp, rank % tp) gives this stage's
  // tensor-parallel group and split(rank % tp, rank / tp) the pipeline through this tp slot. The new
  // communicator has this one's timeout and is named "<this name>/<name>" ("<this name>/c<color>" when `name`
  // is empty). Destroy it before the MpiRuntime.
  std::unique_ptr<MpiCommunicator> split(int color, int key, const std::string& name = "");

  int rank() const override;
  int size() const override;
  std::string name() const override;
  double timeout_seconds() const;

  void all_reduce_sum(float* data, size_t count) override;
  // bytes_per_rank must fit in an int (2 GiB); the others chunk larger buffers.
  void all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) override;
  void send(const void* data, size_t bytes, int dst, int tag) override;
  void recv(void* data, size_t bytes, int src, int tag) override;
  // Chunked like send; the wait is timed from wait_send's call.
  uint64_t start_send(const void* data, size_t bytes, int dst, int tag) override;
  void wait_send(uint64_t id) override;
  void broadcast(void* data, size_t bytes, int root) override;
  // The generic all-gather version, with failures reported as "argmax_all".
  ArgmaxCandidate argmax_all(ArgmaxCandidate local) override;
  void barrier() override;
  // Messages of any length; the waits (send, recv_message) are bounded by the timeout like every operation.
  void send_message(const std::string& message, int dst, int tag) override;
  bool try_recv_message(int tag, int* src, std::string* message) override;
  std::string recv_message(int src, int tag) override;

 private:
  struct Impl;  // the MPI handle and its bookkeeping (mpi_communicator.cpp)
  explicit MpiCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
