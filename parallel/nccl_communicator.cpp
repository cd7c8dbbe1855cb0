#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <thread>
#include <utility>

#include "engine/core/check.h"

namespace tessera {

struct NcclCommunicator::Impl {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int rank = 0, size = 1, device = 0;
  double timeout_s = 0;
  std::string name;
  std::function<void(int)> abort_job;
  float* one = nullptr;  // device scratch for barrier
  std::map<uint64_t, cudaEvent_t> started;
  uint64_t next_id = 1;
  int world_rank = -1;

  [[noreturn]] void die(const char* what, const std::string& why) {
    if (comm != nullptr) ncclCommAbort(comm);
    comm = nullptr;
    std::fprintf(stderr, "tessera: rank %d: %s on nccl:%s %s (a peer rank may have died)\n", world_rank, what,
                 name.c_str(), why.c_str());
    std::fflush(stderr);
    abort_job(3);
    std::_Exit(3);
  }

  void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) die(what, std::string("failed: ") + cudaGetErrorString(e));
  }

  void check_nccl(ncclResult_t r, const char* what) {
    if (r != ncclSuccess && r != ncclInProgress) die(what, std::string("failed: ") + ncclGetErrorString(r));
  }

  // Polls until `done()` or the deadline; NCCL's asynchronous errors end the job too.
  template <typename Done>
  void poll(const char* what, Done&& done) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    for (;;) {
      if (done()) return;
      ncclResult_t async = ncclSuccess;
      if (comm != nullptr) ncclCommGetAsyncError(comm, &async);
      if (async != ncclSuccess && async != ncclInProgress)
        die(what, std::string("failed: ") + ncclGetErrorString(async));
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (waited > timeout_s) {
        char buf[64];
        std::snprintf(buf, sizeof(buf), "timed out after %g s", timeout_s);
        die(what, buf);
      }
      if (waited > 0.005) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void finish(const char* what) {
    poll(what, [&] {
      const cudaError_t e = cudaStreamQuery(stream);
      if (e == cudaErrorNotReady) return false;
      check_cuda(e, what);
      return true;
    });
  }

  void check_peer(int peer, int tag, const char* what) const {
    TESSERA_CHECK_MSG(peer >= 0 && peer < size && peer != rank,
                      std::string(what) + ": bad peer " + std::to_string(peer));
    TESSERA_CHECK_MSG(tag >= 0 && tag <= kMaxTag, std::string(what) + ": tag out of range");
  }
};

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device, double timeout_seconds, std::string name,
                                   std::function<void(int)> abort_job)
    : impl_(std::make_unique<Impl>()) {
  if (!(timeout_seconds > 0)) throw Error("the communicator timeout must be a positive number of seconds");
  Impl& m = *impl_;
  m.rank = bootstrap.rank();
  m.size = bootstrap.size();
  m.device = device;
  m.timeout_s = timeout_seconds;
  m.name = std::move(name);
  m.abort_job = std::move(abort_job);
  m.world_rank = bootstrap.rank();
  if (cudaSetDevice(device) != cudaSuccess)
    throw Error("CUDA device " + std::to_string(device) + " is not available for the NCCL communicator");
  ncclUniqueId id;
  if (m.rank == 0) m.check_nccl(ncclGetUniqueId(&id), "set-up (ncclGetUniqueId)");
  bootstrap.broadcast(&id, sizeof(id), 0);  // control plane: over MPI
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a missing peer is caught by our deadline, not a hang inside NCCL
  m.check_nccl(ncclCommInitRankConfig(&m.comm, m.size, id, m.rank, &config), "set-up (ncclCommInitRank)");
  m.poll("set-up (ncclCommInitRank)", [&] {
    ncclResult_t state = ncclInProgress;
    ncclCommGetAsyncError(m.comm, &state);
    return state == ncclSuccess;
  });
  m.check_cuda(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "set-up (stream)");
  m.check_cuda(cudaMalloc(&m.one, sizeof(float)), "set-up (scratch)");
}

NcclCommunicator::~NcclCommunicator() {
  Impl& m = *impl_;
  for (auto& [id, event] : m.started) cudaEventDestroy(event);
  if (m.one != nullptr) cudaFree(m.one);
  if (m.stream != nullptr) cudaStreamDestroy(m.stream);
  if (m.comm != nullptr) ncclCommDestroy(m.comm);
}

int NcclCommunicator::rank() const {
  return impl_->rank;
}
int NcclCommunicator::size() const {
  return impl_->size;
}
std::string NcclCommunicator::name() const {
  return "nccl:" + impl_->name;
}
void* NcclCommunicator::stream() const {
  return impl_->stream;
}

void NcclCommunicator::all_reduce_sum(float* data, size_t count) {
  Impl& m = *impl_;
  m.check_nccl(ncclAllReduce(data, data, count, ncclFloat, ncclSum, m.comm, m.stream), "all_reduce_sum");
  m.finish("all_reduce_sum");
}

void NcclCommunicator::all_gather_bytes(const void* in, size_t bytes_per_rank, void* out) {
  Impl& m = *impl_;
  m.check_nccl(ncclAllGather(in, out, bytes_per_rank, ncclUint8, m.comm, m.stream), "all_gather");
  m.finish("all_gather");
}

void NcclCommunicator::send(const void* data, size_t bytes, int dst, int tag) {
  wait_send(start_send(data, bytes, dst, tag));
}

void NcclCommunicator::recv(void* data, size_t bytes, int src, int tag) {
  Impl& m = *impl_;
  m.check_peer(src, tag, "recv");
  m.check_nccl(ncclRecv(data, bytes, ncclUint8, src, m.comm, m.stream), "recv");
  m.finish("recv");
}

uint64_t NcclCommunicator::start_send(const void* data, size_t bytes, int dst, int tag) {
  Impl& m = *impl_;
  m.check_peer(dst, tag, "send");
  m.check_nccl(ncclSend(data, bytes, ncclUint8, dst, m.comm, m.stream), "send");
  cudaEvent_t done = nullptr;
  m.check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "send");
  m.check_cuda(cudaEventRecord(done, m.stream), "send");
  const uint64_t id = m.next_id++;
  m.started.emplace(id, done);
  return id;
}

void NcclCommunicator::wait_send(uint64_t id) {
  Impl& m = *impl_;
  auto it = m.started.find(id);
  TESSERA_CHECK_MSG(it != m.started.end(), "wait_send: unknown send id " + std::to_string(id));
  cudaEvent_t done = it->second;
  m.poll("send", [&] {
    const cudaError_t e = cudaEventQuery(done);
    if (e == cudaErrorNotReady) return false;
    m.check_cuda(e, "send");
    return true;
  });
  cudaEventDestroy(done);
  m.started.erase(it);
}

void NcclCommunicator::broadcast(void* data, size_t bytes, int root) {
  Impl& m = *impl_;
  TESSERA_CHECK_MSG(root >= 0 && root < m.size, "broadcast: root out of range");
  m.check_nccl(ncclBroadcast(data, data, bytes, ncclUint8, root, m.comm, m.stream), "broadcast");
  m.finish("broadcast");
}

void NcclCommunicator::barrier() {
  all_reduce_sum(impl_->one, 1);
}

}  // namespace tessera
