// The NCCL communicator (library tessera_parallel_nccl, built with TESSERA_ENABLE_CUDA and TESSERA_ENABLE_MPI):
// the data plane between GPUs. Pointers given to its data-plane calls are device pointers; the work is
// enqueued on this communicator's CUDA stream and each call returns when it has completed. Control-plane
// traffic stays on MPI, which also bootstraps NCCL: rank 0 of the group makes the NCCL unique id and the
// bootstrap communicator (the same ranks over MPI) broadcasts it. nccl.h and cuda_runtime.h stay inside the .cpp.
//
// Failure model as for MpiCommunicator: the communicator is created non-blocking and every operation is polled
// (cudaStreamQuery, ncclCommGetAsyncError) against the timeout; on expiry or an NCCL error it aborts the NCCL
// communicator, prints "tessera: rank R: <operation> on nccl:<name> timed out after T s (...)" and calls
// `abort_job` (MpiRuntime::abort), so no rank hangs.
//
// Status: compiled and linked in CI; not yet run on a GPU (see the CUDA issue's notes).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace tessera {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `bootstrap`: every rank of that group joins, using CUDA device `device`.
  NcclCommunicator(Communicator& bootstrap, int device, double timeout_seconds, std::string name,
                   std::function<void(int)> abort_job);
  ~NcclCommunicator() override;

  int rank() const override;
  int size() const override;
  std::string name() const override;
  bool device_memory() const override { return true; }
  // The cudaStream_t the operations run on (as void*, so callers need no CUDA header).
  void* stream() const;

  void all_reduce_sum(float* data, size_t count) override;
  void all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) override;
  void send(const void* data, size_t bytes, int dst, int tag) override;
  void recv(void* data, size_t bytes, int src, int tag) override;
  // NCCL has no tags: messages between a pair of ranks match in order; `tag` is only checked for range.
  uint64_t start_send(const void* data, size_t bytes, int dst, int tag) override;
  void wait_send(uint64_t id) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void barrier() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera
