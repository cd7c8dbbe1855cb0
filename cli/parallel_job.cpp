#include "cli/parallel_job.h"

#include <cstdio>
#include <cstdlib>
#include <limits>

#include "engine/core/check.h"
#include "parallel/consistency.h"
#include "parallel/timed_communicator.h"
#ifdef TESSERA_HAVE_MPI
#include "parallel/mpi_communicator.h"
#endif

namespace tessera::cli {

namespace {

// Ranks in the job as the launcher announced it (Open MPI, PMIx, PMI), or 0 outside a launcher.
int launcher_world_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}

#ifdef TESSERA_HAVE_MPI
const MpiRuntime* g_runtime = nullptr;  // for abort_if_parallel from main's error path
#endif

}  // namespace

void ParallelOptions::add_to(CLI::App& app) {
  app.add_option("--tp", tp, "Tensor-parallel ranks per pipeline stage (run under mpirun with tp x pp ranks)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--pp", pp, "Pipeline stages (contiguous layer ranges)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--pp-layers", pp_layers, "Layers per pipeline stage, e.g. 12,10 (default: even split)")
      ->delimiter(',');
  app.add_option("--comm-timeout", comm_timeout,
                 "Seconds a collective or transfer may take before every rank exits with an error")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

void ParallelOptions::add_dp_to(CLI::App& app) {
  app.add_option("--dp", dp,
                 "Data-parallel replicas, each of tp x pp ranks (0: as many as the job holds, i.e. ranks / (tp x pp))")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

#ifdef TESSERA_HAVE_MPI
struct ParallelJob::Mpi {
  MpiRuntime runtime;
  MpiCommunicator world;
  MpiCommunicator control;
  std::unique_ptr<MpiCommunicator> replica, replica_control, coordination;  // with --dp > 1
  std::unique_ptr<MpiCommunicator> tp, tp_control, pp, pp_control;
  std::unique_ptr<TimedCommunicator> world_timed, tp_timed, pp_timed;
  std::unique_ptr<Communicator> model_tp;  // NCCL, when the model's collectives run between GPUs
  std::unique_ptr<TimedCommunicator> model_tp_timed;

  Mpi(double timeout, bool concurrent_threads)
      : runtime(nullptr, nullptr, timeout, concurrent_threads),
        world(runtime, timeout, "world"),
        control(runtime, std::numeric_limits<double>::infinity(), "control") {}
};
#else
struct ParallelJob::Mpi {};
#endif

ParallelJob::ParallelJob(const ParallelOptions& options) : options_(options) {
  const int model_ranks = options.model_ranks();
  const int launched = launcher_world_size();
  if (options_.dp == 0) options_.dp = launched > model_ranks ? launched / model_ranks : 1;
  const int wanted = options_.dp * model_ranks;
  if (wanted == 1 && launched <= 1) return;  // a single process: no MPI at all
#ifndef TESSERA_HAVE_MPI
  throw Error("--tp/--pp/--dp need the MPI build of tessera (configure with -DTESSERA_ENABLE_MPI=ON)");
#else
  // Replicas of several ranks use MPI from two threads at once (engine thread: the model; main: coordination).
  mpi_ = std::make_unique<Mpi>(options.comm_timeout, options_.dp > 1 && model_ranks > 1);
  world_rank_ = mpi_->runtime.world_rank();
  world_size_ = mpi_->runtime.world_size();
  // Every rank sees the same mismatch and exits normally; only after this may errors abort the job.
  if (world_size_ != wanted) {
    const std::string layout = (options_.dp > 1 ? "--dp " + std::to_string(options_.dp) + " x " : std::string()) +
                               "--tp " + std::to_string(options.tp) + " x --pp " + std::to_string(options.pp);
    const std::string hint = options.dp == 0 ? " (the job size must be a multiple of tp x pp)" : "";
    throw Error(layout + " = " + std::to_string(wanted) + " ranks, but the job has " + std::to_string(world_size_) +
                " (start it with mpirun -np " + std::to_string(wanted) + ")" + hint);
  }
  if (world_size_ == 1) return;
  g_runtime = &mpi_->runtime;
  Mpi& m = *mpi_;
  // A replica's ranks form a job of their own; one replica is the whole world.
  MpiCommunicator* data = &m.world;
  MpiCommunicator* control = &m.control;
  const int replica = world_rank_ / model_ranks, local = world_rank_ % model_ranks;
  if (options_.dp > 1) {
    m.replica = m.world.split(replica, local, "r" + std::to_string(replica));
    m.replica_control = m.control.split(replica, local, "r" + std::to_string(replica));
    m.coordination = std::make_unique<MpiCommunicator>(m.runtime, std::numeric_limits<double>::infinity(), "batch");
    coordination_ = m.coordination.get();
    data = m.replica.get();
    control = m.replica_control.get();
  }
  const int tp = options.tp, stage = local / tp, tp_rank = local % tp;
  m.tp = data->split(stage, tp_rank, "tp");
  m.tp_control = control->split(stage, tp_rank, "tp");
  m.pp = data->split(tp_rank, stage, "pp");
  m.pp_control = control->split(tp_rank, stage, "pp");
  m.world_timed = std::make_unique<TimedCommunicator>(*data);
  m.tp_timed = std::make_unique<TimedCommunicator>(*m.tp);
  m.pp_timed = std::make_unique<TimedCommunicator>(*m.pp);
  groups_.world = m.world_timed.get();
  groups_.tp = m.tp_timed.get();
  groups_.tp_control = m.tp_control.get();
  groups_.pp = m.pp_timed.get();
  groups_.pp_control = m.pp_control.get();
#endif
}

ParallelJob::~ParallelJob() {
#ifdef TESSERA_HAVE_MPI
  if (mpi_) g_runtime = nullptr;
#endif
}

ShardRequest ParallelJob::shard_request() const {
  ShardRequest r;
  r.tp_size = options_.tp;
  r.pp_size = options_.pp;
  const int local = world_rank_ % options_.model_ranks();
  r.tp_rank = local % options_.tp;
  r.pp_stage = local / options_.tp;
  r.pp_layers = options_.pp_layers;
  return r;
}

void ParallelJob::check_consistent(const std::string& what, uint64_t fingerprint) const {
#ifdef TESSERA_HAVE_MPI
  if (parallel()) tessera::check_consistent(mpi_->world, what, fingerprint);
#endif
}

void ParallelJob::use_model_tp(std::unique_ptr<Communicator> comm) {
  if (comm == nullptr) return;
#ifdef TESSERA_HAVE_MPI
  TESSERA_CHECK(parallel() && groups_.tp != nullptr && comm->size() == groups_.tp->size());
  mpi_->model_tp = std::move(comm);
  mpi_->model_tp_timed = std::make_unique<TimedCommunicator>(*mpi_->model_tp);
#else
  TESSERA_CHECK_MSG(false, "a model communicator of its own needs the MPI build");
#endif
}

Communicator* ParallelJob::model_tp() const {
#ifdef TESSERA_HAVE_MPI
  if (mpi_ && mpi_->model_tp_timed) return mpi_->model_tp_timed.get();
#endif
  return tp_data();
}

double ParallelJob::comm_seconds() const {
#ifdef TESSERA_HAVE_MPI
  if (parallel())
    return mpi_->world_timed->seconds() + mpi_->tp_timed->seconds() + mpi_->pp_timed->seconds() +
           (mpi_->model_tp_timed ? mpi_->model_tp_timed->seconds() : 0.0);
#endif
  return 0.0;
}

void ParallelJob::reset_comm_seconds() {
#ifdef TESSERA_HAVE_MPI
  if (!parallel()) return;
  mpi_->world_timed->reset();
  mpi_->tp_timed->reset();
  mpi_->pp_timed->reset();
  if (mpi_->model_tp_timed) mpi_->model_tp_timed->reset();
#endif
}

uint64_t options_fingerprint(const ModelOptions& m, const ParallelOptions& p) {
  Fingerprint f;
  f.add(m.dummy_weights ? "dummy:" + m.preset + ":" + m.dtype + ":" + std::to_string(m.dummy_seed) : m.model);
  f.add(m.quant)
      .add(m.quant_rules_file)
      .add(m.act_quant)
      .add(m.act_dtype)
      .add(static_cast<uint64_t>(m.quant_rules.size()));
  for (const std::string& r : m.quant_rules) f.add(r);
  f.add(m.prune).add(static_cast<uint64_t>(m.prune_rules.size()));
  for (const std::string& r : m.prune_rules) f.add(r);
  f.add(static_cast<uint64_t>(p.tp)).add(static_cast<uint64_t>(p.pp));
  for (int n : p.pp_layers) f.add(static_cast<uint64_t>(n));
  return f.value();
}

uint64_t config_fingerprint(const ModelConfig& c) {
  Fingerprint f;
  f.add(c.arch);
  for (int v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size, c.max_seq_len,
                c.bos_id, c.eos_id, static_cast<int>(c.rope_style), c.tied_embeddings ? 1 : 0, c.qkv_bias ? 1 : 0})
    f.add(static_cast<uint64_t>(static_cast<int64_t>(v)));
  f.add_bytes(&c.rms_eps, sizeof(c.rms_eps)).add_bytes(&c.rope_theta, sizeof(c.rope_theta));
  return f.value();
}

void ParallelJob::fail(const std::exception& e) const {
  if (!parallel()) return;
  std::fprintf(stderr, "error: rank %d: %s\n", world_rank_, e.what());
  abort_if_parallel(1);
}

void ParallelJob::abort_if_parallel(int status) {
#ifdef TESSERA_HAVE_MPI
  if (g_runtime != nullptr && g_runtime->world_size() > 1) g_runtime->abort(status);
#endif
}

}  // namespace tessera::cli
