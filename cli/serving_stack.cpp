#include "cli/serving_stack.h"

#include <algorithm>
#include <bit>
#include <cstdio>

#include "cli/byte_size.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/model/memory_plan.h"
#include "engine/runtime/model_runner.h"
#include "engine/serving/id_tokenizer.h"
#include "engine/serving/runner_step_model.h"

namespace tessera::cli {

void EngineOptions::add_to(CLI::App& app, bool with_queue) {
  app.add_option("--max-num-seqs", max_num_seqs, "Sequences running at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  if (with_queue) {
    app.add_option("--max-queue", max_queue, "Requests waiting for admission; more get 429")
        ->check(CLI::Range(0, 1 << 20))
        ->capture_default_str();
  }
  app.add_option("--max-step-tokens", max_step_tokens,
                 "Tokens per engine step (decodes plus prefill chunks); longer prompts are prefilled in chunks")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  app.add_option("--block-size", block_size, "Token rows per KV-cache block (a power of two)")
      ->check(CLI::Range(1, 1024))
      ->check(CLI::Validator(
          [](const std::string& v) {
            const int b = std::stoi(v);
            return std::has_single_bit(static_cast<unsigned>(b)) ? std::string() : "not a power of two: " + v;
          },
          "POWER_OF_TWO"))
      ->capture_default_str();
  app.add_option("--kv-memory", kv_memory, "Memory for the KV cache on each rank, e.g. 512MiB or 4GiB")
      ->capture_default_str();
}

namespace {

// KV bytes one token costs on the rank of the job that holds the most of them (pipeline stages may hold different
// numbers of layers): the pool must fit every rank's --kv-memory.
size_t kv_bytes_per_token_of_job(const ModelConfig& config, const ParallelJob& job) {
  ShardRequest request = job.shard_request();
  size_t most = 0;
  for (int stage = 0; stage < request.pp_size; ++stage) {
    for (int tp_rank = 0; tp_rank < request.tp_size; ++tp_rank) {
      request.pp_stage = stage;
      request.tp_rank = tp_rank;
      most = std::max(most, kv_bytes_per_token(config, plan_shard(config, request)));
    }
  }
  return most;
}

// Blocks in every rank's KV pool: --kv-memory over what a block costs on the rank that holds the most.
int kv_pool_blocks(const EngineOptions& eo, const ModelConfig& c, const ParallelJob& job) {
  const size_t kv_bytes = parse_byte_size(eo.kv_memory, "--kv-memory");
  const size_t block_bytes = kv_bytes_per_token_of_job(c, job) * static_cast<size_t>(eo.block_size);
  const size_t blocks = kv_bytes / block_bytes;
  if (blocks < 1)
    throw Error("--kv-memory " + eo.kv_memory + " holds less than one block of " + std::to_string(eo.block_size) +
                " tokens (" + std::to_string(block_bytes) + " bytes)");
  // 2^30 token rows is beyond any use; more would overflow the pool's row indices.
  return static_cast<int>(std::min(blocks, (size_t{1} << 30) / static_cast<size_t>(eo.block_size)));
}

}  // namespace

struct ServingStack::Parts {
  LoadedModel loaded;
  CpuBackend backend;
  LlamaModel model;
  ModelRunner runner;
  serving::RunnerStepModel step_model;

  Parts(LoadedModel l, int threads, int max_step_tokens, const PagedKvOptions& kv, ParallelJob& job)
      : loaded(std::move(l)),
        backend(threads),
        model(loaded.data, backend, max_step_tokens, job.tp_data()),
        runner(model, job.groups(), /*max_in_flight=*/4, kv),
        step_model(runner) {
    configure_activations(backend, loaded);  // read at run time only
  }
};

ServingStack::ServingStack(const ModelOptions& mo, const EngineOptions& eo, ParallelJob& job,
                           serving::ServingMetrics& metrics) {
  TESSERA_CHECK(job.replica_leader());
  const ShardRequest shard = job.shard_request();
  LoadedModel loaded = load(mo, /*need_tokenizer=*/false, &shard, job.groups());
  job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
  const PagedKvOptions kv{kv_pool_blocks(eo, loaded.data.config, job), eo.block_size};
  parts_ = std::make_unique<Parts>(std::move(loaded), mo.threads, eo.max_step_tokens, kv, job);
  const ModelConfig& c = config();
  tokenizer_ = parts_->loaded.tokenizer.get();
  if (tokenizer_ == nullptr) {
    id_tokenizer_ = std::make_unique<serving::IdTokenizer>(c.vocab_size, c.bos_id, c.eos_id);
    tokenizer_ = id_tokenizer_.get();
  }

  // The engine's block accounting mirrors the runner's pools block for block.
  serving::EngineConfig ec;
  ec.max_num_seqs = eo.max_num_seqs;
  ec.max_queue = eo.max_queue;
  ec.max_step_tokens = eo.max_step_tokens;
  ec.block_size = kv.block_size;
  ec.num_blocks = kv.num_blocks;
  engine_ = std::make_unique<serving::ServingEngine>(parts_->step_model, *tokenizer_, c.eos_id, ec, metrics);
}

ServingStack::~ServingStack() {
  shutdown();
}

const ModelConfig& ServingStack::config() const {
  return parts_->loaded.data.config;
}

std::string ServingStack::describe() const {
  const ModelConfig& c = config();
  const serving::EngineConfig& ec = engine_->config();
  const int kv_tokens = ec.num_blocks * ec.block_size;
  char buf[512];
  std::snprintf(
      buf, sizeof(buf),
      "%s ready on %s: context %d, KV pool %d blocks x %d tokens = %d tokens (%.1f full-context sequences), max %d "
      "running / %d queued",
      parts_->loaded.data.source.c_str(), parts_->backend.name().c_str(), c.max_seq_len, ec.num_blocks, ec.block_size,
      kv_tokens, static_cast<double>(kv_tokens) / c.max_seq_len, ec.max_num_seqs, ec.max_queue);
  return buf;
}

void ServingStack::shutdown() {
  if (engine_) engine_->shutdown();
  if (parts_) parts_->runner.stop_workers();
}

void run_replica_worker(const ModelOptions& mo, const EngineOptions& eo, ParallelJob& job) {
  TESSERA_CHECK(!job.replica_leader());
  const ShardRequest shard = job.shard_request();
  LoadedModel loaded = load(mo, /*need_tokenizer=*/false, &shard, job.groups());
  job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
  CpuBackend backend(mo.threads);
  configure_activations(backend, loaded);
  LlamaModel model(loaded.data, backend, eo.max_step_tokens, job.tp_data());
  ModelRunner runner(model, job.groups(), /*max_in_flight=*/4,
                     PagedKvOptions{kv_pool_blocks(eo, loaded.data.config, job), eo.block_size});
  runner.serve();
}

}  // namespace tessera::cli
