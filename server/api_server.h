// The HTTP API: routing, API-key check, readiness, and the OpenAI / TGI endpoints over the serving engine.
// Handlers run on HTTP connection threads; they only submit requests and read their streams. A client that
// goes away mid-request has its requests cancelled (their KV blocks are freed by the engine).
#pragma once

#include <atomic>
#include <string>

#include "engine/runtime/tokenizer.h"
#include "engine/serving/engine.h"
#include "engine/serving/metrics.h"
#include "server/chat_template.h"
#include "server/http_server.h"
#include "server/request_parsing.h"

namespace tessera::server {

struct ApiOptions {
  std::string api_key;     // empty: no key needed
  std::string model_name;  // reported by /v1/models and in responses
};

class ApiServer {
 public:
  ApiServer(ApiOptions options, serving::ServingMetrics& metrics);

  // Call once the model is loaded; until then /health answers 503 and generation endpoints 503.
  // The objects must outlive the server.
  void set_ready(serving::ServingEngine& engine, const Tokenizer& tokenizer, const ChatTemplate& chat_template);
  // Shutting down: /health answers 503, new generation requests 503.
  void set_draining() { draining_.store(true); }

  // The HttpHandler.
  void handle(const HttpRequest& request, HttpResponder& responder);

 private:
  void route(const HttpRequest& request, HttpResponder& responder);
  bool authorized(const HttpRequest& request) const;
  void generate(const HttpRequest& request, HttpResponder& responder, const std::string& path);
  void respond_whole(const ParsedRequest& p, std::vector<std::shared_ptr<serving::RequestStream>>& streams,
                     HttpResponder& responder);
  void respond_stream(const ParsedRequest& p, std::vector<std::shared_ptr<serving::RequestStream>>& streams,
                      HttpResponder& responder);
  void cancel(std::vector<std::shared_ptr<serving::RequestStream>>& streams);

  ApiOptions options_;
  serving::ServingMetrics& metrics_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  serving::ServingEngine* engine_ = nullptr;  // set before ready_ (release), read after (acquire)
  const Tokenizer* tokenizer_ = nullptr;
  const ChatTemplate* chat_template_ = nullptr;
  std::atomic<uint64_t> next_id_{0};
};

}  // namespace tessera::server
