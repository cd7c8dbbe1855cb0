#include "loaders/hf_config.h"

#include <algorithm>
#include <climits>
#include <optional>

#include "engine/core/check.h"
#include "loaders/json_util.h"

namespace tessera {
namespace {

using nlohmann::json;

struct Arch {
  const char* hf_name;
  const char* arch;
  bool qkv_bias;
};
constexpr Arch kArchs[] = {
    {"LlamaForCausalLM", "llama", false},
    {"MistralForCausalLM", "mistral", false},
    {"Qwen2ForCausalLM", "qwen2", true},
};

// Field readers: a missing or null field takes the default (or is an error when there is none); a field of the
// wrong type or out of int range is an error.
class Fields {
 public:
  Fields(const json& j, const std::string& path) : j_(j), path_(path) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": " + what); }

  const json* get(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }

  int integer(const char* key, std::optional<int> fallback = std::nullopt) const {
    const json* v = get(key);
    if (v == nullptr) {
      if (!fallback) fail(std::string("missing \"") + key + "\"");
      return *fallback;
    }
    return as_int(*v, key);
  }

  int as_int(const json& v, const std::string& key) const {
    if (!v.is_number_integer()) fail("\"" + key + "\" must be an integer, got " + v.dump());
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(INT_MAX)
                               : (v.get<int64_t>() < INT_MIN || v.get<int64_t>() > INT_MAX))
      fail("\"" + key + "\" = " + v.dump() + " is out of range");
    return static_cast<int>(v.get<int64_t>());
  }

  float number(const json& obj, const char* key, float fallback) const {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_number()) fail(std::string("\"") + key + "\" must be a number, got " + it->dump());
    return it->get<float>();
  }
  float number(const char* key, float fallback) const { return number(j_, key, fallback); }

  bool boolean(const char* key, bool fallback) const {
    const json* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) fail(std::string("\"") + key + "\" must be true or false, got " + v->dump());
    return v->get<bool>();
  }

  // bos/eos ids: an integer or a list of integers (the first is taken, e.g. Llama 3.1's eos list).
  int token_id(const char* key, int fallback) const {
    const json* v = get(key);
    if (v == nullptr) return fallback;
    if (v->is_array()) {
      if (v->empty()) fail(std::string("\"") + key + "\" is an empty list");
      return as_int(v->front(), key);
    }
    return as_int(*v, key);
  }

 private:
  const json& j_;
  const std::string& path_;
};

const Arch& find_arch(const Fields& f) {
  const json* archs = f.get("architectures");
  std::string supported;
  for (const Arch& a : kArchs) supported += std::string(supported.empty() ? "" : ", ") + a.hf_name;
  if (archs == nullptr || !archs->is_array() || archs->empty() || !archs->front().is_string())
    f.fail("no \"architectures\" list (supported: " + supported + ")");
  const std::string name = archs->front().get<std::string>();
  for (const Arch& a : kArchs)
    if (name == a.hf_name) return a;
  f.fail("unsupported architecture '" + name + "' (supported: " + supported + ")");
}

RopeScaling read_rope_scaling(const Fields& f) {
  RopeScaling rs;
  const json* v = f.get("rope_scaling");
  if (v == nullptr) return rs;
  if (!v->is_object()) f.fail("\"rope_scaling\" must be an object or null");
  const auto type_it = v->contains("rope_type") ? v->find("rope_type") : v->find("type");
  const std::string type = type_it != v->end() && type_it->is_string() ? type_it->get<std::string>() : "";
  if (type == "default") return rs;
  if (type != "llama3") f.fail("rope_scaling type '" + type + "' is not supported (supported: llama3)");
  rs.enabled = true;
  rs.factor = f.number(*v, "factor", rs.factor);
  rs.low_freq_factor = f.number(*v, "low_freq_factor", rs.low_freq_factor);
  rs.high_freq_factor = f.number(*v, "high_freq_factor", rs.high_freq_factor);
  const float orig = f.number(*v, "original_max_position_embeddings", static_cast<float>(rs.original_max_position));
  if (!(rs.factor >= 1.0f) || !(rs.low_freq_factor > 0.0f) || !(rs.high_freq_factor > rs.low_freq_factor) ||
      !(orig >= 1.0f && orig <= static_cast<float>(1 << 24)))
    f.fail("rope_scaling " + v->dump() + " has out-of-range values");
  rs.original_max_position = static_cast<int>(orig);
  return rs;
}

}  // namespace

ModelConfig read_hf_config(const std::string& config_path) {
  const json j = read_json_object_file(config_path);
  const Fields f(j, config_path);
  const Arch& arch = find_arch(f);

  ModelConfig c;
  c.arch = arch.arch;
  c.qkv_bias = arch.qkv_bias;
  c.dim = f.integer("hidden_size");
  c.hidden_dim = f.integer("intermediate_size");
  c.n_layers = f.integer("num_hidden_layers");
  c.n_heads = f.integer("num_attention_heads");
  c.n_kv_heads = f.integer("num_key_value_heads", c.n_heads);
  if (!f.get("head_dim") && c.n_heads > 0 && c.dim > 0 && c.dim % c.n_heads != 0)
    f.fail("hidden_size (" + std::to_string(c.dim) + ") is not a multiple of num_attention_heads (" +
           std::to_string(c.n_heads) + ") and no head_dim is given");
  c.head_dim = f.integer("head_dim", c.n_heads > 0 ? c.dim / c.n_heads : 0);
  c.vocab_size = f.integer("vocab_size");
  c.max_seq_len = f.integer("max_position_embeddings", 2048);  // HF's LlamaConfig default
  c.rms_eps = f.number("rms_norm_eps", 1e-6f);                 // HF's default for all three
  c.rope_theta = f.number("rope_theta", 10000.0f);
  // Attention here is full, never windowed: cap the context at the sliding window so results stay exact
  // (Mistral v0.1). Qwen2 configs carry a window but switch it off with use_sliding_window.
  if (f.get("sliding_window") != nullptr && f.boolean("use_sliding_window", true))
    c.max_seq_len = std::min(c.max_seq_len, f.integer("sliding_window"));
  c.rope_style = RopeStyle::kHalfSplit;  // HF stores q/k permuted for rotate_half
  c.rope_scaling = read_rope_scaling(f);
  c.tied_embeddings = f.boolean("tie_word_embeddings", false);
  c.bos_id = f.token_id("bos_token_id", 1);
  c.eos_id = f.token_id("eos_token_id", 2);

  // Llama/Mistral variants we cannot run must not load as if they were plain ones.
  if (f.boolean("attention_bias", false) && !arch.qkv_bias) f.fail("\"attention_bias\": true is not supported");
  if (f.boolean("mlp_bias", false)) f.fail("\"mlp_bias\": true is not supported");
  if (const json* act = f.get("hidden_act"); act != nullptr && *act != "silu")
    f.fail("\"hidden_act\" " + act->dump() + " is not supported (only silu)");
  if (c.bos_id < 0 || c.eos_id < 0) f.fail("bos_token_id/eos_token_id must not be negative");
  c.validate(config_path);
  return c;
}

}  // namespace tessera
