// tessera quantize's directory format: the save -> load round trip is bit-identical (weights and logits), the files
// are valid safetensors with aligned tensors, and malformed directories are refused with clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "engine/backend/cpu/cpu_backend.h"
#include "loaders/model_loader.h"
#include "loaders/quantized_checkpoint.h"
#include "quant/awq.h"
#include "quant/prune.h"
#include "tests/compress/compress_test_util.h"
#include "tests/loaders/test_util.h"

namespace tessera {
namespace {

using nlohmann::json;
using quant::CompressOptions;
using quant::QuantRule;
using quant::QuantSpec;
using test::compress_config;
using test::expect_error;

std::vector<float> cpu_logits(const ModelData& m, const std::vector<int>& tokens) {
  CpuBackend be(2);
  LlamaModel model(m, be, 64);
  KvCache cache = model.make_cache(static_cast<int>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kAll, logits.data());
  return logits;
}

void expect_same_model(const ModelData& a, const ModelData& b) {
  const ModelConfig &x = a.config, &y = b.config;
  EXPECT_EQ(x.arch, y.arch);
  EXPECT_EQ(x.dim, y.dim);
  EXPECT_EQ(x.hidden_dim, y.hidden_dim);
  EXPECT_EQ(x.n_layers, y.n_layers);
  EXPECT_EQ(x.n_heads, y.n_heads);
  EXPECT_EQ(x.n_kv_heads, y.n_kv_heads);
  EXPECT_EQ(x.head_dim, y.head_dim);
  EXPECT_EQ(x.vocab_size, y.vocab_size);
  EXPECT_EQ(x.max_seq_len, y.max_seq_len);
  EXPECT_EQ(x.rms_eps, y.rms_eps);
  EXPECT_EQ(x.rope_theta, y.rope_theta);
  EXPECT_EQ(x.rope_style, y.rope_style);
  EXPECT_EQ(x.rope_scaling.enabled, y.rope_scaling.enabled);
  EXPECT_EQ(x.rope_scaling.factor, y.rope_scaling.factor);
  EXPECT_EQ(x.rope_scaling.low_freq_factor, y.rope_scaling.low_freq_factor);
  EXPECT_EQ(x.rope_scaling.high_freq_factor, y.rope_scaling.high_freq_factor);
  EXPECT_EQ(x.rope_scaling.original_max_position, y.rope_scaling.original_max_position);
  EXPECT_EQ(x.tied_embeddings, y.tied_embeddings);
  EXPECT_EQ(x.qkv_bias, y.qkv_bias);
  EXPECT_EQ(x.bos_id, y.bos_id);
  EXPECT_EQ(x.eos_id, y.eos_id);
  const auto ma = test::matrices_of(a), mb = test::matrices_of(b);
  for (size_t i = 0; i < ma.size(); ++i) EXPECT_TRUE(test::same_bytes(*ma[i], *mb[i])) << "matrix " << i;
  EXPECT_EQ(a.weights.lm_head.data == a.weights.tok_embeddings.data,
            b.weights.lm_head.data == b.weights.tok_embeddings.data);
  for (size_t l = 0; l < a.weights.layers.size(); ++l) {
    const auto &p = a.weights.layers[l], &q = b.weights.layers[l];
    EXPECT_EQ(p.attn_norm, q.attn_norm);
    EXPECT_EQ(p.ffn_norm, q.ffn_norm);
    EXPECT_EQ(p.bq, q.bq);
    EXPECT_EQ(p.bk, q.bk);
    EXPECT_EQ(p.bv, q.bv);
  }
  EXPECT_EQ(a.weights.final_norm, b.weights.final_norm);
}

struct RoundTripCase {
  const char* name;
  bool tied, bias;
  const char* default_spec;
  std::vector<const char*> rules;
  bool awq;
};

class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTrip, IsBitIdenticalWithIdenticalLogits) {
  const RoundTripCase& rc = GetParam();
  ModelConfig cfg = compress_config(rc.tied, rc.bias);
  cfg.rope_style = RopeStyle::kInterleaved;
  cfg.rms_eps = 1.3e-6f;
  cfg.rope_theta = 12345.678f;
  cfg.rope_scaling = {true, 8.0f, 1.0f, 4.0f, 32};
  ModelData m = testing::tiny_model(cfg, DType::BF16, 17);
  CompressOptions o;
  o.default_spec = QuantSpec::parse(rc.default_spec);
  for (const char* r : rc.rules) o.rules.push_back(QuantRule::parse(r));
  o.activation_aware = rc.awq;
  if (rc.awq) o.calibration_tokens = test::some_tokens(60, cfg.vocab_size);
  quant::compress_model(m, o);

  test::TempDir dir;
  const std::string out = dir.file("q");
  save_quantized_checkpoint(m, out);
  EXPECT_TRUE(is_quantized_checkpoint(out));
  const ModelData loaded = load_model(out);  // through the format detection
  EXPECT_EQ(loaded.source, out);
  expect_same_model(m, loaded);
  // Zero-copy: the matrices are views into the mapping, 64-byte aligned.
  for (const Matrix* w : test::matrices_of(loaded)) EXPECT_EQ(reinterpret_cast<uintptr_t>(w->data) % 64, 0u);
  EXPECT_EQ(loaded.store->allocated_bytes(), 0u);

  const std::vector<int> tokens = test::some_tokens(20, cfg.vocab_size);
  EXPECT_EQ(test::logits_of(m, tokens), test::logits_of(loaded, tokens));
  EXPECT_EQ(cpu_logits(m, tokens), cpu_logits(loaded, tokens));

  // Saving the loaded model again gives the same bytes.
  save_quantized_checkpoint(loaded, dir.file("again"));
  EXPECT_EQ(test::read_file(out + "/model.safetensors"), test::read_file(dir.file("again/model.safetensors")));
  EXPECT_EQ(test::read_file(out + "/config.json"), test::read_file(dir.file("again/config.json")));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RoundTrip,
    ::testing::Values(RoundTripCase{"int4_g32", false, false, "int4:g32", {}, false},
                      RoundTripCase{"mixed",
                                    false,
                                    true,
                                    "int4:g128",
                                    {"lm_head=int8", "layers.0.*=nf4:g64", "layers.1.w_down=int4:g64:asym",
                                     "layers.1.wq=f16", "tok_embeddings=bf16"},
                                    false},
                      RoundTripCase{"kept_bf16", false, false, "keep", {}, false},
                      RoundTripCase{"tied_shared", true, false, "int8", {}, false},
                      RoundTripCase{"tied_split", true, false, "int4:g32", {"lm_head=int8"}, false},
                      RoundTripCase{"awq", false, true, "int4:g32", {}, true}),
    [](const auto& info) { return std::string(info.param.name); });

// Structured pruning with per-layer rules leaves layers of different widths (config: the widest); int8 with
// activation-aware scales on top, saved and loaded: each layer keeps its own widths, bit for bit.
TEST(QuantizedCheckpoint, LayersOfDifferentWidthsRoundTrip) {
  const ModelConfig cfg = test::gqa_compress_config();
  ModelData m = testing::tiny_model(cfg, DType::BF16, 19);
  CompressOptions o;
  o.default_spec = QuantSpec::parse("int4:g32");
  o.prune.rules = {quant::PruneRule::parse("layers.0.ffn=structured:0.5"),
                   quant::PruneRule::parse("layers.1.attn=structured:0.5")};
  o.activation_aware = true;
  o.calibration_tokens = test::some_tokens(60, cfg.vocab_size);
  quant::compress_model(m, o);
  ASSERT_EQ(m.weights.layers[0].w_gate.rows, 100);
  ASSERT_EQ(m.weights.layers[1].w_gate.rows, 200);
  ASSERT_EQ(m.weights.layers[0].wk.rows, 48);
  ASSERT_EQ(m.weights.layers[1].wk.rows, 24);
  EXPECT_EQ(m.config.hidden_dim, 200);
  EXPECT_EQ(m.config.n_kv_heads, 4);

  test::TempDir dir;
  save_quantized_checkpoint(m, dir.file("q"));
  const ModelData loaded = load_model(dir.file("q"));
  expect_same_model(m, loaded);
  const std::vector<int> tokens = test::some_tokens(20, cfg.vocab_size);
  EXPECT_EQ(cpu_logits(m, tokens), cpu_logits(loaded, tokens));
}

TEST(QuantizedCheckpoint, IsValidSafetensorsWithoutHoles) {
  ModelData m = testing::tiny_model(compress_config(true), DType::F32, 2);
  CompressOptions o;
  o.default_spec = QuantSpec::parse("int4:g32");
  quant::compress_model(m, o);
  test::TempDir dir;
  save_quantized_checkpoint(m, dir.str());
  const std::string bytes = test::read_file(dir.file("model.safetensors"));
  const auto len = test::read_pod<uint64_t>(bytes, 0);
  EXPECT_EQ((8 + len) % 64, 0u);
  const json h = json::parse(bytes.substr(8, len));
  EXPECT_EQ(h["__metadata__"]["format"], "tessera");
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (const auto& [name, t] : h.items()) {
    if (name == "__metadata__") continue;
    spans.emplace_back(t["data_offsets"][0].get<uint64_t>(), t["data_offsets"][1].get<uint64_t>());
    if (name.starts_with("__padding.")) continue;
    EXPECT_EQ(spans.back().first % 64, 0u) << name;
  }
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (const auto& [b, e] : spans) {
    EXPECT_EQ(b, at);  // the reference safetensors reader refuses gaps
    at = e;
  }
  EXPECT_EQ(at, bytes.size() - 8 - len);
  EXPECT_FALSE(h.contains("lm_head"));  // tied and shared: stored once
  const json info = json::parse(h["__metadata__"]["layers.0.wq"].get<std::string>());
  EXPECT_EQ(info["dtype"], "int4");
  EXPECT_EQ(info["group"], 32);
  EXPECT_EQ(h["layers.0.wq"]["dtype"], "U8");
  EXPECT_EQ(h["layers.0.wq"]["shape"], json::array({96, 3 * 18}));
}

TEST(QuantizedCheckpoint, CopiesTheTokenizer) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32, 2);
  test::TempDir dir;
  test::write_file(dir.file("tok.model"), "not really a tokenizer");
  save_quantized_checkpoint(m, dir.file("out"), dir.file("tok.model"));
  EXPECT_EQ(test::read_file(dir.file("out/tokenizer.model")), "not really a tokenizer");
  expect_error([&] { save_quantized_checkpoint(m, dir.file("out2"), dir.file("missing.model")); },
               {"missing.model", "tokenizer"});
}

TEST(QuantizedCheckpoint, DetectionIsCheapAndQuiet) {
  test::TempDir dir;
  EXPECT_FALSE(is_quantized_checkpoint(dir.str()));
  EXPECT_FALSE(is_quantized_checkpoint(dir.file("nothing")));
  test::write_file(dir.file("config.json"), "{not json");
  EXPECT_FALSE(is_quantized_checkpoint(dir.str()));
  test::write_file(dir.file("config.json"), R"({"architectures": ["LlamaForCausalLM"]})");
  EXPECT_FALSE(is_quantized_checkpoint(dir.str()));
}

// ---- malformed directories ----

class Malformed : public ::testing::Test {
 protected:
  void SetUp() override {
    ModelData m = testing::tiny_model(compress_config(), DType::F32, 2);
    CompressOptions o;
    o.default_spec = QuantSpec::parse("int4:g32");
    o.rules = {QuantRule::parse("lm_head=int8")};
    quant::compress_model(m, o);
    save_quantized_checkpoint(m, dir_.str());
    weights_ = dir_.file("model.safetensors");
    config_ = dir_.file("config.json");
    original_ = test::read_file(weights_);
  }

  // Rewrites the safetensors header (the data block stays as it is).
  void edit_header(const std::function<void(json&)>& edit) {
    const auto len = test::read_pod<uint64_t>(original_, 0);
    json h = json::parse(original_.substr(8, len));
    edit(h);
    const std::string text = h.dump();
    std::string out;
    test::append_pod(out, static_cast<uint64_t>(text.size()));
    test::write_file(weights_, out + text + original_.substr(8 + len));
  }
  void edit_meta(const std::string& name, const std::function<void(json&)>& edit) {
    edit_header([&](json& h) {
      json info = json::parse(h["__metadata__"][name].get<std::string>());
      edit(info);
      h["__metadata__"][name] = info.dump();
    });
  }
  void edit_config(const std::function<void(json&)>& edit) {
    json c = json::parse(test::read_file(config_));
    edit(c);
    test::write_file(config_, c.dump());
  }
  void expect_refused(const std::vector<std::string>& needles) {
    expect_error([&] { load_model(dir_.str()); }, needles);
  }

  test::TempDir dir_;
  std::string weights_, config_, original_;
};

TEST_F(Malformed, UnsupportedFormatVersion) {
  edit_config([](json& c) { c["tessera_format"] = 2; });
  expect_refused({"config.json", "tessera_format 2 is not supported"});
}

TEST_F(Malformed, ConfigFieldMissingOrWrong) {
  edit_config([](json& c) { c.erase("dim"); });
  expect_refused({"config.json", "missing \"dim\""});
  edit_config([](json& c) { c["dim"] = "96"; });
  expect_refused({"config.json", "\"dim\" must be an integer"});
  edit_config([](json& c) {
    c["dim"] = 96;
    c["rope_style"] = "sideways";
  });
  expect_refused({"config.json", "rope_style"});
  edit_config([](json& c) {
    c["rope_style"] = "half_split";
    c["n_kv_heads"] = 3;
  });
  expect_refused({"config.json", "n_kv_heads"});
}

TEST_F(Malformed, WeightsFileMissingOrTruncated) {
  std::filesystem::remove(weights_);
  expect_refused({"model.safetensors", "missing"});
  test::write_file(weights_, original_.substr(0, original_.size() / 2));
  expect_refused({"model.safetensors", "truncated"});
}

TEST_F(Malformed, UnknownDtype) {
  edit_meta("layers.0.wq", [](json& i) { i["dtype"] = "int3"; });
  expect_refused({"model.safetensors", "layers.0.wq", "unknown dtype 'int3'"});
}

TEST_F(Malformed, BadGroup) {
  edit_meta("layers.1.w_up", [](json& i) { i["group"] = 48; });
  expect_refused({"layers.1.w_up", "group 48"});
  edit_meta("lm_head", [](json& i) { i["group"] = 32; });
  expect_refused({"lm_head", "group 32", "int8"});
}

TEST_F(Malformed, SizeDoesNotMatchDtype) {
  // Claims g64 while the rows hold g32 blocks: the row size is wrong for the dtype.
  edit_meta("layers.0.wk", [](json& i) { i["group"] = 64; });
  expect_refused({"layers.0.wk", "bytes per row"});
  edit_meta("layers.0.wk", [](json& i) {
    i["dtype"] = "nf4";
    i["group"] = 64;
  });
  expect_refused({"layers.0.wk", "needs U8"});
  edit_meta("layers.0.wk", [](json& i) {
    i["dtype"] = "f32";
    i["group"] = 0;
  });
  expect_refused({"layers.0.wk", "needs F32"});
}

TEST_F(Malformed, ShapeDoesNotMatchConfig) {
  edit_meta("layers.0.wo", [](json& i) { i["rows"] = 95; });
  expect_refused({"layers.0.wo", "config needs"});
}

TEST_F(Malformed, MissingTensorOrMetadata) {
  edit_header([](json& h) { h.erase("layers.1.w_down"); });
  expect_refused({"missing tensor 'layers.1.w_down'"});
  edit_header([](json& h) { h.erase("lm_head"); });
  expect_refused({"missing tensor 'lm_head'", "not tied"});
  edit_header([](json& h) { h.erase("layers.0.ffn_norm"); });
  expect_refused({"missing tensor 'layers.0.ffn_norm'"});
  edit_header([](json& h) { h["__metadata__"].erase("layers.0.wv"); });
  expect_refused({"layers.0.wv", "no __metadata__ entry"});
  edit_header([](json& h) { h["__metadata__"]["layers.0.wv"] = "{oops"; });
  expect_refused({"layers.0.wv", "not JSON"});
  edit_header([](json& h) { h.erase("__metadata__"); });
  expect_refused({"__metadata__"});
}

TEST_F(Malformed, UnexpectedTensor) {
  edit_header([](json& h) { h["layers.7.wq"] = h["layers.0.wq"]; });
  expect_refused({"unexpected tensor 'layers.7.wq'"});
  edit_header([](json& h) { h["layers.0.bq"] = h["final_norm"]; });  // no qkv bias in this config
  expect_refused({"unexpected tensor 'layers.0.bq'"});
}

TEST_F(Malformed, VectorOfWrongType) {
  edit_header([](json& h) { h["final_norm"]["shape"] = json::array({48, 2}); });
  expect_refused({"final_norm", "[96]"});
}

}  // namespace
}  // namespace tessera
