// --device: which backend a single-process subcommand (generate, bench) computes on, and the factory that makes
// it. CUDA exists only in a build configured with -DTESSERA_ENABLE_CUDA=ON.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "cli/options.h"
#include "cli/parallel_job.h"
#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "parallel/communicator.h"

namespace tessera::cli {

struct DeviceOptions {
  std::string device = "cpu";  // cpu | cuda

  // Registers --device.
  void add_to(CLI::App& app);
  bool cuda() const { return device == "cuda"; }
  // Throws tessera::Error when the device cannot run this: cuda in a build without CUDA, or with int8 activations
  // (--act-quant, a CPU kernel path).
  void check(const std::string& act_quant) const;
};

// True when this executable was built with the CUDA backend.
bool cuda_built();

// The backend of `o`: CpuBackend(threads) with the loaded model's activation options (configure_activations), or
// CudaBackend on this rank's GPU: its index among the job's ranks on its host (as the launcher tells it: Open MPI,
// MPICH, Slurm; 0 outside one) modulo the host's GPUs, so ranks share GPUs only when there are more ranks than
// GPUs. Call o.check() first.
std::unique_ptr<Backend> make_backend(const DeviceOptions& o, int threads, const LoadedModel& loaded);

// The communicator for the model's own tensor-parallel collectives when it is not the job's MPI group: NCCL,
// when the backend is a GPU, the build has NCCL and every rank of the tensor-parallel group has a GPU to itself
// (NCCL refuses two ranks on one device). Null otherwise: the model then uses job.tp_data(), and a GPU backend
// stages its activations through host memory. Collective over the tensor-parallel group: every rank calls it.
std::unique_ptr<Communicator> make_model_tp(const DeviceOptions& o, const ParallelJob& job);

}  // namespace tessera::cli
