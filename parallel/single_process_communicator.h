// The communicator of a job with one rank: every collective is a no-op or a copy, and there is no peer to send
// to. What every caller uses when parallelism is off, so model code has one path.
#pragma once

#include <string>

#include "parallel/communicator.h"

namespace tessera {

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single"; }

  void all_reduce_sum(float* data, size_t count) override {}
  void all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) override;
  // No other rank exists: calling these is a programmer error (TESSERA_CHECK).
  void send(const void* data, size_t bytes, int dst, int tag) override;
  void recv(void* data, size_t bytes, int src, int tag) override;
  uint64_t start_send(const void* data, size_t bytes, int dst, int tag) override;
  void wait_send(uint64_t id) override;
  void broadcast(void* data, size_t bytes, int root) override;
  ArgmaxCandidate argmax_all(ArgmaxCandidate local) override { return reduce_argmax(&local, 1); }
  void barrier() override {}
};

}  // namespace tessera
