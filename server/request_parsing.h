// Request bodies -> engine requests, for the OpenAI (/v1/completions, /v1/chat/completions) and TGI
// (/generate, /generate_stream) endpoints. Every field is type- and range-checked here; a violation throws
// ApiError 400 naming the field, before anything reaches the engine.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/runtime/tokenizer.h"
#include "engine/serving/request.h"
#include "server/chat_template.h"

namespace tessera::server {

enum class ApiKind { kCompletion, kChat, kTgi };

struct ParsedRequest {
  ApiKind kind = ApiKind::kCompletion;
  serving::ServingRequest request;  // n copies are submitted (seeds seed, seed+1, ...)
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions: prepend the prompt; TGI: return_full_text
  std::string prompt_text;     // for echo
  bool want_logprobs = false;
  bool tgi_details = false;
};

// Parses JSON text; malformed JSON or a non-object is a 400.
nlohmann::json parse_json_body(const std::string& body);

ParsedRequest parse_completion(const nlohmann::json& body, const Tokenizer& tokenizer);
ParsedRequest parse_chat(const nlohmann::json& body, const Tokenizer& tokenizer, const ChatTemplate& chat_template);
ParsedRequest parse_tgi(const nlohmann::json& body, const Tokenizer& tokenizer, bool stream);

}  // namespace tessera::server
