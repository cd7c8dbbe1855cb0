#include "server/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/core/check.h"

namespace tessera::server {

namespace {

// The templates as published in the models' tokenizer_config.json (Llama-2-chat, Llama-3-Instruct, Qwen2
// ChatML, Mistral-Instruct v0.1), so a built-in renders exactly what the model's own file would.
const char* kLlama2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
    "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const char* kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' "
    "%}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const char* kChatml =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|im_start|>assistant\n' }}{% endif %}";

const char* kMistral =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}";

const char* kRaw =
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% if not loop.last %}{{ '\n' }}{% endif "
    "%}{% endfor %}";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read the chat template");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// bos_token / eos_token in tokenizer_config.json: a string or {"content": "..."}.
std::string special_token(const nlohmann::json& config, const char* key, const char* fallback) {
  if (!config.contains(key)) return fallback;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return fallback;
}

ChatTemplate from_tokenizer_config(const std::string& path) {
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!config.contains("chat_template")) throw Error(path + ": has no chat_template");
  std::string source;
  const auto& t = config["chat_template"];
  if (t.is_string()) {
    source = t.get<std::string>();
  } else if (t.is_array()) {  // [{"name": "default", "template": "..."}, ...]
    for (const auto& entry : t)
      if (entry.value("name", "") == "default") source = entry.value("template", "");
  }
  if (source.empty()) throw Error(path + ": chat_template is neither a string nor a list with a 'default' entry");
  return ChatTemplate(path, source, special_token(config, "bos_token", "<s>"),
                      special_token(config, "eos_token", "</s>"));
}

}  // namespace

ChatTemplate::ChatTemplate(std::string name, const std::string& source, std::string bos_token, std::string eos_token)
    : name_(std::move(name)), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {
  try {
    template_ = std::make_shared<const jinja::Template>(source);
  } catch (const jinja::TemplateError& e) {
    throw Error("chat template " + name_ + ": " + e.what());
  }
}

std::vector<std::string> ChatTemplate::builtin_names() {
  return {"llama2", "llama3", "chatml", "mistral", "raw"};
}

ChatTemplate ChatTemplate::resolve(const std::string& choice, const std::string& model_path) {
  namespace fs = std::filesystem;
  if (choice == "llama2") return ChatTemplate("llama2", kLlama2, "<s>", "</s>");
  if (choice == "llama3") return ChatTemplate("llama3", kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  if (choice == "chatml") return ChatTemplate("chatml", kChatml, "", "<|im_end|>");
  if (choice == "mistral") return ChatTemplate("mistral", kMistral, "<s>", "</s>");
  if (choice == "raw") return ChatTemplate("raw", kRaw, "<s>", "</s>");
  if (!choice.empty()) {
    if (!fs::exists(choice))
      throw Error("--chat-template: '" + choice +
                  "' is neither a built-in (llama2, llama3, chatml, mistral, raw) nor an existing file");
    if (choice.ends_with(".json")) return from_tokenizer_config(choice);
    return ChatTemplate(choice, read_file(choice), "<s>", "</s>");
  }
  if (!model_path.empty()) {
    const fs::path p(model_path);
    const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
    const fs::path config = dir / "tokenizer_config.json";
    if (fs::exists(config)) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_file(config.string()));
      } catch (const nlohmann::json::exception&) {
      }
      if (j.is_object() && j.contains("chat_template")) return from_tokenizer_config(config.string());
    }
  }
  return ChatTemplate("raw", kRaw, "<s>", "</s>");
}

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt) const {
  jinja::Dict vars{{"messages", jinja::Value::from_json(messages)},
                   {"add_generation_prompt", jinja::Value(add_generation_prompt)},
                   {"bos_token", jinja::Value(bos_)},
                   {"eos_token", jinja::Value(eos_)}};
  try {
    return template_->render(vars);
  } catch (const jinja::TemplateError& e) {
    throw Error(std::string("chat template: ") + e.what());
  }
}

std::vector<int> ChatTemplate::encode(const Tokenizer& tokenizer, const std::string& text) const {
  std::vector<int> ids;
  size_t at = 0;
  while (at < text.size()) {
    size_t next = std::string::npos;
    int special = -1;
    size_t special_len = 0;
    for (const auto& [s, id] : {std::pair{bos_, tokenizer.bos_id()}, std::pair{eos_, tokenizer.eos_id()}}) {
      if (s.empty()) continue;
      const size_t f = text.find(s, at);
      if (f < next) {
        next = f;
        special = id;
        special_len = s.size();
      }
    }
    const std::string piece = text.substr(at, next == std::string::npos ? std::string::npos : next - at);
    if (!piece.empty()) {
      const std::vector<int> part = tokenizer.encode(piece, /*add_bos=*/false);
      ids.insert(ids.end(), part.begin(), part.end());
    }
    if (next == std::string::npos) break;
    ids.push_back(special);
    at = next + special_len;
  }
  return ids;
}

}  // namespace tessera::server
