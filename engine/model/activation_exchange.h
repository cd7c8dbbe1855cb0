// Activations between a backend's memory and a communicator's: the tensor-parallel all-reduce and logits
// all-gather, the pipeline's stage-to-stage hand-off.
//
// Three pairings, one interface:
//   host backend (CPU) + host communicator (MPI)      the pointers go straight to the communicator;
//   device backend (CUDA) + device communicator (NCCL) the same, after the backend's queued ops have finished
//                                                       (the communicator works on its own stream);
//   device backend + host communicator                 through a host staging buffer: copy out, communicate,
//                                                       copy back. Ranks that share one GPU (where NCCL refuses
//                                                       to run) and GPU builds without NCCL take this path.
// A host backend with a device communicator is a programmer error. The staging and gather buffers are sized at
// construction for `max_floats` per rank, so no call allocates.
#pragma once

#include <cstddef>
#include <vector>

#include "engine/backend/backend.h"
#include "parallel/communicator.h"

namespace tessera {

class ActivationExchange {
 public:
  // max_floats: the largest `count` of any later call (per rank for all_gather_to_host).
  ActivationExchange(Backend& backend, Communicator& comm, size_t max_floats);
  ActivationExchange(const ActivationExchange&) = delete;
  ActivationExchange& operator=(const ActivationExchange&) = delete;

  // data[0..count) (backend memory) <- the sum over the group's ranks, identical on every rank.
  void all_reduce_sum(float* data, size_t count);
  // host_out[r * count + i] <- rank r's in[i]: `in` is backend memory, `host_out` host memory (size() * count).
  void all_gather_to_host(const float* in, size_t count, float* host_out);
  // Point to point (see Communicator::send/recv) for backend memory.
  void send(const float* data, size_t count, int dst, int tag);
  void recv(float* data, size_t count, int src, int tag);

 private:
  enum class Path { kHost, kDevice, kStaged };

  void check_fits(size_t count) const;
  float* staging(size_t count);  // kStaged: the host buffer, for `count` floats

  Backend& backend_;
  Communicator& comm_;
  Path path_;
  size_t max_floats_;
  std::vector<float> staging_;  // kStaged: one rank's floats in host memory
  BackendBuffer gathered_;      // kDevice: every rank's floats of an all-gather, in device memory
};

}  // namespace tessera
