#include "parallel/single_process_communicator.h"

#include <cstring>

#include "engine/core/check.h"

namespace tessera {

void SingleProcessCommunicator::all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) {
  if (bytes_per_rank > 0 && in != out) std::memmove(out, in, bytes_per_rank);
}

void SingleProcessCommunicator::send(const void* data, size_t bytes, int dst, int tag) {
  TESSERA_CHECK_MSG(false, "send to rank " + std::to_string(dst) + " on a single-process communicator");
}

void SingleProcessCommunicator::recv(void* data, size_t bytes, int src, int tag) {
  TESSERA_CHECK_MSG(false, "recv from rank " + std::to_string(src) + " on a single-process communicator");
}

uint64_t SingleProcessCommunicator::start_send(const void* data, size_t bytes, int dst, int tag) {
  TESSERA_CHECK_MSG(false, "start_send to rank " + std::to_string(dst) + " on a single-process communicator");
  return 0;
}

void SingleProcessCommunicator::wait_send(uint64_t id) {
  TESSERA_CHECK_MSG(false, "wait_send on a single-process communicator");
}

void SingleProcessCommunicator::broadcast(void* data, size_t bytes, int root) {
  TESSERA_CHECK_MSG(root == 0, "broadcast root " + std::to_string(root) + " on a single-process communicator");
}

}  // namespace tessera
