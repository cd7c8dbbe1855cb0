#include "server/openai_response.h"

namespace tessera::server {

namespace {

using nlohmann::json;

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

void append_completion_logprobs(json& out, const std::vector<serving::TokenOutput>& tokens, size_t text_offset) {
  for (const auto& t : tokens) {
    out["tokens"].push_back(t.piece);
    if (t.has_logprob) {
      out["token_logprobs"].push_back(t.logprob);
      // The k most likely and the chosen token (k + 1 entries when it is not among them), as OpenAI and vLLM.
      json top = json::object();
      top[t.piece] = t.logprob;
      for (const auto& alt : t.top) top[alt.piece] = alt.logprob;
      out["top_logprobs"].push_back(top);
    } else {
      out["token_logprobs"].push_back(nullptr);
      out["top_logprobs"].push_back(nullptr);
    }
    out["text_offset"].push_back(text_offset);
    text_offset += t.piece.size();
  }
}

json empty_completion_logprobs() {
  return {{"tokens", json::array()},
          {"token_logprobs", json::array()},
          {"top_logprobs", json::array()},
          {"text_offset", json::array()}};
}

}  // namespace

std::string absorb(Choice& c, serving::StreamChunk& chunk) {
  for (auto& t : chunk.prompt) c.prompt.push_back(std::move(t));
  std::string delta;
  for (auto& t : chunk.tokens) {
    delta += t.text;
    c.tokens.push_back(std::move(t));
  }
  delta += chunk.tail;
  c.text += delta;
  c.prompt_tokens = chunk.prompt_tokens;
  c.completion_tokens = chunk.completion_tokens;
  if (chunk.finished) {
    c.finished = true;
    c.finish = chunk.finish;
    c.error = chunk.error;
  }
  return delta;
}

json completion_logprobs(const std::vector<serving::TokenOutput>& tokens, size_t text_offset) {
  json out = empty_completion_logprobs();
  append_completion_logprobs(out, tokens, text_offset);
  return out;
}

json chat_logprobs(const std::vector<serving::TokenOutput>& tokens) {
  json content = json::array();
  for (const auto& t : tokens) {
    json top = json::array();
    for (const auto& alt : t.top)
      top.push_back({{"token", alt.piece}, {"logprob", alt.logprob}, {"bytes", bytes_of(alt.piece)}});
    content.push_back(
        {{"token", t.piece}, {"logprob", t.logprob}, {"bytes", bytes_of(t.piece)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json usage_of(const std::vector<Choice>& choices, int n) {
  int prompt = 0, completion = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    completion += choices[i].completion_tokens;
    if (i % static_cast<size_t>(n) == 0) prompt += choices[i].prompt_tokens;  // once per prompt, as OpenAI counts
  }
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

json openai_choices(const ParsedRequest& p, const std::vector<Choice>& choices) {
  json out = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    json choice{{"index", i}, {"finish_reason", std::string(serving::finish_reason_name(c.finish))}};
    if (p.kind == ApiKind::kChat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      choice["logprobs"] = p.want_logprobs ? chat_logprobs(c.tokens) : json(nullptr);
    } else {
      const std::string prefix = p.echo ? p.prompt_of(i).text : "";
      choice["text"] = prefix + c.text;
      if (p.want_logprobs) {
        json lp = empty_completion_logprobs();
        if (p.echo) append_completion_logprobs(lp, c.prompt, 0);
        append_completion_logprobs(lp, c.tokens, prefix.size());
        choice["logprobs"] = std::move(lp);
      } else {
        choice["logprobs"] = nullptr;
      }
    }
    out.push_back(choice);
  }
  return out;
}

}  // namespace tessera::server
