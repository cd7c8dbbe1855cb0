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

// One prompt: its token ids and its text (what echo / return_full_text send back).
struct PromptInput {
  std::vector<int> tokens;
  std::string text;
};

struct ParsedRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::vector<PromptInput> prompts;  // completions: one, or a list (a batch); chat and TGI: one
  serving::ServingRequest request;   // every sequence's settings; the prompt comes from `prompts`
  int n = 1;                         // sequences per prompt; choice index = prompt index * n + j
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;  // completions: prepend the prompt (with logprobs: its logprobs too); TGI: return_full_text
  bool want_logprobs = false;
  bool tgi_details = false;
  // The prompt of choice i.
  const PromptInput& prompt_of(size_t choice) const { return prompts.at(choice / static_cast<size_t>(n)); }
};

// Parses JSON text; malformed JSON or a non-object is a 400.
nlohmann::json parse_json_body(const std::string& body);

// prompt: a string, a list of token ids, or a non-empty list of strings or of token-id lists (one of each kind
// only); every prompt non-empty. max_tokens may be 0 with echo (the prompt is only scored), else it is at least 1.
ParsedRequest parse_completion(const nlohmann::json& body, const Tokenizer& tokenizer);
ParsedRequest parse_chat(const nlohmann::json& body, const Tokenizer& tokenizer, const ChatTemplate& chat_template);
ParsedRequest parse_tgi(const nlohmann::json& body, const Tokenizer& tokenizer, bool stream);

// The engine requests of a parsed request, in choice order: prompt after prompt, n for each (seeded seed,
// seed + 1, ... within each prompt, so a prompt in a list gets what it gets alone).
std::vector<serving::ServingRequest> engine_requests(const ParsedRequest& p);

}  // namespace tessera::server
