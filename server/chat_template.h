// Chat templates: turn OpenAI chat messages into the prompt text a model was trained on. The source is the
// model's tokenizer_config.json "chat_template" (Jinja, rendered by server/jinja.h) or a built-in chosen with
// --chat-template: llama2, llama3, chatml (Qwen), mistral, or raw (message contents joined by newlines, for
// base models such as the tiny story models).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/runtime/tokenizer.h"
#include "server/jinja.h"

namespace tessera::server {

class ChatTemplate {
 public:
  // `source` is Jinja; bos/eos are the strings the template's bos_token/eos_token stand for.
  ChatTemplate(std::string name, const std::string& source, std::string bos_token, std::string eos_token);

  // Names of the built-ins.
  static std::vector<std::string> builtin_names();
  // The template for `choice` (a built-in name, a .jinja file or a tokenizer_config.json), or, when empty, the
  // model's own (tokenizer_config.json in the model directory or beside the model file), else raw.
  // Throws tessera::Error for an unknown name, an unreadable file or a template this interpreter cannot parse.
  static ChatTemplate resolve(const std::string& choice, const std::string& model_path);

  // Renders messages ([{role, content}], content already plain text). Throws tessera::Error for messages the
  // template refuses (raise_exception) or cannot render.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt) const;

  // Tokenizes rendered text: the bos/eos strings become the tokenizer's BOS/EOS ids (SentencePiece would spell
  // them out), everything between is encoded as text.
  std::vector<int> encode(const Tokenizer& tokenizer, const std::string& text) const;

  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::shared_ptr<const jinja::Template> template_;
  std::string bos_, eos_;
};

}  // namespace tessera::server
