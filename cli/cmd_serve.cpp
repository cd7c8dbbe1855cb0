// tessera serve: the HTTP server. Starts listening at once (/health answers 503 while the model loads), loads
// the model, then serves OpenAI- and TGI-style endpoints through the continuous-batching engine until SIGINT or
// SIGTERM, when it stops accepting, finishes the requests in flight and exits.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "cli/commands.h"
#include "cli/options.h"
#include "cli/parallel_job.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "engine/model/llama_model.h"
#include "engine/serving/engine.h"
#include "engine/serving/id_tokenizer.h"
#include "engine/serving/runner_step_model.h"
#include "server/api_server.h"
#include "server/chat_template.h"
#include "server/http_server.h"

namespace tessera::cli {

namespace {

struct ServeOptions {
  ModelOptions model;
  ParallelOptions parallel;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string port_file;
  std::string api_key;
  std::string served_model_name;
  int max_num_seqs = 64;
  int max_queue = 256;
  int max_step_tokens = 256;
  int block_size = 16;
  std::string kv_memory = "1GiB";
  size_t max_body_bytes = 1 << 20;
  std::string chat_template;
};

// "512MiB", "2GiB", "1000000" -> bytes.
size_t parse_bytes(const std::string& s) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(s, &pos);
  } catch (const std::exception&) {
    throw Error("--kv-memory: '" + s + "' is not a size (e.g. 512MiB, 2GiB)");
  }
  const std::string unit = s.substr(pos);
  double scale = 1;
  if (unit == "KiB" || unit == "K") {
    scale = 1024.0;
  } else if (unit == "MiB" || unit == "M") {
    scale = 1024.0 * 1024.0;
  } else if (unit == "GiB" || unit == "G") {
    scale = 1024.0 * 1024.0 * 1024.0;
  } else if (!unit.empty() && unit != "B") {
    throw Error("--kv-memory: unknown unit '" + unit + "' (use B, KiB, MiB or GiB)");
  }
  if (!(v > 0)) throw Error("--kv-memory must be positive");
  return static_cast<size_t>(v * scale);
}

int serve_on_this_rank(const ServeOptions& o, ParallelJob& job, sigset_t signals, size_t kv_bytes);

int run_serve(ServeOptions o) {
  // Signals are taken by sigwait on this thread only: block them before any thread (HTTP, engine, pool) starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);  // a client that vanished must not kill the server

  if (o.model.model.empty() && !o.model.dummy_weights) {
    o.model.dummy_weights = true;
    if (o.model.preset.empty()) o.model.preset = "llama-110m";
    std::fprintf(stderr,
                 "[tessera] *** no --model given: serving the '%s' preset with RANDOM WEIGHTS (output is "
                 "meaningless; prompts and outputs are token ids) ***\n",
                 o.model.preset.c_str());
  }
  o.model.validate();
  if (o.api_key.empty())
    if (const char* env = std::getenv("TESSERA_API_KEY")) o.api_key = env;
  if (o.served_model_name.empty())
    o.served_model_name = o.model.dummy_weights ? "dummy:" + o.model.preset : o.model.model;
  const size_t kv_bytes = parse_bytes(o.kv_memory);
  ParallelJob job(o.parallel);
  return job.run([&] { return serve_on_this_rank(o, job, signals, kv_bytes); });
}

// Workers of a parallel job load their shard and execute rank 0's steps; rank 0 (or the only process) serves.
// Workers leave SIGINT/SIGTERM blocked: rank 0 drains and then stops them.
int serve_on_this_rank(const ServeOptions& o, ParallelJob& job, sigset_t signals, size_t kv_bytes) {
  job.check_consistent("the options", options_fingerprint(o.model, job.options()));
  const ShardRequest shard = job.shard_request();
  if (!job.leader()) {
    LoadedModel loaded = load(o.model, /*need_tokenizer=*/false, &shard, job.tp_data());
    job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
    CpuBackend backend(o.model.threads);
    backend.set_activation_quant(loaded.act_quant);
    LlamaModel model(loaded.data, backend, o.max_step_tokens, job.tp_data());
    ModelRunner runner(model, job.groups());
    runner.serve();
    return 0;
  }

  serving::ServingMetrics metrics;
  server::ApiServer api({o.api_key, o.served_model_name}, metrics);
  server::HttpServerOptions http_options;
  http_options.host = o.host;
  http_options.port = o.port;
  http_options.max_body_bytes = o.max_body_bytes;
  http_options.on_error_response = [&metrics](int status) { metrics.count_request(status); };
  server::HttpServer http(http_options,
                          [&api](const server::HttpRequest& r, server::HttpResponder& w) { api.handle(r, w); });
  std::fprintf(stderr, "[tessera] listening on http://%s:%d%s\n", o.host.c_str(), http.port(),
               o.api_key.empty() ? "" : " (API key required)");
  if (!o.port_file.empty()) {
    std::ofstream(o.port_file) << http.port() << "\n";
  }

  LoadedModel loaded = load(o.model, /*need_tokenizer=*/false, &shard, job.tp_data());
  job.check_consistent("the model " + loaded.data.source, config_fingerprint(loaded.data.config));
  const ModelConfig& config = loaded.data.config;
  CpuBackend backend(o.model.threads);
  backend.set_activation_quant(loaded.act_quant);
  LlamaModel model(loaded.data, backend, o.max_step_tokens, job.tp_data());
  ModelRunner runner(model, job.groups());
  serving::RunnerStepModel step_model(runner);
  std::unique_ptr<Tokenizer> id_tokenizer;
  const Tokenizer* tokenizer = loaded.tokenizer.get();
  if (tokenizer == nullptr) {
    id_tokenizer = std::make_unique<serving::IdTokenizer>(config.vocab_size, config.bos_id, config.eos_id);
    tokenizer = id_tokenizer.get();
  }
  const server::ChatTemplate chat_template = server::ChatTemplate::resolve(o.chat_template, o.model.model);

  // KV pool: keys and values of every layer, fp32.
  const size_t row_bytes = 2 * static_cast<size_t>(config.n_layers) * static_cast<size_t>(config.kv_dim()) * 4;
  serving::EngineConfig ec;
  ec.max_num_seqs = o.max_num_seqs;
  ec.max_queue = o.max_queue;
  ec.max_step_tokens = o.max_step_tokens;
  ec.block_size = o.block_size;
  ec.num_blocks = static_cast<int>(kv_bytes / (row_bytes * static_cast<size_t>(o.block_size)));
  if (ec.num_blocks < 1)
    throw Error("--kv-memory " + o.kv_memory + " holds less than one block of " + std::to_string(o.block_size) +
                " tokens (" + std::to_string(row_bytes * static_cast<size_t>(o.block_size)) + " bytes)");
  serving::ServingEngine engine(step_model, *tokenizer, config.eos_id, ec, metrics);
  const int kv_tokens = ec.num_blocks * ec.block_size;
  std::fprintf(stderr,
               "[tessera] %s ready on %s: context %d, KV pool %d blocks x %d tokens = %d tokens (%.1f full-context "
               "sequences), chat template %s, max %d running / %d queued\n",
               loaded.data.source.c_str(), backend.name().c_str(), config.max_seq_len, ec.num_blocks, ec.block_size,
               kv_tokens, static_cast<double>(kv_tokens) / config.max_seq_len, chat_template.name().c_str(),
               ec.max_num_seqs, ec.max_queue);
  api.set_ready(engine, *tokenizer, chat_template);

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "[tessera] %s: draining requests in flight, then exiting\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  api.set_draining();
  http.stop();  // waits for the handlers, which wait for their requests
  engine.shutdown();
  runner.stop_workers();
  std::fprintf(stderr, "[tessera] stopped\n");
  return 0;
}

}  // namespace

Command add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* sub = app.add_subcommand(
      "serve", "HTTP server with OpenAI- and TGI-compatible endpoints (random-weight llama-110m without --model)");
  o->model.add_to(*sub);
  o->parallel.add_to(*sub);
  sub->add_option("--host", o->host, "Address to bind (0.0.0.0 for every interface)")->capture_default_str();
  sub->add_option("--port", o->port, "Port (0: any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  sub->add_option("--port-file", o->port_file, "Write the bound port to this file once listening");
  sub->add_option("--api-key", o->api_key,
                  "Require 'Authorization: Bearer KEY' on the API endpoints (default: $TESSERA_API_KEY, else none)");
  sub->add_option("--served-model-name", o->served_model_name, "Model id reported by /v1/models");
  sub->add_option("--max-num-seqs", o->max_num_seqs, "Sequences running at once")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  sub->add_option("--max-queue", o->max_queue, "Requests waiting for admission; more get 429")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  sub->add_option("--max-step-tokens", o->max_step_tokens,
                  "Tokens per engine step (decodes plus prefill chunks); longer prompts are prefilled in chunks")
      ->check(CLI::Range(1, 8192))
      ->capture_default_str();
  sub->add_option("--block-size", o->block_size, "Token rows per KV-cache block")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  sub->add_option("--kv-memory", o->kv_memory, "Memory for the KV cache, e.g. 512MiB or 4GiB")->capture_default_str();
  sub->add_option("--max-body-bytes", o->max_body_bytes, "Largest request body; larger ones get 413")
      ->check(CLI::Range(static_cast<size_t>(64), static_cast<size_t>(1) << 30))
      ->capture_default_str();
  sub->add_option("--chat-template", o->chat_template,
                  "Chat template: llama2 | llama3 | chatml | mistral | raw | a .jinja file | a tokenizer_config.json "
                  "(default: the model's tokenizer_config.json, else raw)");
  return [o] { return run_serve(*o); };
}

}  // namespace tessera::cli
