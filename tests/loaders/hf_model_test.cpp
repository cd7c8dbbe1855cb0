// Hugging Face directories written here as fixtures (config.json + safetensors, single, sharded with and
// without an index), the config fields, and one test per class of malformed input.
#include <gtest/gtest.h>

#include <cmath>

#include "loaders/model_loader.h"
#include "tests/loaders/safetensors_writer.h"

namespace tessera {
namespace {

using nlohmann::ordered_json;
using test::expect_error;
using test::StTensor;
using test::TempDir;
using test::write_file;

struct Spec {
  std::string arch = "LlamaForCausalLM";
  int hidden = 8, inter = 12, layers = 2, heads = 2, kv_heads = 1, vocab = 10, max_pos = 32;
  bool tied = false;
  std::string dtype = "F32";
  bool qkv_bias() const { return arch == "Qwen2ForCausalLM"; }
};

ordered_json config_json(const Spec& s) {
  return {{"architectures", {s.arch}},
          {"hidden_size", s.hidden},
          {"intermediate_size", s.inter},
          {"num_hidden_layers", s.layers},
          {"num_attention_heads", s.heads},
          {"num_key_value_heads", s.kv_heads},
          {"vocab_size", s.vocab},
          {"max_position_embeddings", s.max_pos},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", s.tied},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"hidden_act", "silu"},
          {"torch_dtype", "float32"}};
}

// A named tensor with its fp32 values (before conversion to the file's dtype).
struct Named {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<Named> model_tensors(const Spec& s) {
  const int64_t d = s.hidden, q = s.hidden, kv = s.kv_heads * (s.hidden / s.heads), h = s.inter, v = s.vocab;
  std::vector<Named> t;
  uint32_t k = 7;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    std::vector<float> vals(static_cast<size_t>(n));
    // Multiples of 1/64 in [-2, 2): exact in f16 and bf16, so conversions can be compared exactly.
    for (float& x : vals) x = static_cast<float>(static_cast<int>((k++ * 2654435761u) % 256u) - 128) / 64.0f;
    t.push_back({name, std::move(shape), std::move(vals)});
  };
  add("model.embed_tokens.weight", {v, d});
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    add(p + "input_layernorm.weight", {d});
    add(p + "self_attn.q_proj.weight", {q, d});
    add(p + "self_attn.k_proj.weight", {kv, d});
    add(p + "self_attn.v_proj.weight", {kv, d});
    if (s.qkv_bias()) {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
    add(p + "self_attn.o_proj.weight", {d, q});
    add(p + "post_attention_layernorm.weight", {d});
    add(p + "mlp.gate_proj.weight", {h, d});
    add(p + "mlp.up_proj.weight", {h, d});
    add(p + "mlp.down_proj.weight", {d, h});
  }
  add("model.norm.weight", {d});
  if (!s.tied) add("lm_head.weight", {v, d});
  return t;
}

std::vector<StTensor> to_st(const std::vector<Named>& named, const std::string& dtype) {
  std::vector<StTensor> out;
  for (const Named& n : named) out.push_back({n.name, dtype, n.shape, test::encode_floats(n.values, dtype)});
  return out;
}

// Writes config.json and model.safetensors (8-byte aligned data unless `pad` says otherwise).
void write_model(const TempDir& dir, const Spec& s, const std::vector<Named>& tensors, size_t pad = 0) {
  write_file(dir.file("config.json"), config_json(s).dump(2));
  std::vector<StTensor> st = to_st(tensors, s.dtype);
  const size_t header = test::safetensors_header(st).dump().size();
  write_file(dir.file("model.safetensors"), test::safetensors_bytes(st, (8 - (8 + header) % 8) % 8 + pad));
}

const Named& find(const std::vector<Named>& t, const std::string& name) {
  for (const Named& n : t)
    if (n.name == name) return n;
  throw std::runtime_error("no fixture tensor " + name);
}

void expect_matrix(const Matrix& m, const Named& n, DType dtype) {
  ASSERT_EQ(m.rows, n.shape[0]) << n.name;
  ASSERT_EQ(m.cols, n.shape[1]) << n.name;
  EXPECT_EQ(m.dtype, dtype) << n.name;
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t c = 0; c < m.cols; ++c)
      ASSERT_EQ(load_as_f32(m.row(r), m.dtype, static_cast<size_t>(c)), n.values[static_cast<size_t>(r * m.cols + c)])
          << n.name << " [" << r << "][" << c << "]";
}

void expect_model_matches(const ModelData& m, const Spec& s, const std::vector<Named>& t, DType dtype) {
  const auto& w = m.weights;
  expect_matrix(w.tok_embeddings, find(t, "model.embed_tokens.weight"), dtype);
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(s.layers));
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const LayerWeights& l = w.layers[static_cast<size_t>(i)];
    EXPECT_EQ(l.attn_norm, find(t, p + "input_layernorm.weight").values);
    EXPECT_EQ(l.ffn_norm, find(t, p + "post_attention_layernorm.weight").values);
    expect_matrix(l.wq, find(t, p + "self_attn.q_proj.weight"), dtype);
    expect_matrix(l.wk, find(t, p + "self_attn.k_proj.weight"), dtype);
    expect_matrix(l.wv, find(t, p + "self_attn.v_proj.weight"), dtype);
    expect_matrix(l.wo, find(t, p + "self_attn.o_proj.weight"), dtype);
    expect_matrix(l.w_gate, find(t, p + "mlp.gate_proj.weight"), dtype);
    expect_matrix(l.w_up, find(t, p + "mlp.up_proj.weight"), dtype);
    expect_matrix(l.w_down, find(t, p + "mlp.down_proj.weight"), dtype);
    if (s.qkv_bias()) {
      EXPECT_EQ(l.bq, find(t, p + "self_attn.q_proj.bias").values);
      EXPECT_EQ(l.bk, find(t, p + "self_attn.k_proj.bias").values);
      EXPECT_EQ(l.bv, find(t, p + "self_attn.v_proj.bias").values);
    } else {
      EXPECT_TRUE(l.bq.empty() && l.bk.empty() && l.bv.empty());
    }
  }
  EXPECT_EQ(w.final_norm, find(t, "model.norm.weight").values);
  if (s.tied) {
    EXPECT_EQ(w.lm_head.data, w.tok_embeddings.data);
  } else {
    expect_matrix(w.lm_head, find(t, "lm_head.weight"), dtype);
  }
}

TEST(LoaderHf, LlamaSingleFileAllDtypesZeroCopy) {
  for (const auto& [name, dtype] : {std::pair{"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}}) {
    SCOPED_TRACE(name);
    TempDir dir;
    Spec s;
    s.dtype = name;
    const auto t = model_tensors(s);
    write_model(dir, s, t);
    const ModelData m = load_model(dir.str());
    const ModelConfig& c = m.config;
    EXPECT_EQ(c.arch, "llama");
    EXPECT_EQ(c.dim, 8);
    EXPECT_EQ(c.hidden_dim, 12);
    EXPECT_EQ(c.n_layers, 2);
    EXPECT_EQ(c.n_heads, 2);
    EXPECT_EQ(c.n_kv_heads, 1);
    EXPECT_EQ(c.head_dim, 4);
    EXPECT_EQ(c.vocab_size, 10);
    EXPECT_EQ(c.max_seq_len, 32);
    EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
    EXPECT_EQ(c.rope_style, RopeStyle::kHalfSplit);
    EXPECT_FALSE(c.tied_embeddings);
    EXPECT_FALSE(c.qkv_bias);
    EXPECT_FALSE(c.rope_scaling.enabled);
    expect_model_matches(m, s, t, dtype);
    EXPECT_EQ(m.store->allocated_bytes(), 0u) << "aligned tensors must be used in place";
  }
}

TEST(LoaderHf, MisalignedDataIsCopied) {
  TempDir dir;
  Spec s;
  const auto t = model_tensors(s);
  write_model(dir, s, t, 1);  // data block starts at an odd address
  const ModelData m = load_model(dir.str());
  expect_model_matches(m, s, t, DType::F32);
  EXPECT_GT(m.store->allocated_bytes(), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.weights.layers[0].wq.data) % 4, 0u);
}

TEST(LoaderHf, Qwen2TiedWithBiases) {
  TempDir dir;
  Spec s;
  s.arch = "Qwen2ForCausalLM";
  s.tied = true;
  s.dtype = "BF16";
  const auto t = model_tensors(s);
  write_model(dir, s, t);
  const ModelData m = load_model(dir.str());
  EXPECT_EQ(m.config.arch, "qwen2");
  EXPECT_TRUE(m.config.qkv_bias);
  EXPECT_TRUE(m.config.tied_embeddings);
  expect_model_matches(m, s, t, DType::BF16);
}

TEST(LoaderHf, ShardedWithIndexIgnoresUnknownTensors) {
  TempDir dir;
  Spec s;
  s.arch = "MistralForCausalLM";
  auto t = model_tensors(s);
  write_file(dir.file("config.json"), config_json(s).dump());
  t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {2}, {1.0f, 0.5f}});
  std::vector<StTensor> a, b;
  ordered_json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", ordered_json::object()}};
  for (size_t i = 0; i < t.size(); ++i) {
    const std::string shard = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    (i % 2 ? b : a).push_back({t[i].name, "F16", t[i].shape, test::encode_floats(t[i].values, "F16")});
    index["weight_map"][t[i].name] = shard;
  }
  write_file(dir.file("model-00001-of-00002.safetensors"), test::safetensors_bytes(a));
  write_file(dir.file("model-00002-of-00002.safetensors"), test::safetensors_bytes(b));
  write_file(dir.file("model.safetensors.index.json"), index.dump());
  // A stray file that the index does not name must not be read.
  write_file(dir.file("consolidated.safetensors"), "garbage");
  const ModelData m = load_model(dir.str());
  EXPECT_EQ(m.config.arch, "mistral");
  expect_model_matches(m, s, t, DType::F16);
}

TEST(LoaderHf, ShardsWithoutIndex) {
  TempDir dir;
  Spec s;
  const auto t = model_tensors(s);
  write_file(dir.file("config.json"), config_json(s).dump());
  std::vector<StTensor> st = to_st(t, "F32");
  const std::vector<StTensor> first(st.begin(), st.begin() + 5), second(st.begin() + 5, st.end());
  write_file(dir.file("a.safetensors"), test::safetensors_bytes(first));
  write_file(dir.file("b.safetensors"), test::safetensors_bytes(second));
  expect_model_matches(load_model(dir.str()), s, t, DType::F32);
}

ModelConfig load_config(const ordered_json& config) {
  TempDir dir;
  Spec s;
  write_model(dir, s, model_tensors(s));
  write_file(dir.file("config.json"), config.dump());
  return load_model(dir.str()).config;
}

TEST(LoaderHf, ConfigFields) {
  ordered_json j = config_json(Spec{});
  j.erase("num_key_value_heads");
  j["num_attention_heads"] = 2;
  j["eos_token_id"] = {2, 7};
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 16}};
  // Without num_key_value_heads the model has 2 kv heads, which the fixture tensors (1 kv head) do not match.
  TempDir dir;
  Spec s;
  s.kv_heads = 2;
  write_model(dir, s, model_tensors(s));
  write_file(dir.file("config.json"), j.dump());
  const ModelConfig c = load_model(dir.str()).config;
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.eos_id, 2);
  EXPECT_FLOAT_EQ(c.rope_theta, 500000.0f);
  EXPECT_TRUE(c.rope_scaling.enabled);
  EXPECT_FLOAT_EQ(c.rope_scaling.factor, 8.0f);
  EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position, 16);

  ordered_json k = config_json(Spec{});
  k["rope_scaling"] = nullptr;
  k["head_dim"] = 4;
  k["bos_token_id"] = 3;
  k["eos_token_id"] = 4;
  k["sliding_window"] = 16;  // Mistral v0.1 style: context capped at the window
  const ModelConfig d = load_config(k);
  EXPECT_FALSE(d.rope_scaling.enabled);
  EXPECT_EQ(d.head_dim, 4);
  EXPECT_EQ(d.bos_id, 3);
  EXPECT_EQ(d.eos_id, 4);
  EXPECT_EQ(d.max_seq_len, 16);
}

// --- malformed input: one test per class ---

// A valid fixture directory whose model.safetensors is then replaced by the caller.
struct Fixture {
  TempDir dir;
  Spec spec;
  std::vector<Named> tensors = model_tensors(spec);
  std::string st_path = dir.file("model.safetensors");
  Fixture() { write_model(dir, spec, tensors); }
  std::vector<StTensor> st() const { return to_st(tensors, "F32"); }
  void load() const { load_model(dir.str()); }
};

TEST(LoaderHf, RejectsTruncatedSafetensors) {
  Fixture f;
  const std::string good = test::read_file(f.st_path);
  write_file(f.st_path, good.substr(0, good.size() - 3));
  expect_error([&] { f.load(); }, {f.st_path, "run past the end of the data", "truncated"});
  write_file(f.st_path, good.substr(0, 5));
  expect_error([&] { f.load(); }, {f.st_path, "truncated"});
  write_file(f.st_path, "");
  expect_error([&] { f.load(); }, {f.st_path, "truncated"});
}

TEST(LoaderHf, RejectsHeaderSizesThatDisagreeWithFile) {
  Fixture f;
  const std::string header = test::safetensors_header(f.st()).dump();
  std::string data;
  for (const auto& t : f.st()) data += t.data;
  // Header length beyond the file.
  write_file(f.st_path, test::safetensors_raw(header, data, uint64_t{1} << 40));
  expect_error([&] { f.load(); }, {f.st_path, "header length 1099511627776 runs past the end of the file"});
  write_file(f.st_path, test::safetensors_raw(header, data, ~uint64_t{0}));
  expect_error([&] { f.load(); }, {f.st_path, "runs past the end of the file"});
  // data_offsets beyond the data block.
  auto h = test::safetensors_header(f.st());
  h["model.norm.weight"]["data_offsets"] = {data.size() - 16, data.size() + 16};
  write_file(f.st_path, test::safetensors_raw(h.dump(), data));
  expect_error([&] { f.load(); }, {f.st_path, "'model.norm.weight'", "run past the end of the data"});
  // Offsets that do not span shape x dtype size.
  h = test::safetensors_header(f.st());
  h["model.norm.weight"]["data_offsets"][1] = h["model.norm.weight"]["data_offsets"][1].get<uint64_t>() - 4;
  write_file(f.st_path, test::safetensors_raw(h.dump(), data));
  expect_error([&] { f.load(); }, {f.st_path, "'model.norm.weight'", "span 28 bytes", "needs 32"});
  // Begin after end, and a shape whose byte size overflows.
  h = test::safetensors_header(f.st());
  h["model.norm.weight"]["data_offsets"] = {40, 8};
  write_file(f.st_path, test::safetensors_raw(h.dump(), data));
  expect_error([&] { f.load(); }, {f.st_path, "data_offsets [40,8] are invalid"});
  h = test::safetensors_header(f.st());
  h["model.norm.weight"]["shape"] = {uint64_t{1} << 62, 8};
  write_file(f.st_path, test::safetensors_raw(h.dump(), data));
  expect_error([&] { f.load(); }, {f.st_path, "overflows"});
}

TEST(LoaderHf, RejectsUnknownDtype) {
  Fixture f;
  auto st = f.st();
  st[3].dtype = "Q7";
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); }, {f.st_path, "'" + st[3].name + "'", "unknown dtype 'Q7'"});
  // A real safetensors dtype that Tessera cannot use, on a weight it needs.
  st = f.st();
  st[3].dtype = "I32";
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); }, {f.st_path, "'" + st[3].name + "'", "dtype I32, not supported"});
}

TEST(LoaderHf, RejectsMissingTensor) {
  Fixture f;
  auto st = f.st();
  std::erase_if(st, [](const StTensor& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); }, {f.dir.str(), "missing tensor 'model.layers.1.mlp.up_proj.weight'"});
  st = f.st();
  std::erase_if(st, [](const StTensor& t) { return t.name == "lm_head.weight"; });
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); }, {f.dir.str(), "missing tensor 'lm_head.weight'", "not tied"});
  // Qwen2 needs its biases.
  ordered_json cfg = config_json(f.spec);
  cfg["architectures"] = {"Qwen2ForCausalLM"};
  write_file(f.dir.file("config.json"), cfg.dump());
  write_file(f.st_path, test::safetensors_bytes(f.st()));
  expect_error([&] { f.load(); }, {f.dir.str(), "missing tensor 'model.layers.0.self_attn.q_proj.bias'"});
}

TEST(LoaderHf, RejectsDuplicateTensor) {
  Fixture f;
  // Twice in one header: nlohmann would keep the last silently.
  const auto st = f.st();
  std::string data;
  for (const auto& t : st) data += t.data;
  std::string header = test::safetensors_header(st).dump();
  header.pop_back();  // reopen the top-level object
  header += R"(,"model.norm.weight":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})";
  write_file(f.st_path, test::safetensors_raw(header, data));
  expect_error([&] { f.load(); }, {f.st_path, "duplicate key \"model.norm.weight\""});

  // The same name in two shards.
  write_file(f.st_path, test::safetensors_bytes(st));
  write_file(f.dir.file("extra.safetensors"), test::safetensors_bytes({st[1]}));
  expect_error([&] { f.load(); }, {"duplicate tensor '" + st[1].name + "'", "extra.safetensors", f.st_path});
}

TEST(LoaderHf, RejectsWrongShape) {
  Fixture f;
  auto st = f.st();
  for (auto& t : st)
    if (t.name == "model.layers.0.self_attn.k_proj.weight") t.shape = {8, 4};  // transposed [4, 8]
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); },
               {f.st_path, "'model.layers.0.self_attn.k_proj.weight' has shape [8, 4], expected [4, 8]"});
  // A layer beyond num_hidden_layers.
  st = f.st();
  st.push_back({"model.layers.5.mlp.up_proj.weight", "F32", {12, 8}, std::string(12 * 8 * 4, '\0')});
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); }, {f.st_path, "is for layer 5", "2 layers"});
  // q/k/v biases on an architecture without them.
  st = f.st();
  st.push_back({"model.layers.0.self_attn.q_proj.bias", "F32", {8}, std::string(32, '\0')});
  write_file(f.st_path, test::safetensors_bytes(st));
  expect_error([&] { f.load(); }, {f.st_path, "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"});
}

TEST(LoaderHf, RejectsAbsurdConfigNumbers) {
  Fixture f;
  const std::string cfg_path = f.dir.file("config.json");
  auto with = [&](const char* key, const ordered_json& value) {
    ordered_json cfg = config_json(f.spec);
    cfg[key] = value;
    write_file(cfg_path, cfg.dump());
  };
  with("hidden_size", 1 << 30);
  expect_error([&] { f.load(); }, {cfg_path, "dim = 1073741824 is out of range"});
  with("num_hidden_layers", -2);
  expect_error([&] { f.load(); }, {cfg_path, "n_layers = -2 is out of range"});
  with("vocab_size", uint64_t{1} << 40);
  expect_error([&] { f.load(); }, {cfg_path, "\"vocab_size\" = 1099511627776 is out of range"});
  with("num_attention_heads", 0);
  expect_error([&] { f.load(); }, {cfg_path, "out of range"});
  with("num_attention_heads", 3);
  expect_error([&] { f.load(); }, {cfg_path, "not a multiple of num_attention_heads"});
  with("intermediate_size", "big");
  expect_error([&] { f.load(); }, {cfg_path, "\"intermediate_size\" must be an integer"});
  with("rms_norm_eps", -1.0);
  expect_error([&] { f.load(); }, {cfg_path, "rms_norm_eps"});
  with("eos_token_id", 99);
  expect_error([&] { f.load(); }, {cfg_path, "bos/eos id outside the vocabulary"});
  ordered_json cfg = config_json(f.spec);
  cfg.erase("hidden_size");
  write_file(cfg_path, cfg.dump());
  expect_error([&] { f.load(); }, {cfg_path, "missing \"hidden_size\""});
}

TEST(LoaderHf, RejectsUnsupportedArchitectureAndRopeScaling) {
  Fixture f;
  const std::string cfg_path = f.dir.file("config.json");
  ordered_json cfg = config_json(f.spec);
  cfg["architectures"] = {"GPT2LMHeadModel"};
  write_file(cfg_path, cfg.dump());
  expect_error([&] { f.load(); }, {cfg_path, "unsupported architecture 'GPT2LMHeadModel'",
                                   "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"});
  cfg.erase("architectures");
  write_file(cfg_path, cfg.dump());
  expect_error([&] { f.load(); }, {cfg_path, "architectures", "LlamaForCausalLM"});
  cfg = config_json(f.spec);
  cfg["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  write_file(cfg_path, cfg.dump());
  expect_error([&] { f.load(); }, {cfg_path, "rope_scaling type 'yarn' is not supported"});
  cfg = config_json(f.spec);
  cfg["hidden_act"] = "gelu";
  write_file(cfg_path, cfg.dump());
  expect_error([&] { f.load(); }, {cfg_path, "hidden_act"});
}

TEST(LoaderHf, RejectsUnreadableJson) {
  {
    Fixture f;
    const std::string cfg_path = f.dir.file("config.json");
    write_file(cfg_path, "{\"hidden_size\": 8,");
    expect_error([&] { f.load(); }, {cfg_path, "unreadable JSON"});
    write_file(cfg_path, "[1, 2]");
    expect_error([&] { f.load(); }, {cfg_path, "unreadable JSON", "object"});
    write_file(cfg_path, R"({"hidden_size": 8, "hidden_size": 16})");
    expect_error([&] { f.load(); }, {cfg_path, "duplicate key \"hidden_size\""});
  }
  {
    Fixture f;
    write_file(f.st_path, test::safetensors_raw("{\"a\": {\"dtype\": ", ""));
    expect_error([&] { f.load(); }, {f.st_path, "safetensors header", "unreadable JSON"});
    write_file(f.st_path, test::safetensors_raw("[]", ""));
    expect_error([&] { f.load(); }, {f.st_path, "not a JSON object"});
    write_file(f.st_path, test::safetensors_raw(R"({"x": {"dtype": "F32", "shape": [1]}})", "abcd"));
    expect_error([&] { f.load(); }, {f.st_path, "'x'", "data_offsets"});
  }
  {
    Fixture f;
    const std::string index_path = f.dir.file("model.safetensors.index.json");
    write_file(index_path, "{\"weight_map\": {");
    expect_error([&] { f.load(); }, {index_path, "unreadable JSON"});
    write_file(index_path, R"({"metadata": {}})");
    expect_error([&] { f.load(); }, {index_path, "weight_map"});
    write_file(index_path, R"({"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}})");
    expect_error([&] { f.load(); }, {index_path, "not a file in the directory"});
    write_file(index_path, R"({"weight_map": {"model.norm.weight": "model-2.safetensors"}})");
    expect_error([&] { f.load(); }, {f.dir.file("model-2.safetensors"), "cannot open"});
    write_file(index_path, R"({"weight_map": {"model.nope": "model.safetensors"}})");
    expect_error([&] { f.load(); }, {index_path, "'model.nope'", "does not contain it"});
  }
}

TEST(LoaderHf, RejectsDirectoryWithoutWeights) {
  TempDir dir;
  write_file(dir.file("config.json"), config_json(Spec{}).dump());
  expect_error([&] { load_model(dir.str()); }, {dir.str(), "no *.safetensors files"});
}

}  // namespace
}  // namespace tessera
