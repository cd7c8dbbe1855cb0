#include "loaders/quantized_checkpoint.h"

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/mapped_file.h"
#include "loaders/json_util.h"
#include "loaders/safetensors_file.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ojson = nlohmann::ordered_json;

constexpr const char* kConfigName = "config.json";
constexpr const char* kWeightsName = "model.safetensors";
constexpr const char* kPaddingPrefix = "__padding.";
constexpr size_t kAlign = 64;

constexpr const char* kProjNames[] = {"wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"};

std::string layer_name(int l, const char* slot) {
  return "layers." + std::to_string(l) + "." + slot;
}

const char* safetensors_dtype(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    default:
      return "U8";
  }
}

std::optional<DType> dtype_from_name(const std::string& name) {
  for (int i = 0; i < kNumDTypes; ++i) {
    const auto t = static_cast<DType>(i);
    if (dtype_name(t) == name) return t;
  }
  return std::nullopt;
}

const char* rope_style_name(RopeStyle s) {
  return s == RopeStyle::kInterleaved ? "interleaved" : "half_split";
}

// ---- config.json ----

ojson config_to_json(const ModelConfig& c) {
  ojson j;
  j["tessera_format"] = kTesseraFormatVersion;
  j["arch"] = c.arch;
  j["dim"] = c.dim;
  j["hidden_dim"] = c.hidden_dim;
  j["n_layers"] = c.n_layers;
  j["n_heads"] = c.n_heads;
  j["n_kv_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_seq_len"] = c.max_seq_len;
  j["rms_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_style"] = rope_style_name(c.rope_style);
  j["rope_scaling"] = {{"enabled", c.rope_scaling.enabled},
                       {"factor", c.rope_scaling.factor},
                       {"low_freq_factor", c.rope_scaling.low_freq_factor},
                       {"high_freq_factor", c.rope_scaling.high_freq_factor},
                       {"original_max_position", c.rope_scaling.original_max_position}};
  j["tied_embeddings"] = c.tied_embeddings;
  j["qkv_bias"] = c.qkv_bias;
  j["bos_id"] = c.bos_id;
  j["eos_id"] = c.eos_id;
  return j;
}

class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& path) : j_(j), path_(path) {}
  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": " + what); }

  const json& field(const json& obj, const char* key) const {
    const auto it = obj.find(key);
    if (it == obj.end()) fail(std::string("missing \"") + key + "\"");
    return *it;
  }
  int integer(const json& obj, const char* key) const {
    const json& v = field(obj, key);
    if (!v.is_number_integer() || v.get<int64_t>() < INT_MIN || v.get<int64_t>() > INT_MAX)
      fail(std::string("\"") + key + "\" must be an integer, got " + v.dump());
    return static_cast<int>(v.get<int64_t>());
  }
  float number(const json& obj, const char* key) const {
    const json& v = field(obj, key);
    if (!v.is_number()) fail(std::string("\"") + key + "\" must be a number, got " + v.dump());
    return v.get<float>();
  }
  bool boolean(const json& obj, const char* key) const {
    const json& v = field(obj, key);
    if (!v.is_boolean()) fail(std::string("\"") + key + "\" must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  std::string string(const json& obj, const char* key) const {
    const json& v = field(obj, key);
    if (!v.is_string()) fail(std::string("\"") + key + "\" must be a string, got " + v.dump());
    return v.get<std::string>();
  }

  ModelConfig read() const {
    const json& version = field(j_, "tessera_format");
    if (!version.is_number_integer() || version.get<int64_t>() != kTesseraFormatVersion)
      fail("tessera_format " + version.dump() + " is not supported (this build reads version " +
           std::to_string(kTesseraFormatVersion) + ")");
    ModelConfig c;
    c.arch = string(j_, "arch");
    if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2")
      fail("unknown arch '" + c.arch + "' (llama, mistral, qwen2)");
    c.dim = integer(j_, "dim");
    c.hidden_dim = integer(j_, "hidden_dim");
    c.n_layers = integer(j_, "n_layers");
    c.n_heads = integer(j_, "n_heads");
    c.n_kv_heads = integer(j_, "n_kv_heads");
    c.head_dim = integer(j_, "head_dim");
    c.vocab_size = integer(j_, "vocab_size");
    c.max_seq_len = integer(j_, "max_seq_len");
    c.rms_eps = number(j_, "rms_eps");
    c.rope_theta = number(j_, "rope_theta");
    const std::string style = string(j_, "rope_style");
    if (style == "interleaved") {
      c.rope_style = RopeStyle::kInterleaved;
    } else if (style == "half_split") {
      c.rope_style = RopeStyle::kHalfSplit;
    } else {
      fail("\"rope_style\" must be \"interleaved\" or \"half_split\", got \"" + style + "\"");
    }
    const json& rs = field(j_, "rope_scaling");
    if (!rs.is_object()) fail("\"rope_scaling\" must be an object");
    c.rope_scaling.enabled = boolean(rs, "enabled");
    c.rope_scaling.factor = number(rs, "factor");
    c.rope_scaling.low_freq_factor = number(rs, "low_freq_factor");
    c.rope_scaling.high_freq_factor = number(rs, "high_freq_factor");
    c.rope_scaling.original_max_position = integer(rs, "original_max_position");
    if (c.rope_scaling.enabled && (!(c.rope_scaling.factor >= 1.0f) || !(c.rope_scaling.low_freq_factor > 0.0f) ||
                                   !(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor) ||
                                   c.rope_scaling.original_max_position < 1))
      fail("\"rope_scaling\" has out-of-range values");
    c.tied_embeddings = boolean(j_, "tied_embeddings");
    c.qkv_bias = boolean(j_, "qkv_bias");
    c.bos_id = integer(j_, "bos_id");
    c.eos_id = integer(j_, "eos_id");
    if (c.bos_id < 0 || c.eos_id < 0) fail("bos_id/eos_id must not be negative");
    c.validate(path_);
    return c;
  }

 private:
  const json& j_;
  const std::string& path_;
};

// ---- writing ----

struct OutTensor {
  std::string name;
  std::string dtype;  // safetensors dtype
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;
};

class FileWriter {
 public:
  explicit FileWriter(std::string path) : path_(std::move(path)), f_(std::fopen(path_.c_str(), "wb")) {
    if (!f_) throw Error(path_ + ": cannot create: " + std::strerror(errno));
  }
  ~FileWriter() {
    if (f_) std::fclose(f_);
  }
  void write(const void* data, size_t n) {
    if (n > 0 && std::fwrite(data, 1, n, f_) != n) throw Error(path_ + ": write failed: " + std::strerror(errno));
  }
  void zeros(size_t n) {
    static const char kZeros[kAlign] = {};
    while (n > 0) {
      const size_t k = std::min(n, sizeof kZeros);
      write(kZeros, k);
      n -= k;
    }
  }
  void close() {
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) throw Error(path_ + ": write failed: " + std::strerror(errno));
  }

 private:
  std::string path_;
  std::FILE* f_;
};

void write_text_file(const std::string& path, const std::string& text) {
  FileWriter w(path);
  w.write(text.data(), text.size());
  w.close();
}

void rename_into_place(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) throw Error(to + ": cannot move the written file into place: " + ec.message());
}

// ---- reading ----

nlohmann::json read_metadata(const MappedFile& file) {
  // read_safetensors_header has validated the length and the JSON already.
  uint64_t len = 0;
  std::memcpy(&len, file.data(), 8);
  const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, len);
  const json header = parse_json_strict(text, file.path() + " (safetensors header)");
  const auto it = header.find("__metadata__");
  if (it == header.end() || !it->is_object())
    throw Error(file.path() + ": no \"__metadata__\" object (not written by tessera quantize?)");
  for (const auto& [k, v] : it->items())
    if (!v.is_string()) throw Error(file.path() + ": __metadata__ entry '" + k + "' is not a string");
  return *it;
}

class WeightReader {
 public:
  WeightReader(ModelData& model, const MappedFile& file)
      : model_(model), path_(file.path()), tensors_(read_safetensors_header(file)), meta_(read_metadata(file)) {
    for (const SafetensorsTensor& t : tensors_) by_name_.emplace(t.name, &t);
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": " + what); }

  const SafetensorsTensor* find(const std::string& name) {
    const auto it = by_name_.find(name);
    if (it == by_name_.end()) return nullptr;
    used_.insert(name);
    return it->second;
  }
  const SafetensorsTensor& require(const std::string& name) {
    const SafetensorsTensor* t = find(name);
    if (t == nullptr) fail("missing tensor '" + name + "'");
    return *t;
  }

  Matrix matrix(const std::string& name, int64_t rows, int64_t cols) { return matrix_from(require(name), rows, cols); }

  // The row count a tensor's __metadata__ declares, checked to be a positive multiple of `multiple` no larger than
  // `widest`: structured pruning may leave a layer narrower than the config, which holds the widest layer's sizes.
  int64_t layer_width(const std::string& name, int64_t widest, int64_t multiple) {
    const auto m = meta_.find(name);
    int64_t rows = -1;
    if (m != meta_.end()) {
      const json info = json::parse(m->get<std::string>(), nullptr, /*allow_exceptions=*/false);
      if (const auto ro = info.is_object() ? info.find("rows") : info.end();
          ro != info.end() && ro->is_number_integer())
        rows = ro->get<int64_t>();
    }
    if (rows < 0) return widest;  // matrix_from reports what is wrong with the entry
    if (rows < multiple || rows > widest || rows % multiple != 0)
      fail("tensor '" + name + "': " + std::to_string(rows) + " rows, but the config allows a multiple of " +
           std::to_string(multiple) + " up to " + std::to_string(widest));
    return rows;
  }

  Matrix matrix_from(const SafetensorsTensor& t, int64_t rows, int64_t cols) {
    const std::string what = "tensor '" + t.name + "': ";
    const auto m = meta_.find(t.name);
    if (m == meta_.end()) fail(what + "no __metadata__ entry giving its dtype and group");
    json info;
    try {
      info = json::parse(m->get<std::string>());
    } catch (const json::exception&) {
      fail(what + "__metadata__ entry is not JSON: " + m->get<std::string>());
    }
    if (!info.is_object()) fail(what + "__metadata__ entry is not a JSON object");
    const auto dt = info.find("dtype"), gr = info.find("group"), ro = info.find("rows"), co = info.find("cols");
    if (dt == info.end() || !dt->is_string()) fail(what + "__metadata__ entry has no \"dtype\" string");
    if (gr == info.end() || !gr->is_number_integer()) fail(what + "__metadata__ entry has no integer \"group\"");
    if (ro == info.end() || !ro->is_number_integer() || co == info.end() || !co->is_number_integer())
      fail(what + "__metadata__ entry has no integer \"rows\"/\"cols\"");
    const std::optional<DType> dtype = dtype_from_name(dt->get<std::string>());
    if (!dtype)
      fail(what + "unknown dtype '" + dt->get<std::string>() + "' (f32, f16, bf16, int8, int4, int4-asym, nf4)");
    const int64_t group = gr->get<int64_t>();
    if (is_grouped(*dtype) ? (group != 32 && group != 64 && group != 128) : group != 0)
      fail(what + "group " + std::to_string(group) + " is invalid for " + std::string(dtype_name(*dtype)) +
           (is_grouped(*dtype) ? " (32, 64 or 128)" : " (must be 0)"));
    if (ro->get<int64_t>() != rows || co->get<int64_t>() != cols)
      fail(what + "is [" + std::to_string(ro->get<int64_t>()) + " x " + std::to_string(co->get<int64_t>()) +
           "] but the config needs [" + std::to_string(rows) + " x " + std::to_string(cols) + "]");

    Matrix w;
    w.dtype = *dtype;
    w.rows = rows;
    w.cols = cols;
    w.group = static_cast<int>(group);
    std::vector<int64_t> want_shape;
    std::string want_dtype;
    if (is_quantized(*dtype)) {
      want_shape = {rows, static_cast<int64_t>(w.row_bytes())};
      want_dtype = "U8";
    } else {
      want_shape = {rows, cols};
      want_dtype = safetensors_dtype(*dtype);
    }
    if (t.dtype_name != want_dtype || t.shape != want_shape) {
      std::string have = t.dtype_name + " [";
      for (size_t i = 0; i < t.shape.size(); ++i) have += (i ? ", " : "") + std::to_string(t.shape[i]);
      fail(what + "stored as " + have + "] but " + std::string(dtype_name(*dtype)) +
           (is_grouped(*dtype) ? " g" + std::to_string(group) : "") + " [" + std::to_string(rows) + " x " +
           std::to_string(cols) + "] needs " + want_dtype + " [" + std::to_string(want_shape[0]) + ", " +
           std::to_string(want_shape[1]) + "] (" + std::to_string(w.row_bytes()) + " bytes per row)");
    }
    TESSERA_CHECK(t.bytes == w.bytes());
    // Views need the alignment the kernels read at; tessera quantize writes 64-byte aligned tensors.
    if (reinterpret_cast<uintptr_t>(t.data) % kAlign == 0) {
      w.data = t.data;
    } else {
      uint8_t* copy = model_.store->allocate(w.bytes());
      std::memcpy(copy, t.data, w.bytes());
      w.data = copy;
    }
    return w;
  }

  std::vector<float> vector(const std::string& name, int64_t n) {
    const SafetensorsTensor& t = require(name);
    if (!t.dtype || is_quantized(*t.dtype) || t.shape != std::vector<int64_t>{n})
      fail("tensor '" + name + "' must be F32, F16 or BF16 of shape [" + std::to_string(n) + "], got " + t.dtype_name +
           (t.shape.size() == 1 ? " [" + std::to_string(t.shape[0]) + "]" : " of another rank"));
    const size_t size = dtype_size(*t.dtype);
    std::vector<float> v(static_cast<size_t>(n));
    for (size_t i = 0; i < v.size(); ++i) {
      alignas(4) uint8_t e[4];
      std::memcpy(e, t.data + i * size, size);
      v[i] = load_as_f32(e, *t.dtype, 0);
    }
    return v;
  }

  // Every tensor in the file must have been used (or be padding).
  void check_all_used() const {
    for (const SafetensorsTensor& t : tensors_) {
      if (used_.count(t.name) || t.name.rfind(kPaddingPrefix, 0) == 0) continue;
      fail("unexpected tensor '" + t.name + "' (not part of a model with this config.json)");
    }
  }

 private:
  ModelData& model_;
  std::string path_;
  std::vector<SafetensorsTensor> tensors_;
  json meta_;
  std::unordered_map<std::string, const SafetensorsTensor*> by_name_;
  std::unordered_set<std::string> used_;
};

}  // namespace

bool is_quantized_checkpoint(const std::string& dir) {
  std::error_code ec;
  const fs::path config = fs::path(dir) / kConfigName;
  if (!fs::is_directory(dir, ec) || !fs::is_regular_file(config, ec)) return false;
  std::ifstream in(config, std::ios::binary);
  if (!in) return false;
  const json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("tessera_format");
}

ModelData load_quantized_checkpoint(const std::string& dir) {
  const fs::path d(dir);
  ModelData model;
  model.source = dir;
  const std::string config_path = (d / kConfigName).string();
  const json cj = read_json_object_file(config_path);
  model.config = ConfigReader(cj, config_path).read();
  const ModelConfig& c = model.config;

  const std::string weights_path = (d / kWeightsName).string();
  std::error_code ec;
  if (!fs::is_regular_file(weights_path, ec)) throw Error(weights_path + ": missing (the weights of " + dir + ")");
  const MappedFile& file = model.store->add_file(MappedFile(weights_path));
  WeightReader r(model, file);

  ModelWeights& w = model.weights;
  w.tok_embeddings = r.matrix("tok_embeddings", c.vocab_size, c.dim);
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    lw.attn_norm = r.vector(layer_name(l, "attn_norm"), c.dim);
    lw.ffn_norm = r.vector(layer_name(l, "ffn_norm"), c.dim);
    // Each layer's widths (whole KV groups of query heads, FFN channels) from its tensors; every other tensor of the
    // layer must agree with them.
    const int64_t group = c.n_heads / c.n_kv_heads;
    const int64_t q_dim = r.layer_width(layer_name(l, "wq"), c.q_dim(), group * c.head_dim);
    const int64_t kv_dim = q_dim / group;
    const int64_t hidden = r.layer_width(layer_name(l, "w_gate"), c.hidden_dim, 1);
    lw.wq = r.matrix(layer_name(l, "wq"), q_dim, c.dim);
    lw.wk = r.matrix(layer_name(l, "wk"), kv_dim, c.dim);
    lw.wv = r.matrix(layer_name(l, "wv"), kv_dim, c.dim);
    lw.wo = r.matrix(layer_name(l, "wo"), c.dim, q_dim);
    lw.w_gate = r.matrix(layer_name(l, "w_gate"), hidden, c.dim);
    lw.w_up = r.matrix(layer_name(l, "w_up"), hidden, c.dim);
    lw.w_down = r.matrix(layer_name(l, "w_down"), c.dim, hidden);
    if (c.qkv_bias) {
      lw.bq = r.vector(layer_name(l, "bq"), q_dim);
      lw.bk = r.vector(layer_name(l, "bk"), kv_dim);
      lw.bv = r.vector(layer_name(l, "bv"), kv_dim);
    }
  }
  w.final_norm = r.vector("final_norm", c.dim);
  if (const SafetensorsTensor* head = r.find("lm_head")) {
    w.lm_head = r.matrix_from(*head, c.vocab_size, c.dim);
  } else if (c.tied_embeddings) {
    w.lm_head = w.tok_embeddings;
  } else {
    r.fail("missing tensor 'lm_head' (config.json says the embeddings are not tied)");
  }
  r.check_all_used();
  return model;
}

void save_quantized_checkpoint(const ModelData& model, const std::string& dir, const std::string& tokenizer_path) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const fs::path d(dir);
  std::error_code ec;
  fs::create_directories(d, ec);
  if (ec || !fs::is_directory(d))
    throw Error(dir + ": cannot create the output directory" + (ec ? ": " + ec.message() : std::string()));

  std::vector<OutTensor> tensors;
  ojson metadata;
  metadata["format"] = "tessera";
  metadata["tessera_format"] = std::to_string(kTesseraFormatVersion);
  auto add_matrix = [&](const std::string& name, const Matrix& m) {
    TESSERA_CHECK_MSG(m.data != nullptr, "cannot save an empty matrix " + name);
    OutTensor t{name, safetensors_dtype(m.dtype), {}, m.data, m.bytes()};
    t.shape = is_quantized(m.dtype) ? std::vector<int64_t>{m.rows, static_cast<int64_t>(m.row_bytes())}
                                    : std::vector<int64_t>{m.rows, m.cols};
    ojson info{{"dtype", std::string(dtype_name(m.dtype))},
               {"group", is_grouped(m.dtype) ? m.group : 0},
               {"rows", m.rows},
               {"cols", m.cols}};
    metadata[name] = info.dump();
    tensors.push_back(std::move(t));
  };
  auto add_vector = [&](const std::string& name, const std::vector<float>& v) {
    tensors.push_back({name, "F32", {static_cast<int64_t>(v.size())}, v.data(), v.size() * sizeof(float)});
  };

  add_matrix("tok_embeddings", w.tok_embeddings);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    add_vector(layer_name(l, "attn_norm"), lw.attn_norm);
    const Matrix* mats[] = {&lw.wq, &lw.wk, &lw.wv, &lw.wo, &lw.w_gate, &lw.w_up, &lw.w_down};
    for (size_t p = 0; p < 7; ++p) add_matrix(layer_name(l, kProjNames[p]), *mats[p]);
    if (c.qkv_bias) {
      add_vector(layer_name(l, "bq"), lw.bq);
      add_vector(layer_name(l, "bk"), lw.bk);
      add_vector(layer_name(l, "bv"), lw.bv);
    }
    add_vector(layer_name(l, "ffn_norm"), lw.ffn_norm);
  }
  add_vector("final_norm", w.final_norm);
  const bool shared = w.lm_head.data == w.tok_embeddings.data && w.lm_head.dtype == w.tok_embeddings.dtype &&
                      w.lm_head.group == w.tok_embeddings.group;
  if (!(c.tied_embeddings && shared)) add_matrix("lm_head", w.lm_head);

  // Data layout: every tensor 64-byte aligned; gaps are explicit U8 padding tensors.
  ojson header;
  header["__metadata__"] = metadata;
  std::vector<std::pair<size_t, size_t>> layout;  // (padding before, offset) per tensor
  size_t offset = 0;
  int pad_index = 0;
  for (const OutTensor& t : tensors) {
    const size_t pad = (kAlign - offset % kAlign) % kAlign;
    if (pad > 0) {
      header[kPaddingPrefix + std::to_string(pad_index++)] = {
          {"dtype", "U8"}, {"shape", {pad}}, {"data_offsets", {offset, offset + pad}}};
      offset += pad;
    }
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    layout.emplace_back(pad, offset);
    offset += t.bytes;
  }
  std::string text = header.dump();
  text.append((kAlign - (8 + text.size()) % kAlign) % kAlign, ' ');  // the data block starts 64-byte aligned

  const std::string weights_path = (d / kWeightsName).string(), weights_tmp = weights_path + ".tmp";
  {
    FileWriter f(weights_tmp);
    const uint64_t len = text.size();
    f.write(&len, 8);
    f.write(text.data(), text.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      f.zeros(layout[i].first);
      f.write(tensors[i].data, tensors[i].bytes);
    }
    f.close();
  }
  if (!tokenizer_path.empty()) {
    const fs::path dst = d / "tokenizer.model";
    if (!fs::exists(dst, ec) || !fs::equivalent(tokenizer_path, dst, ec)) {
      const std::string tmp = dst.string() + ".tmp";
      fs::copy_file(tokenizer_path, tmp, fs::copy_options::overwrite_existing, ec);
      if (ec) throw Error(tokenizer_path + ": cannot copy the tokenizer to " + dir + ": " + ec.message());
      rename_into_place(tmp, dst.string());
    }
  }
  rename_into_place(weights_tmp, weights_path);
  const std::string config_path = (d / kConfigName).string();
  write_text_file(config_path + ".tmp", config_to_json(c).dump(2) + "\n");
  rename_into_place(config_path + ".tmp", config_path);
}

}  // namespace tessera
