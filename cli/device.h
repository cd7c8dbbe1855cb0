// --device: which backend a single-process subcommand (generate, bench) computes on, and the factory that makes
// it. CUDA exists only in a build configured with -DTESSERA_ENABLE_CUDA=ON.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "cli/options.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_backend.h"

namespace tessera::cli {

struct DeviceOptions {
  std::string device = "cpu";  // cpu | cuda

  // Registers --device.
  void add_to(CLI::App& app);
  bool cuda() const { return device == "cuda"; }
  // Throws tessera::Error when the device cannot run this: cuda in a build without CUDA, cuda with several ranks
  // (`ranks`: tp x pp of the run, or the job size) or with int8 activations (--act-quant, a CPU kernel path).
  void check(int ranks, const std::string& act_quant) const;
};

// True when this executable was built with the CUDA backend.
bool cuda_built();

// The backend of `o`: CpuBackend(threads) with the loaded model's activation options (configure_activations), or
// CudaBackend on device 0. Call o.check() first.
std::unique_ptr<Backend> make_backend(const DeviceOptions& o, int threads, const LoadedModel& loaded);

}  // namespace tessera::cli
