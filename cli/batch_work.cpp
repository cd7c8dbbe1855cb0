#include "cli/batch_work.h"

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/core/check.h"
#include "server/api_error.h"
#include "server/openai_response.h"
#include "server/request_parsing.h"

namespace tessera::cli {

namespace {

using nlohmann::json;

constexpr int kBatchTag = 11;  // coordination messages

// Messages are JSON: replica -> coordinator {"want", "results": [[line, tokens, error]...], "finished"},
// coordinator -> replica {"items": [[line_no, id, text]...], "more"}.
std::string encode_request(const std::vector<BatchResult>& results, int want, bool finished) {
  json r = json::array();
  for (const BatchResult& b : results) r.push_back(json::array({b.line, b.completion_tokens, b.error}));
  return json{{"want", want}, {"results", r}, {"finished", finished}}.dump();
}

std::string encode_reply(const WorkSource::Reply& reply) {
  json items = json::array();
  for (const BatchItem& i : reply.items) items.push_back(json::array({i.line, i.id, i.text}));
  return json{{"items", items}, {"more", reply.more}}.dump();
}

WorkSource::Reply decode_reply(const std::string& message) {
  const json j = json::parse(message);
  WorkSource::Reply reply;
  reply.more = j.at("more").get<bool>();
  for (const json& i : j.at("items"))
    reply.items.push_back(BatchItem{i.at(0).get<int64_t>(), i.at(1), i.at(2).get<std::string>()});
  return reply;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Coordinator

BatchCoordinator::BatchCoordinator(std::vector<BatchItem> todo, BatchOutput& output, int replicas,
                                   int ranks_per_replica, std::function<void(const BatchResult&)> on_result)
    : todo_(std::move(todo)),
      output_(output),
      replicas_(replicas),
      ranks_per_replica_(ranks_per_replica),
      on_result_(std::move(on_result)),
      remote_active_(replicas - 1),
      per_replica_(static_cast<size_t>(replicas), 0) {
  TESSERA_CHECK(replicas >= 1 && ranks_per_replica >= 1);
}

std::vector<BatchItem> BatchCoordinator::take(int want) {
  const size_t left = todo_.size() - next_;
  const size_t replicas = static_cast<size_t>(replicas_);
  size_t n = std::min(std::max<size_t>(1, (left + replicas - 1) / replicas), static_cast<size_t>(std::max(want, 0)));
  std::vector<BatchItem> items;
  while (n-- > 0 && next_ < todo_.size()) items.push_back(std::move(todo_[next_++]));
  return items;
}

void BatchCoordinator::put(const BatchResult& result, int replica) {
  output_.write(result.line);
  ++per_replica_.at(static_cast<size_t>(replica));
  if (on_result_) on_result_(result);
}

void BatchCoordinator::serve_remote(Communicator& comm) {
  int src = -1;
  std::string message;
  while (comm.try_recv_message(kBatchTag, &src, &message)) {
    const json j = json::parse(message);
    const int replica = src / ranks_per_replica_;
    for (const json& r : j.at("results"))
      put(BatchResult{r.at(0).get<std::string>(), r.at(1).get<int64_t>(), r.at(2).get<bool>()}, replica);
    if (j.at("finished").get<bool>()) {
      --remote_active_;
      continue;  // a finished replica waits for no answer
    }
    WorkSource::Reply reply;
    reply.items = take(j.at("want").get<int>());
    reply.more = !exhausted();
    comm.send_message(encode_reply(reply), src, kBatchTag);
  }
}

WorkSource::Reply LocalWorkSource::exchange(std::vector<BatchResult>& results, int want) {
  for (const BatchResult& r : results) coordinator_.put(r, 0);
  results.clear();
  Reply reply;
  reply.items = coordinator_.take(want);
  reply.more = !coordinator_.exhausted();
  return reply;
}

WorkSource::Reply RemoteWorkSource::exchange(std::vector<BatchResult>& results, int want) {
  comm_.send_message(encode_request(results, want, /*finished=*/false), coordinator_, kBatchTag);
  results.clear();
  return decode_reply(comm_.recv_message(coordinator_, kBatchTag));
}

void RemoteWorkSource::finished() {
  comm_.send_message(encode_request({}, 0, /*finished=*/true), coordinator_, kBatchTag);
}

// ---------------------------------------------------------------------------------------------------------------
// Replica

struct BatchReplica::Running {
  BatchItem item;
  server::ParsedRequest parsed;
  std::vector<std::shared_ptr<serving::RequestStream>> streams;
  std::vector<server::Choice> choices;
};

BatchReplica::BatchReplica(serving::ServingEngine& engine, const Tokenizer& tokenizer,
                           const server::ChatTemplate& chat_template, int window)
    : engine_(engine), tokenizer_(tokenizer), chat_template_(chat_template), window_(window) {
  TESSERA_CHECK(window >= 1);
}

BatchReplica::~BatchReplica() {
  // Requests still in the engine (an error unwinds us) are cancelled so that the engine can stop.
  for (auto& r : running_)
    for (auto& s : r->streams) s->cancel();
  if (!running_.empty()) engine_.notify_cancel();
}

void BatchReplica::start(BatchItem item, std::vector<BatchResult>& outbox) {
  auto run = std::make_unique<Running>();
  run->item = std::move(item);
  const BatchItem& it = run->item;
  try {
    const json line = json::parse(it.text);
    // An OpenAI batch line carries the request in "body" and the endpoint in "url"; a plain line is the body.
    const bool wrapped = line.contains("body");
    if (wrapped && !line["body"].is_object()) throw server::bad_request("body", "body must be a JSON object");
    json body = wrapped ? line["body"] : line;
    const std::string url = line.contains("url") && line["url"].is_string() ? line["url"].get<std::string>() : "";
    if (!url.empty() && url != "/v1/completions" && url != "/v1/chat/completions")
      throw server::bad_request("url", "url must be /v1/completions or /v1/chat/completions, not " + url);
    for (const char* key : {"id", "custom_id", "method", "url", "stream", "stream_options"}) body.erase(key);
    const bool chat = url == "/v1/chat/completions" || (url.empty() && body.contains("messages"));
    run->parsed =
        chat ? server::parse_chat(body, tokenizer_, chat_template_) : server::parse_completion(body, tokenizer_);
    serving::Submission s = engine_.submit(server::engine_requests(run->parsed));
    if (s.status != serving::SubmitStatus::kOk)
      throw Error(s.status == serving::SubmitStatus::kQueueFull ? "the engine's queue is full" : "shutting down");
    run->streams = std::move(s.streams);
    run->choices.resize(run->streams.size());
    running_.push_back(std::move(run));
  } catch (const server::ApiError& e) {
    outbox.push_back({batch_error_line(it.id, it.line, e.what(), "invalid_request_error"), 0, true});
  } catch (const Error& e) {
    outbox.push_back({batch_error_line(it.id, it.line, e.what(), "invalid_request_error"), 0, true});
  } catch (const json::exception& e) {
    outbox.push_back(
        {batch_error_line(it.id, it.line, std::string("bad request: ") + e.what(), "invalid_request_error"), 0, true});
  }
}

namespace {

// Takes what the streams have; true when every choice has finished.
bool collect(BatchReplica::Running& r) {
  bool all = true;
  for (size_t i = 0; i < r.streams.size(); ++i) {
    if (r.choices[i].finished) continue;
    serving::StreamChunk chunk = r.streams[i]->next(std::chrono::milliseconds(0));
    server::absorb(r.choices[i], chunk);
    all = all && r.choices[i].finished;
  }
  return all;
}

BatchResult result_of(const BatchReplica::Running& r) {
  const BatchItem& it = r.item;
  for (const server::Choice& c : r.choices)
    if (c.finish == serving::FinishKind::kError)
      return {batch_error_line(it.id, it.line, "generation failed: " + c.error, "server_error"), 0, true};
  const json choices = server::openai_choices(r.parsed, r.choices);
  const json usage = server::usage_of(r.choices, r.parsed.n);
  const json& first = choices.at(0);
  json out{{"id", it.id},
           {"line", it.line},
           {"text", first.contains("message") ? first["message"]["content"] : first["text"]},
           {"finish_reason", first["finish_reason"]},
           {"usage", usage}};
  if (r.choices.size() > 1 || r.parsed.want_logprobs) out["choices"] = choices;
  return {dump(out), usage["completion_tokens"].get<int64_t>()};
}

}  // namespace

void BatchReplica::run(WorkSource& source, const std::function<void()>& each_round) {
  std::vector<BatchResult> outbox;
  bool more = true;
  for (;;) {
    bool progressed = false;
    for (size_t i = 0; i < running_.size();) {
      if (collect(*running_[i])) {
        outbox.push_back(result_of(*running_[i]));
        running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(i));
        progressed = true;
      } else {
        ++i;
      }
    }
    const int room = more ? window_ - static_cast<int>(running_.size()) : 0;
    if (!outbox.empty() || room > 0) {
      WorkSource::Reply reply = source.exchange(outbox, room);
      more = reply.more;
      for (BatchItem& item : reply.items) start(std::move(item), outbox);
      progressed = progressed || !reply.items.empty();
    }
    if (each_round) each_round();
    if (!more && running_.empty() && outbox.empty()) break;
    // Tokens come a step at a time; a short nap keeps this loop off the cores the engine uses.
    if (!progressed) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  source.finished();
}

}  // namespace tessera::cli
