#include "cli/device.h"

#include "engine/core/check.h"

#ifdef TESSERA_WITH_CUDA
#include "engine/backend/cuda/cuda_backend.h"
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

void DeviceOptions::check(int ranks, const std::string& act_quant) const {
  if (!cuda()) return;
  if (!cuda_built())
    throw Error(
        "--device cuda: this tessera was built without the CUDA backend; configure with "
        "-DTESSERA_ENABLE_CUDA=ON (needs the CUDA toolkit) and rebuild");
  if (ranks > 1)
    throw Error(
        "--device cuda runs one process: tensor/pipeline parallelism on the CUDA backend is not wired yet "
        "(drop --tp/--pp and mpirun)");
  if (act_quant != "none")
    throw Error("--device cuda: --act-quant " + act_quant +
                " is a CPU kernel path with no GPU equivalent (the GPU keeps fp32 activations); drop --act-quant");
}

std::unique_ptr<Backend> make_backend(const DeviceOptions& o, int threads, const LoadedModel& loaded) {
#ifdef TESSERA_WITH_CUDA
  if (o.cuda()) {
    TESSERA_CHECK_MSG(loaded.act_quant == ActQuant::kNone, "DeviceOptions::check refuses --act-quant with cuda");
    return std::make_unique<CudaBackend>();
  }
#else
  TESSERA_CHECK_MSG(!o.cuda(), "DeviceOptions::check refuses cuda in a build without it");
#endif
  auto cpu = std::make_unique<CpuBackend>(threads);
  configure_activations(*cpu, loaded);
  return cpu;
}

}  // namespace tessera::cli
