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

#include "cli/byte_size.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "cli/parallel_job.h"
#include "cli/serving_stack.h"
#include "engine/core/check.h"
#include "server/api_server.h"
#include "server/chat_template.h"
#include "server/http_server.h"

namespace tessera::cli {

namespace {

struct ServeOptions {
  ModelOptions model;
  ParallelOptions parallel;
  EngineOptions engine;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string port_file;
  std::string api_key;
  std::string served_model_name;
  size_t max_body_bytes = 1 << 20;
  std::string chat_template;
};

int serve_on_this_rank(const ServeOptions& o, ParallelJob& job, sigset_t signals);

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
  parse_byte_size(o.engine.kv_memory, "--kv-memory");  // a bad size is refused before anything starts
  ParallelJob job(o.parallel);
  return job.run([&] { return serve_on_this_rank(o, job, signals); });
}

// Workers of a parallel job load their shard and execute rank 0's steps; rank 0 (or the only process) serves.
// Workers leave SIGINT/SIGTERM blocked: rank 0 drains and then stops them.
int serve_on_this_rank(const ServeOptions& o, ParallelJob& job, sigset_t signals) {
  job.check_consistent("the options", options_fingerprint(o.model, job.options()));
  if (!job.leader()) {
    run_replica_worker(o.model, o.engine, job);
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

  ServingStack stack(o.model, o.engine, job, metrics);
  const server::ChatTemplate chat_template = server::ChatTemplate::resolve(o.chat_template, o.model.model);
  std::fprintf(stderr, "[tessera] %s, chat template %s\n", stack.describe().c_str(), chat_template.name().c_str());
  api.set_ready(stack.engine(), stack.tokenizer(), chat_template);

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "[tessera] %s: draining requests in flight, then exiting\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  api.set_draining();
  http.stop();  // waits for the handlers, which wait for their requests
  stack.shutdown();
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
  o->engine.add_to(*sub, /*with_queue=*/true);
  sub->add_option("--max-body-bytes", o->max_body_bytes, "Largest request body; larger ones get 413")
      ->check(CLI::Range(static_cast<size_t>(64), static_cast<size_t>(1) << 30))
      ->capture_default_str();
  sub->add_option("--chat-template", o->chat_template,
                  "Chat template: llama2 | llama3 | chatml | mistral | raw | a .jinja file | a tokenizer_config.json "
                  "(default: the model's tokenizer_config.json, else raw)");
  return [o] { return run_serve(*o); };
}

}  // namespace tessera::cli
