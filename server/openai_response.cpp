#include "server/openai_response.h"

namespace tessera::server {

namespace {

using nlohmann::json;

// A token's text as it reads after other text, as OpenAI reports it (" the", not "the"): decode drops the leading
// space of the first piece only, so the token is decoded after an anchor token and the anchor's text cut off.
std::string piece(const Tokenizer& tok, int id) {
  const std::vector<int> anchor = tok.encode("a", /*add_bos=*/false);
  if (anchor.empty()) return tok.decode({id});
  const std::string before = tok.decode({anchor.back()});
  std::string both = tok.decode({anchor.back(), id});
  if (both.compare(0, before.size(), before) != 0) return tok.decode({id});
  return both.substr(before.size());
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

std::string absorb(Choice& c, serving::StreamChunk& chunk) {
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

json completion_logprobs(const Tokenizer& tok, const std::vector<serving::TokenOutput>& tokens, size_t text_offset) {
  json out{{"tokens", json::array()},
           {"token_logprobs", json::array()},
           {"top_logprobs", json::array()},
           {"text_offset", json::array()}};
  for (const auto& t : tokens) {
    const std::string s = piece(tok, t.token);
    out["tokens"].push_back(s);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const auto& alt : t.top) top[piece(tok, alt.token)] = alt.logprob;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(text_offset);
    text_offset += s.size();
  }
  return out;
}

json chat_logprobs(const Tokenizer& tok, const std::vector<serving::TokenOutput>& tokens) {
  json content = json::array();
  for (const auto& t : tokens) {
    const std::string s = piece(tok, t.token);
    json top = json::array();
    for (const auto& alt : t.top) {
      const std::string a = piece(tok, alt.token);
      top.push_back({{"token", a}, {"logprob", alt.logprob}, {"bytes", bytes_of(a)}});
    }
    content.push_back({{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json usage_of(const std::vector<Choice>& choices) {
  int completion = 0;
  for (const Choice& c : choices) completion += c.completion_tokens;
  const int prompt = choices.empty() ? 0 : choices[0].prompt_tokens;
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

json openai_choices(const ParsedRequest& p, const std::vector<Choice>& choices, const Tokenizer& tokenizer) {
  const std::string prefix = p.echo ? p.prompt_text : "";
  json out = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const Choice& c = choices[i];
    json choice{{"index", i}, {"finish_reason", std::string(serving::finish_reason_name(c.finish))}};
    if (p.kind == ApiKind::kChat) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      choice["logprobs"] = p.want_logprobs ? chat_logprobs(tokenizer, c.tokens) : json(nullptr);
    } else {
      choice["text"] = prefix + c.text;
      choice["logprobs"] = p.want_logprobs ? completion_logprobs(tokenizer, c.tokens, prefix.size()) : json(nullptr);
    }
    out.push_back(choice);
  }
  return out;
}

}  // namespace tessera::server
