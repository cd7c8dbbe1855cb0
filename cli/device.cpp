#include "cli/device.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "engine/core/check.h"
#include "parallel/consistency.h"

#ifdef TESSERA_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
#endif
#ifdef TESSERA_WITH_NCCL
#include <unistd.h>

#include "parallel/nccl_communicator.h"
#endif

namespace tessera::cli {

void DeviceOptions::add_to(CLI::App& app) {
  app.add_option("--device", device, "Where the model runs: cpu, or cuda (GPU 0; needs a CUDA build)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

bool cuda_built() {
#ifdef TESSERA_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void DeviceOptions::check(const std::string& act_quant) const {
  if (!cuda()) return;
  if (!cuda_built())
    throw Error(
        "--device cuda: this tessera was built without the CUDA backend; configure with "
        "-DTESSERA_ENABLE_CUDA=ON (needs the CUDA toolkit) and rebuild");
  if (act_quant != "none")
    throw Error("--device cuda: --act-quant " + act_quant +
                " is a CPU kernel path with no GPU equivalent (the GPU keeps fp32 activations); drop --act-quant");
}

#ifdef TESSERA_WITH_CUDA
namespace {
// This rank's index among the job's ranks on its host, modulo the host's GPUs.
int this_rank_cuda_device() {
  std::string why;
  const int count = cuda_device_count(&why);
  if (count == 0) throw Error("--device cuda: no usable GPU here (" + why + ")");
  int local = 0;
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    if (const char* v = std::getenv(var)) {
      local = std::max(0, std::atoi(v));
      break;
    }
  }
  return local % count;
}
}  // namespace
#endif

std::unique_ptr<Backend> make_backend(const DeviceOptions& o, int threads, const LoadedModel& loaded) {
#ifdef TESSERA_WITH_CUDA
  if (o.cuda()) {
    TESSERA_CHECK_MSG(loaded.act_quant == ActQuant::kNone, "DeviceOptions::check refuses --act-quant with cuda");
    CudaBackendOptions options;
    options.device = this_rank_cuda_device();
    return std::make_unique<CudaBackend>(options);
  }
#else
  TESSERA_CHECK_MSG(!o.cuda(), "DeviceOptions::check refuses cuda in a build without it");
#endif
  auto cpu = std::make_unique<CpuBackend>(threads);
  configure_activations(*cpu, loaded);
  return cpu;
}

std::unique_ptr<Communicator> make_model_tp(const DeviceOptions& o, const ParallelJob& job) {
  Communicator* tp = job.tp_data();
  if (!o.cuda() || tp == nullptr || tp->size() == 1) return nullptr;
#ifdef TESSERA_WITH_NCCL
  // Every rank learns every rank's (host, GPU); all take the same decision.
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  const int device = this_rank_cuda_device();
  const uint64_t mine = Fingerprint().add(host).add(static_cast<uint64_t>(device)).value();
  std::vector<uint64_t> all(static_cast<size_t>(tp->size()));
  job.groups()->tp_control->all_gather_bytes(&mine, sizeof(mine), all.data());
  std::sort(all.begin(), all.end());
  if (std::adjacent_find(all.begin(), all.end()) == all.end())
    return std::make_unique<NcclCommunicator>(*tp, device, job.options().comm_timeout, "tp",
                                              [](int status) { ParallelJob::abort_if_parallel(status); });
  if (job.leader())
    std::fprintf(stderr,
                 "[tessera] tensor-parallel ranks share a GPU, which NCCL refuses: their activations go through host "
                 "memory over MPI\n");
#endif
  return nullptr;
}

}  // namespace tessera::cli
