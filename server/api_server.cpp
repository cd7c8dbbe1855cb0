#include "server/api_server.h"

#include <algorithm>
#include <chrono>
#include <ctime>

#include "engine/core/check.h"
#include "server/api_error.h"
#include "server/openai_response.h"
#include "server/prometheus.h"

namespace tessera::server {

namespace {

using nlohmann::json;
using serving::FinishKind;
using serving::RequestStream;
using serving::StreamChunk;
using Streams = std::vector<std::shared_ptr<RequestStream>>;

constexpr auto kPoll = std::chrono::milliseconds(50);  // how often a waiting handler checks for a closed client

void send_json(HttpResponder& r, int status, const json& body, const std::map<std::string, std::string>& extra = {}) {
  r.send(status, "application/json", body.dump(-1, ' ', false, json::error_handler_t::replace), extra);
}

std::string sse(const json& j) {
  return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

bool equal_constant_time(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % (b.empty() ? 1 : b.size())]);
  return diff == 0 && !b.empty();
}

std::string tgi_finish(FinishKind f) {
  switch (f) {
    case FinishKind::kEos:
      return "eos_token";
    case FinishKind::kStop:
      return "stop_sequence";
    default:
      return "length";
  }
}

}  // namespace

ApiServer::ApiServer(ApiOptions options, serving::ServingMetrics& metrics)
    : options_(std::move(options)), metrics_(metrics) {}

void ApiServer::set_ready(serving::ServingEngine& engine, const Tokenizer& tokenizer,
                          const ChatTemplate& chat_template) {
  engine_ = &engine;
  tokenizer_ = &tokenizer;
  chat_template_ = &chat_template;
  ready_.store(true, std::memory_order_release);
}

void ApiServer::handle(const HttpRequest& request, HttpResponder& responder) {
  try {
    route(request, responder);
  } catch (const ApiError& e) {
    if (responder.status() == 0) {
      std::map<std::string, std::string> extra;
      if (e.status() == 429) extra["Retry-After"] = "1";
      if (e.status() == 401) extra["WWW-Authenticate"] = "Bearer";
      send_json(responder, e.status(), e.body(), extra);
    }
  } catch (const Error& e) {
    if (responder.status() == 0) send_json(responder, 400, ApiError(400, e.what()).body());
  } catch (const std::exception& e) {
    if (responder.status() == 0) send_json(responder, 500, ApiError(500, e.what(), "server_error").body());
  }
  metrics_.count_request(responder.status() == 0 ? 500 : responder.status());
}

bool ApiServer::authorized(const HttpRequest& request) const {
  if (options_.api_key.empty()) return true;
  const std::string auth = request.header("authorization");
  const std::string prefix = "Bearer ";
  if (!auth.starts_with(prefix)) return false;
  return equal_constant_time(auth.substr(prefix.size()), options_.api_key);
}

void ApiServer::route(const HttpRequest& request, HttpResponder& responder) {
  const std::string path = request.path();
  const bool ready = ready_.load(std::memory_order_acquire);
  struct Route {
    const char* path;
    const char* method;
    bool needs_key;
  };
  static const Route kRoutes[] = {{"/health", "GET", false},
                                  {"/metrics", "GET", false},
                                  {"/v1/models", "GET", true},
                                  {"/v1/completions", "POST", true},
                                  {"/v1/chat/completions", "POST", true},
                                  {"/generate", "POST", true},
                                  {"/generate_stream", "POST", true}};
  const Route* match = nullptr;
  for (const Route& r : kRoutes)
    if (path == r.path) match = &r;
  if (match == nullptr) throw ApiError(404, "no route for " + path, "not_found_error");
  if (request.method != match->method)
    throw ApiError(405, request.method + " is not allowed on " + path + " (use " + match->method + ")",
                   "invalid_request_error");
  if (match->needs_key && !authorized(request))
    throw ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')", "authentication_error");

  if (path == "/health") {
    if (!ready) {
      send_json(responder, 503, {{"status", "loading"}});
    } else if (draining_.load()) {
      send_json(responder, 503, {{"status", "draining"}});
    } else {
      send_json(responder, 200, {{"status", "ok"}});
    }
    return;
  }
  if (path == "/metrics") {
    responder.send(200, "text/plain; version=0.0.4", render_prometheus(metrics_.snapshot()));
    return;
  }
  if (path == "/v1/models") {
    json model{{"id", options_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "tessera"}};
    if (ready) model["max_model_len"] = engine_->context_length();
    send_json(responder, 200, {{"object", "list"}, {"data", json::array({model})}});
    return;
  }
  if (!ready) throw ApiError(503, "the model is still loading", "server_error");
  if (draining_.load()) throw ApiError(503, "the server is shutting down", "server_error");
  generate(request, responder, path);
}

void ApiServer::generate(const HttpRequest& request, HttpResponder& responder, const std::string& path) {
  const json body = parse_json_body(request.body);
  ParsedRequest p;
  if (path == "/v1/completions") {
    p = parse_completion(body, *tokenizer_);
  } else if (path == "/v1/chat/completions") {
    p = parse_chat(body, *tokenizer_, *chat_template_);
  } else {
    p = parse_tgi(body, *tokenizer_, path == "/generate_stream");
  }
  if (body.contains("model") && !body["model"].is_null() && !body["model"].is_string())
    throw bad_request("model", "model must be a string");
  // Every prompt of a list is its own engine request (n of them), all submitted at once or none.
  std::vector<serving::ServingRequest> requests = engine_requests(p);
  if (static_cast<int>(requests.size()) > engine_->config().max_queue)
    throw bad_request("prompt", "the request makes " + std::to_string(requests.size()) +
                                    " sequences (prompts x n) but the server queues at most " +
                                    std::to_string(engine_->config().max_queue));
  serving::Submission s;
  try {
    s = engine_->submit(std::move(requests));
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  if (s.status == serving::SubmitStatus::kQueueFull)
    throw ApiError(429, "the request queue is full; retry later", "rate_limit_error");
  if (s.status == serving::SubmitStatus::kShuttingDown)
    throw ApiError(503, "the server is shutting down", "server_error");
  if (p.stream) {
    respond_stream(p, s.streams, responder);
  } else {
    respond_whole(p, s.streams, responder);
  }
}

void ApiServer::cancel(Streams& streams) {
  for (auto& s : streams) s->cancel();
  engine_->notify_cancel();
}

void ApiServer::respond_whole(const ParsedRequest& p, Streams& streams, HttpResponder& responder) {
  std::vector<Choice> choices(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    while (!choices[i].finished) {
      StreamChunk c = streams[i]->next(kPoll);
      absorb(choices[i], c);
      if (!choices[i].finished && responder.client_gone()) {
        cancel(streams);
        throw ApiError(499, "client closed the connection");  // nobody reads this; it is counted as 499
      }
    }
  }
  for (const Choice& c : choices)
    if (c.finish == FinishKind::kError) throw ApiError(500, "generation failed: " + c.error, "server_error");

  const std::string id = std::to_string(next_id_++);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  const std::string prefix = p.echo ? p.prompts[0].text : "";
  if (p.kind == ApiKind::kTgi) {
    const Choice& c = choices[0];
    json out{{"generated_text", prefix + c.text}};
    if (p.tgi_details) {
      json tokens = json::array();
      for (const auto& t : c.tokens)
        tokens.push_back({{"id", t.token}, {"text", t.text}, {"logprob", t.logprob}, {"special", false}});
      out["details"] = {{"finish_reason", tgi_finish(c.finish)},
                        {"generated_tokens", c.completion_tokens},
                        {"seed", p.request.sampling.seed ? json(*p.request.sampling.seed) : json(nullptr)},
                        {"tokens", tokens}};
    }
    send_json(responder, 200, out);
    return;
  }
  const bool chat = p.kind == ApiKind::kChat;
  send_json(responder, 200,
            {{"id", (chat ? "chatcmpl-" : "cmpl-") + id},
             {"object", chat ? "chat.completion" : "text_completion"},
             {"created", created},
             {"model", options_.model_name},
             {"choices", openai_choices(p, choices)},
             {"usage", usage_of(choices, p.n)}});
}

void ApiServer::respond_stream(const ParsedRequest& p, Streams& streams, HttpResponder& responder) {
  const bool chat = p.kind == ApiKind::kChat;
  const bool tgi = p.kind == ApiKind::kTgi;
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id_++);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  auto chunk_json = [&](json choices) {
    return json{{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", options_.model_name},
                {"choices", std::move(choices)}};
  };
  responder.begin_stream(200, "text/event-stream");
  std::vector<Choice> choices(streams.size());
  bool ok = true;
  if (chat) {
    for (size_t i = 0; i < streams.size() && ok; ++i)
      ok = responder.write(sse(chunk_json(json::array({{{"index", i},
                                                        {"delta", {{"role", "assistant"}, {"content", ""}}},
                                                        {"logprobs", nullptr},
                                                        {"finish_reason", nullptr}}}))));
  }
  // Completions with echo start each choice with its prompt's text; with logprobs that chunk waits for the prompt's
  // logprobs, which come before the choice's first token.
  std::vector<char> echo_pending(streams.size(), p.echo && !tgi && !chat ? 1 : 0);
  auto write_echo = [&](size_t i, const Choice& c) {
    echo_pending[i] = 0;
    return responder.write(
        sse(chunk_json(json::array({{{"index", i},
                                     {"text", p.prompt_of(i).text},
                                     {"logprobs", p.want_logprobs ? completion_logprobs(c.prompt, 0) : json(nullptr)},
                                     {"finish_reason", nullptr}}}))));
  };
  if (!p.want_logprobs)
    for (size_t i = 0; i < streams.size() && ok; ++i)
      if (echo_pending[i]) ok = write_echo(i, choices[i]);
  size_t n_done = 0;
  int tgi_index = 0;
  std::vector<size_t> emitted(streams.size(), 0);
  bool idle = false;  // the last pass over the streams brought nothing
  while (ok && n_done < streams.size()) {
    // The engine steps every sequence together, so after an empty pass one stream is waited on, the rest polled.
    bool waited = false, progressed = false;
    for (size_t i = 0; i < streams.size() && ok; ++i) {
      Choice& c = choices[i];
      if (c.finished) continue;
      StreamChunk chunk = streams[i]->next(idle && !waited ? kPoll : std::chrono::milliseconds(0));
      waited = true;
      progressed =
          progressed || !chunk.prompt.empty() || !chunk.tokens.empty() || !chunk.tail.empty() || chunk.finished;
      const size_t first_new = c.tokens.size();
      const std::string delta = absorb(c, chunk);
      const std::vector<serving::TokenOutput> new_tokens(c.tokens.begin() + static_cast<long>(first_new),
                                                         c.tokens.end());
      if (echo_pending[i] && (!c.prompt.empty() || !new_tokens.empty() || c.finished)) ok = write_echo(i, c);
      if (!ok) break;
      if (tgi) {
        // One event per token; the last carries the whole text and the details, so the newest token is held
        // back until the stream says whether it was the last.
        const size_t ready = c.finished ? c.tokens.size() : (c.tokens.empty() ? 0 : c.tokens.size() - 1);
        for (size_t t = emitted[i]; t < ready && ok; ++t) {
          const bool last = c.finished && t + 1 == ready;
          const serving::TokenOutput& tok = c.tokens[t];
          const std::string text = tok.text + (last ? chunk.tail : "");
          json ev{{"index", tgi_index++},
                  {"token", {{"id", tok.token}, {"text", text}, {"logprob", tok.logprob}, {"special", false}}},
                  {"generated_text", last ? json((p.echo ? p.prompts[0].text : "") + c.text) : json(nullptr)},
                  {"details",
                   last ? json{{"finish_reason", tgi_finish(c.finish)},
                               {"generated_tokens", c.completion_tokens},
                               {"seed", p.request.sampling.seed ? json(*p.request.sampling.seed) : json(nullptr)}}
                        : json(nullptr)}};
          ok = responder.write("data:" + ev.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n");
        }
        emitted[i] = ready;
      } else if (!new_tokens.empty() || !delta.empty() || c.finished) {
        // One chunk per token (as vLLM streams), however many arrived since the last pass; the text held back for
        // a stop string (the tail) and the finish reason go with the last. A pass with no token sends one chunk.
        const size_t pieces = std::max<size_t>(new_tokens.size(), 1);
        size_t offset = (p.echo ? p.prompt_of(i).text.size() : 0) + c.text.size() - delta.size();
        for (size_t t = 0; t < pieces && ok; ++t) {
          const bool last = t + 1 == pieces;
          std::string text = t < new_tokens.size() ? new_tokens[t].text : std::string();
          json choice{{"index", i}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
          if (p.want_logprobs && t < new_tokens.size()) {
            const std::vector<serving::TokenOutput> one{new_tokens[t]};
            choice["logprobs"] = chat ? chat_logprobs(one) : completion_logprobs(one, offset);
          }
          offset += text.size();
          if (last) text += chunk.tail;
          if (chat) {
            choice["delta"] = text.empty() ? json::object() : json{{"content", text}};
          } else {
            choice["text"] = text;
          }
          if (last && c.finished) choice["finish_reason"] = std::string(serving::finish_reason_name(c.finish));
          ok = responder.write(sse(chunk_json(json::array({choice}))));
        }
      }
      if (c.finished) ++n_done;
    }
    idle = !progressed;
    if (ok && n_done < streams.size() && responder.client_gone()) ok = false;
  }
  if (!ok) {
    cancel(streams);
    return;  // the connection is gone: nothing more can be written
  }
  if (!tgi) {
    if (p.include_usage) {
      json usage = chunk_json(json::array());
      usage["usage"] = usage_of(choices, p.n);
      responder.write(sse(usage));
    }
    responder.write("data: [DONE]\n\n");
  }
  responder.end_stream();
}

}  // namespace tessera::server
