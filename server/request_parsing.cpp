#include "server/request_parsing.h"

#include <cmath>
#include <optional>

#include "engine/core/check.h"
#include "server/api_error.h"

namespace tessera::server {

namespace {

using nlohmann::json;

std::optional<double> number(const json& body, const char* key, double lo, double hi) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const json& v = body[key];
  if (!v.is_number()) throw bad_request(key, std::string(key) + " must be a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    throw bad_request(key, std::string(key) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return d;
}

std::optional<int64_t> integer(const json& body, const char* key, int64_t lo, int64_t hi) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const json& v = body[key];
  if (!v.is_number_integer()) throw bad_request(key, std::string(key) + " must be an integer");
  const int64_t i = v.get<int64_t>();
  if (i < lo || i > hi)
    throw bad_request(key, std::string(key) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return i;
}

std::optional<bool> boolean(const json& body, const char* key) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  if (!body[key].is_boolean()) throw bad_request(key, std::string(key) + " must be true or false");
  return body[key].get<bool>();
}

std::vector<std::string> stop_list(const json& body, const char* key) {
  std::vector<std::string> out;
  if (!body.contains(key) || body[key].is_null()) return out;
  const json& v = body[key];
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const json& s : v) {
      if (!s.is_string()) throw bad_request(key, std::string(key) + " must be a string or a list of strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad_request(key, std::string(key) + " must be a string or a list of strings");
  }
  if (out.size() > 16) throw bad_request(key, std::string(key) + " has more than 16 entries");
  std::erase_if(out, [](const std::string& s) { return s.empty(); });
  return out;
}

// The sampling fields OpenAI and vLLM accept (top_k, min_p, repetition_penalty are vLLM extensions).
void parse_sampling(const json& body, ParsedRequest& p) {
  serving::ServingRequest& r = p.request;
  r.sampling.temperature = static_cast<float>(number(body, "temperature", 0.0, 100.0).value_or(1.0));
  r.sampling.top_p = static_cast<float>(number(body, "top_p", 0.0, 1.0).value_or(1.0));
  if (r.sampling.top_p <= 0.0f) throw bad_request("top_p", "top_p must be in (0, 1]");
  const int64_t top_k = integer(body, "top_k", -1, 1 << 30).value_or(0);
  r.sampling.top_k = top_k < 0 ? 0 : static_cast<int>(top_k);
  r.sampling.min_p = static_cast<float>(number(body, "min_p", 0.0, 1.0).value_or(0.0));
  r.sampling.repetition_penalty = static_cast<float>(number(body, "repetition_penalty", 0.01, 100.0).value_or(1.0));
  r.presence_penalty = static_cast<float>(number(body, "presence_penalty", -2.0, 2.0).value_or(0.0));
  r.frequency_penalty = static_cast<float>(number(body, "frequency_penalty", -2.0, 2.0).value_or(0.0));
  if (const auto seed = integer(body, "seed", INT64_MIN, INT64_MAX)) r.sampling.seed = static_cast<uint64_t>(*seed);
  r.stop = stop_list(body, "stop");
  r.stop_at_eos = !boolean(body, "ignore_eos").value_or(false);
  p.n = static_cast<int>(integer(body, "n", 1, 16).value_or(1));
  p.stream = boolean(body, "stream").value_or(false);
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& so = body["stream_options"];
    if (!so.is_object()) throw bad_request("stream_options", "stream_options must be an object");
    p.include_usage = boolean(so, "include_usage").value_or(false);
  }
}

// min_tokens: 0 where a prompt may be only scored (completions with echo), else 1.
void parse_max_tokens(const json& body, const char* key, int dflt, ParsedRequest& p, int min_tokens = 1) {
  p.request.max_new_tokens = static_cast<int>(integer(body, key, min_tokens, 1 << 24).value_or(dflt));
}

constexpr const char* kPromptForms =
    "prompt must be a string, a list of token ids, or a list of strings or of token-id lists";

// One prompt of a completion request, a string or a list of token ids; `name` says which in errors.
PromptInput completion_prompt(const json& v, const Tokenizer& tokenizer, const std::string& name) {
  PromptInput in;
  if (v.is_string()) {
    in.text = v.get<std::string>();
    if (in.text.empty()) throw bad_request("prompt", name + " is empty");
    in.tokens = tokenizer.encode(in.text, /*add_bos=*/true);
    return in;
  }
  if (!v.is_array()) throw bad_request("prompt", kPromptForms);
  if (v.empty()) throw bad_request("prompt", name + " is empty");
  for (const json& t : v) {
    if (!t.is_number_integer()) throw bad_request("prompt", name + ": " + kPromptForms);
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id >= tokenizer.vocab_size())
      throw bad_request("prompt", name + ": token id " + std::to_string(id) + " is outside the vocabulary");
    in.tokens.push_back(static_cast<int>(id));
  }
  in.text = tokenizer.decode(in.tokens);
  return in;
}

// OpenAI's prompt forms: a string, token ids, or a batch (a list of strings, or a list of token-id lists).
std::vector<PromptInput> completion_prompts(const json& prompt, const Tokenizer& tokenizer) {
  if (prompt.is_array() && !prompt.empty() && (prompt[0].is_string() || prompt[0].is_array())) {
    const bool strings = prompt[0].is_string();
    std::vector<PromptInput> out;
    for (size_t i = 0; i < prompt.size(); ++i) {
      const std::string name = "prompt[" + std::to_string(i) + "]";
      if (prompt[i].is_string() != strings || (!strings && !prompt[i].is_array()))
        throw bad_request("prompt", name + ": a prompt list holds only strings or only lists of token ids");
      out.push_back(completion_prompt(prompt[i], tokenizer, name));
    }
    return out;
  }
  return {completion_prompt(prompt, tokenizer, "the prompt")};
}

}  // namespace

json parse_json_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

ParsedRequest parse_completion(const json& body, const Tokenizer& tokenizer) {
  ParsedRequest p;
  p.kind = ApiKind::kCompletion;
  if (!body.contains("prompt")) throw bad_request("prompt", "prompt is required");
  p.prompts = completion_prompts(body["prompt"], tokenizer);
  parse_max_tokens(body, "max_tokens", 16, p, /*min_tokens=*/0);
  parse_sampling(body, p);
  p.echo = boolean(body, "echo").value_or(false);
  // max_tokens 0 scores the prompt (echo, usually with logprobs: how lm-evaluation-harness computes
  // log-likelihoods); without echo there would be nothing to return.
  if (p.request.max_new_tokens == 0 && !p.echo)
    throw bad_request("max_tokens", "max_tokens must be at least 1 (0 only with echo, to score the prompt)");
  if (const auto lp = integer(body, "logprobs", 0, 20)) {
    p.want_logprobs = true;
    p.request.top_logprobs = static_cast<int>(*lp);
  }
  // echo with logprobs reports the prompt's tokens and logprobs too.
  p.request.prompt_logprobs = p.echo && p.want_logprobs;
  return p;
}

ParsedRequest parse_chat(const json& body, const Tokenizer& tokenizer, const ChatTemplate& chat_template) {
  ParsedRequest p;
  p.kind = ApiKind::kChat;
  if (!body.contains("messages")) throw bad_request("messages", "messages is required");
  const json& in = body["messages"];
  if (!in.is_array() || in.empty()) throw bad_request("messages", "messages must be a non-empty list");
  json messages = json::array();
  for (const json& m : in) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw bad_request("messages", "every message needs a string role");
    std::string content;
    const json c = m.value("content", json(nullptr));
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {  // [{"type": "text", "text": "..."}]
      for (const json& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string())
          throw bad_request("messages", "only text content parts are supported");
        content += part["text"].get<std::string>();
      }
    } else if (!c.is_null()) {
      throw bad_request("messages", "message content must be a string or a list of text parts");
    }
    messages.push_back({{"role", m["role"]}, {"content", content}});
  }
  const bool add_generation_prompt = boolean(body, "add_generation_prompt").value_or(true);
  std::string text;
  try {
    text = chat_template.render(messages, add_generation_prompt);
  } catch (const Error& e) {
    throw bad_request("messages", e.what());
  }
  p.prompts = {{chat_template.encode(tokenizer, text), text}};
  if (p.prompts[0].tokens.empty()) throw bad_request("messages", "the chat prompt is empty");
  // max_completion_tokens is the newer name; either works.
  parse_max_tokens(body, body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens", 256, p);
  parse_sampling(body, p);
  p.want_logprobs = boolean(body, "logprobs").value_or(false);
  const auto top = integer(body, "top_logprobs", 0, 20);
  if (top && !p.want_logprobs) throw bad_request("top_logprobs", "top_logprobs needs logprobs: true");
  if (p.want_logprobs) p.request.top_logprobs = static_cast<int>(top.value_or(0));
  return p;
}

ParsedRequest parse_tgi(const json& body, const Tokenizer& tokenizer, bool stream) {
  ParsedRequest p;
  p.kind = ApiKind::kTgi;
  p.stream = stream;
  if (!body.contains("inputs") || !body["inputs"].is_string()) throw bad_request("inputs", "inputs must be a string");
  const std::string inputs = body["inputs"].get<std::string>();
  if (inputs.empty()) throw bad_request("inputs", "inputs is empty");
  p.prompts = {{tokenizer.encode(inputs, /*add_bos=*/true), inputs}};
  const json params = body.value("parameters", json::object());
  if (!params.is_object()) throw bad_request("parameters", "parameters must be an object");
  parse_max_tokens(params, "max_new_tokens", 20, p);
  // TGI is greedy unless do_sample (or a sampling parameter) asks otherwise.
  const bool do_sample = boolean(params, "do_sample").value_or(false);
  const auto temperature = number(params, "temperature", 0.0, 100.0);
  p.request.sampling.temperature = do_sample || temperature ? static_cast<float>(temperature.value_or(1.0)) : 0.0f;
  p.request.sampling.top_p = static_cast<float>(number(params, "top_p", 0.0, 1.0).value_or(1.0));
  if (p.request.sampling.top_p <= 0.0f) throw bad_request("top_p", "top_p must be in (0, 1]");
  p.request.sampling.top_k = static_cast<int>(integer(params, "top_k", 0, 1 << 30).value_or(0));
  p.request.sampling.repetition_penalty =
      static_cast<float>(number(params, "repetition_penalty", 0.01, 100.0).value_or(1.0));
  p.request.frequency_penalty = static_cast<float>(number(params, "frequency_penalty", -2.0, 2.0).value_or(0.0));
  if (const auto seed = integer(params, "seed", 0, INT64_MAX)) p.request.sampling.seed = static_cast<uint64_t>(*seed);
  p.request.stop = stop_list(params, "stop");
  p.echo = boolean(params, "return_full_text").value_or(false);
  p.tgi_details = boolean(params, "details").value_or(false);
  p.want_logprobs = true;  // TGI reports the logprob of every token
  p.request.top_logprobs = 0;
  return p;
}

std::vector<serving::ServingRequest> engine_requests(const ParsedRequest& p) {
  std::vector<serving::ServingRequest> out;
  for (const PromptInput& in : p.prompts) {
    for (int j = 0; j < p.n; ++j) {
      serving::ServingRequest r = p.request;
      r.prompt = in.tokens;
      if (r.sampling.seed) r.sampling.seed = *r.sampling.seed + static_cast<uint64_t>(j);
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace tessera::server
