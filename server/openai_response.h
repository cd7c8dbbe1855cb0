// What the OpenAI endpoints return for finished requests, shared by the HTTP server and `tessera batch`: the
// text, tokens and finish state a choice (one submitted sequence) accumulates from its stream, and the JSON of
// choices, logprobs and usage.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/serving/request.h"
#include "server/request_parsing.h"

namespace tessera::server {

// What one choice (one submitted sequence) produced so far.
struct Choice {
  std::string text;
  std::vector<serving::TokenOutput> prompt;  // with prompt logprobs (echo + logprobs): the prompt's tokens
  std::vector<serving::TokenOutput> tokens;
  bool finished = false;
  serving::FinishKind finish = serving::FinishKind::kLength;
  std::string error;
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Appends a chunk to a choice; returns the new text.
std::string absorb(Choice& c, serving::StreamChunk& chunk);

// OpenAI logprobs objects: completions ({tokens, token_logprobs, top_logprobs, text_offset}, offsets counted from
// text_offset; a token without a logprob, the first of an echoed prompt, has null for both; top_logprobs holds
// the k most likely and the token itself, so k + 1 entries when it is not among them, as OpenAI and vLLM) and chat
// ({content: [{token, logprob, bytes, top_logprobs}]}, exactly the k most likely, as OpenAI's chat). Token
// strings are the text each token adds in context.
nlohmann::json completion_logprobs(const std::vector<serving::TokenOutput>& tokens, size_t text_offset);
nlohmann::json chat_logprobs(const std::vector<serving::TokenOutput>& tokens);

// {prompt_tokens, completion_tokens, total_tokens} over every choice of one request: n choices per prompt (they
// share its prompt tokens), prompt after prompt.
nlohmann::json usage_of(const std::vector<Choice>& choices, int n);

// The "choices" array of a finished completion or chat completion (index, text / message, finish_reason,
// logprobs); completions echo their prompt when asked, with its logprobs first when logprobs are asked too.
nlohmann::json openai_choices(const ParsedRequest& p, const std::vector<Choice>& choices);

}  // namespace tessera::server
