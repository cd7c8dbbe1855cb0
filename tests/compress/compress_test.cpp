// The compression pipeline: scheme resolution (default, glob rules, last match wins, JSON rules files), what each
// scheme does to the weights of a small random model, tied embeddings, the report.
#include "quant/compress.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "loaders/dummy_model.h"
#include "tests/compress/compress_test_util.h"
#include "tests/loaders/test_util.h"

namespace tessera {
namespace {

using quant::CompressOptions;
using quant::QuantRule;
using quant::QuantSpec;
using test::compress_config;
using test::expect_error;

CompressOptions with_default(const std::string& spec) {
  CompressOptions o;
  o.default_spec = QuantSpec::parse(spec);
  o.threads = 2;
  return o;
}

TEST(QuantRule, ParsesPatternAndScheme) {
  const QuantRule a = QuantRule::parse("layers.0.*=bf16");
  EXPECT_EQ(a.pattern, "layers.0.*");
  EXPECT_EQ(a.spec.dtype, DType::BF16);
  const QuantRule b = QuantRule::parse("lm_head=int4:g32:asym");
  EXPECT_EQ(b.pattern, "lm_head");
  EXPECT_EQ(b.spec.dtype, DType::Q4A);
  EXPECT_EQ(b.spec.group, 32);
  EXPECT_TRUE(QuantRule::parse("*=keep").spec.keep());
}

TEST(QuantRule, RejectsMalformedRulesNamingThem) {
  for (const char* bad : {"lm_head", "=int8", "lm_head=", "lm_head=int3", "layers.*=int4:g48"})
    expect_error([&] { QuantRule::parse(bad); }, {"bad quantization rule", std::string("'") + bad + "'"});
  expect_error([] { QuantRule::parse("x=int3"); }, {"int3", "accepted forms"});
}

TEST(Compress, DefaultAndGlobRulesLastMatchWins) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  CompressOptions o = with_default("int8");
  o.rules = {QuantRule::parse("layers.*=int4:g32"), QuantRule::parse("layers.1.w_*=bf16"),
             QuantRule::parse("*.w_down=nf4:g64"), QuantRule::parse("layers.?.wo=f16")};
  const quant::CompressReport r = quant::compress_model(m, o);
  auto expect = [&](const Matrix& w, const std::string& name, DType dt, int group, const std::string& scheme) {
    EXPECT_EQ(w.dtype, dt) << name;
    EXPECT_EQ(w.group, group) << name;
    EXPECT_EQ(test::find_report(r, name).scheme, scheme) << name;
  };
  const auto& L = m.weights.layers;
  expect(m.weights.tok_embeddings, "tok_embeddings", DType::Q8, 0, "int8");
  expect(m.weights.lm_head, "lm_head", DType::Q8, 0, "int8");
  expect(L[0].wq, "layers.0.wq", DType::Q4, 32, "int4:g32");
  expect(L[0].w_gate, "layers.0.w_gate", DType::Q4, 32, "int4:g32");
  expect(L[1].wq, "layers.1.wq", DType::Q4, 32, "int4:g32");
  expect(L[1].w_gate, "layers.1.w_gate", DType::BF16, 0, "bf16");
  expect(L[1].w_up, "layers.1.w_up", DType::BF16, 0, "bf16");
  expect(L[1].w_down, "layers.1.w_down", DType::NF4, 64, "nf4:g64");  // the later rule wins over w_*
  expect(L[0].w_down, "layers.0.w_down", DType::NF4, 64, "nf4:g64");
  expect(L[0].wo, "layers.0.wo", DType::F16, 0, "f16");
  expect(L[1].wo, "layers.1.wo", DType::F16, 0, "f16");
  EXPECT_EQ(r.tensors.size(), 2u + 7u * 2u);
}

TEST(Compress, RuleOrderDecides) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  CompressOptions o = with_default("keep");
  o.rules = {QuantRule::parse("layers.0.wq=int8"), QuantRule::parse("layers.*=bf16")};
  quant::compress_model(m, o);
  EXPECT_EQ(m.weights.layers[0].wq.dtype, DType::BF16);  // the last matching rule, not the most specific
  EXPECT_EQ(m.weights.tok_embeddings.dtype, DType::F32);
}

TEST(Compress, RuleMatchingNoWeightIsAnError) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  CompressOptions o = with_default("int8");
  o.rules = {QuantRule::parse("layer.0.*=bf16")};
  expect_error([&] { quant::compress_model(m, o); }, {"layer.0.*=bf16", "matches no weight", "layers.<0..1>"});
  o.rules = {QuantRule::parse("layers.2.*=bf16")};  // only layers 0 and 1 exist
  expect_error([&] { quant::compress_model(m, o); }, {"layers.2.*", "matches no weight"});
}

TEST(Compress, KeepLeavesEverythingAsLoaded) {
  ModelData m = testing::tiny_model(compress_config(), DType::BF16);
  const auto before = test::matrices_of(m);
  std::vector<const void*> data;
  for (const Matrix* w : before) data.push_back(w->data);
  const size_t allocated = m.store->allocated_bytes();
  const quant::CompressReport r = quant::compress_model(m, with_default("keep"));
  const auto after = test::matrices_of(m);
  for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i]->data, data[i]);
  EXPECT_EQ(m.store->allocated_bytes(), allocated);
  EXPECT_EQ(r.bytes_before, r.bytes_after);
  for (const auto& t : r.tensors) {
    EXPECT_EQ(t.scheme, "bf16");
    EXPECT_EQ(t.relative_error, 0.0);
    EXPECT_EQ(t.awq_alpha, -1.0);
  }
  // Asking for the type a weight already has is a no-op too.
  const quant::CompressReport r2 = quant::compress_model(m, with_default("bf16"));
  EXPECT_EQ(test::matrices_of(m)[0]->data, data[0]);
  EXPECT_EQ(r2.bytes_before, r2.bytes_after);
}

// Compressing gives the original weights' memory back as it goes, except what a tied lm_head still reads.
TEST(Compress, ReplacedWeightsAreGivenBack) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  const size_t before = m.store->allocated_bytes();
  const quant::CompressReport r = quant::compress_model(m, with_default("int8"));
  const size_t after = m.store->allocated_bytes();
  // Only the int8 copies remain (each buffer rounded up to 64 bytes).
  EXPECT_LE(after, r.bytes_after + 64 * r.tensors.size());
  EXPECT_LT(after, before / 3);

  ModelData tied = testing::tiny_model(compress_config(/*tied=*/true), DType::F32);
  const size_t table = tied.weights.tok_embeddings.bytes();
  CompressOptions o = with_default("keep");
  o.rules = {QuantRule::parse("tok_embeddings=int8")};
  quant::compress_model(tied, o);
  EXPECT_EQ(tied.weights.lm_head.dtype, DType::F32);  // still the original table: it must stay
  const float first = static_cast<const float*>(tied.weights.lm_head.data)[0];
  EXPECT_TRUE(std::isfinite(first));
  EXPECT_GE(tied.store->allocated_bytes(), table);
  // Now lm_head moves too: the table goes.
  const size_t with_table = tied.store->allocated_bytes();
  quant::compress_model(tied, with_default("int8"));
  EXPECT_LE(tied.store->allocated_bytes() + table, with_table + tied.weights.lm_head.bytes() + 64);
}

struct SchemeCase {
  const char* spec;
  DType dtype;
  int group;
  double min_err, max_err;  // relative Frobenius error of each weight
  double max_logit_err;     // relative L2 error of the logits against the fp32 model
};

class CompressScheme : public ::testing::TestWithParam<SchemeCase> {};

TEST_P(CompressScheme, DtypesBytesErrorsAndLogits) {
  const SchemeCase& sc = GetParam();
  const ModelConfig cfg = compress_config();
  const ModelData ref = testing::tiny_model(cfg, DType::F32, 7);
  ModelData m = testing::tiny_model(cfg, DType::F32, 7);
  const quant::CompressReport r = quant::compress_model(m, with_default(sc.spec));

  const auto ref_w = test::matrices_of(ref);
  const auto new_w = test::matrices_of(m);
  size_t before = 0, after = 0;
  for (size_t i = 0; i < new_w.size(); ++i) {
    const Matrix& w = *new_w[i];
    const quant::TensorReport& t = r.tensors[i];
    EXPECT_EQ(w.dtype, sc.dtype) << t.name;
    EXPECT_EQ(w.group, sc.group) << t.name;
    EXPECT_EQ(t.bytes_after, static_cast<size_t>(w.rows) * dtype_row_bytes(sc.dtype, w.cols, sc.group)) << t.name;
    EXPECT_EQ(t.bytes_before, ref_w[i]->bytes()) << t.name;
    before += t.bytes_before;
    after += t.bytes_after;
    // The reported error is the error of the stored weights.
    const std::vector<float> a = test::dequantized(w), b = test::dequantized(*ref_w[i]);
    const double err = test::rel_l2(a, b);
    EXPECT_NEAR(t.relative_error, err, 1e-7 + 1e-4 * err) << t.name;
    EXPECT_GE(err, sc.min_err) << t.name;
    EXPECT_LE(err, sc.max_err) << t.name;
  }
  EXPECT_EQ(r.bytes_before, before);
  EXPECT_EQ(r.bytes_after, after);
  EXPECT_GE(r.seconds, 0.0);

  const std::vector<int> tokens = test::some_tokens(24, cfg.vocab_size);
  const double logit_err = test::rel_l2(test::logits_of(m, tokens), test::logits_of(ref, tokens));
  EXPECT_LE(logit_err, sc.max_logit_err);
}

INSTANTIATE_TEST_SUITE_P(Schemes, CompressScheme,
                         ::testing::Values(SchemeCase{"f32", DType::F32, 0, 0.0, 0.0, 1e-6},
                                           SchemeCase{"bf16", DType::BF16, 0, 5e-4, 5e-3, 2e-2},
                                           SchemeCase{"f16", DType::F16, 0, 5e-5, 1e-3, 3e-3},
                                           SchemeCase{"int8", DType::Q8, 0, 1e-3, 1.5e-2, 6e-2},
                                           SchemeCase{"int4:g32", DType::Q4, 32, 0.04, 0.15, 0.5},
                                           SchemeCase{"int4:g128", DType::Q4, 128, 0.05, 0.2, 0.6},
                                           SchemeCase{"int4:g64:asym", DType::Q4A, 64, 0.04, 0.2, 0.6},
                                           SchemeCase{"nf4:g64", DType::NF4, 64, 0.04, 0.2, 0.6}),
                         [](const auto& info) {
                           std::string n = info.param.spec;
                           for (char& ch : n)
                             if (ch == ':') ch = '_';
                           return n;
                         });

TEST(Compress, SameResultForAnyThreadCount) {
  ModelData a = testing::tiny_model(compress_config(), DType::BF16, 5);
  ModelData b = testing::tiny_model(compress_config(), DType::BF16, 5);
  CompressOptions o = with_default("int4:g32");
  o.threads = 1;
  const quant::CompressReport ra = quant::compress_model(a, o);
  o.threads = 3;
  const quant::CompressReport rb = quant::compress_model(b, o);
  const auto wa = test::matrices_of(a), wb = test::matrices_of(b);
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_TRUE(test::same_bytes(*wa[i], *wb[i])) << ra.tensors[i].name;
    EXPECT_EQ(ra.tensors[i].relative_error, rb.tensors[i].relative_error);
  }
}

TEST(Compress, ProgressIsMonotoneAndReachesTheTotal) {
  for (const bool tied : {false, true}) {
    for (const bool aware : {false, true}) {
      SCOPED_TRACE(std::string(tied ? "tied" : "untied") + (aware ? ", activation-aware" : ""));
      ModelData m = testing::tiny_model(compress_config(tied), DType::F32);
      CompressOptions o = with_default("int4:g32");
      o.activation_aware = aware;
      o.calibration_tokens = test::some_tokens(40, m.config.vocab_size);
      std::vector<std::pair<size_t, size_t>> calls;
      o.progress = [&](size_t done, size_t total) { calls.emplace_back(done, total); };
      quant::compress_model(m, o);
      ASSERT_GE(calls.size(), 2u);
      EXPECT_EQ(calls.front().first, 0u);
      for (size_t i = 1; i < calls.size(); ++i) {
        EXPECT_GE(calls[i].first, calls[i - 1].first);
        EXPECT_EQ(calls[i].second, calls[0].second);
      }
      EXPECT_EQ(calls.back().first, calls.back().second);
    }
  }
}

TEST(Compress, TiedEmbeddingsWithOneSchemeStayShared) {
  ModelData m = testing::tiny_model(compress_config(/*tied=*/true), DType::F32);
  ASSERT_EQ(m.weights.lm_head.data, m.weights.tok_embeddings.data);
  const size_t emb_bytes = m.weights.tok_embeddings.bytes();
  const quant::CompressReport r = quant::compress_model(m, with_default("int4:g32"));
  EXPECT_EQ(m.weights.lm_head.data, m.weights.tok_embeddings.data);
  EXPECT_EQ(m.weights.lm_head.dtype, DType::Q4);
  const auto& head = test::find_report(r, "lm_head");
  const auto& emb = test::find_report(r, "tok_embeddings");
  EXPECT_EQ(head.bytes_before, 0u);  // counted once, under tok_embeddings
  EXPECT_EQ(head.bytes_after, 0u);
  EXPECT_EQ(emb.bytes_before, emb_bytes);
  EXPECT_EQ(head.relative_error, emb.relative_error);
  EXPECT_EQ(head.scheme, "int4:g32");
}

TEST(Compress, TiedEmbeddingsWithTwoSchemesGetSeparateCopies) {
  const ModelConfig cfg = compress_config(/*tied=*/true);
  const ModelData ref = testing::tiny_model(cfg, DType::F32);
  ModelData m = testing::tiny_model(cfg, DType::F32);
  const void* original = m.weights.tok_embeddings.data;
  CompressOptions o = with_default("keep");
  o.rules = {QuantRule::parse("lm_head=int8")};
  const quant::CompressReport r = quant::compress_model(m, o);
  // The embedding (a row gather) stays f32; lm_head (a matmul) gets its own int8 copy of the same values.
  EXPECT_EQ(m.weights.tok_embeddings.data, original);
  EXPECT_EQ(m.weights.tok_embeddings.dtype, DType::F32);
  EXPECT_NE(m.weights.lm_head.data, original);
  EXPECT_EQ(m.weights.lm_head.dtype, DType::Q8);
  EXPECT_LT(test::rel_l2(test::dequantized(m.weights.lm_head), test::dequantized(ref.weights.tok_embeddings)), 0.02);
  const auto& head = test::find_report(r, "lm_head");
  EXPECT_EQ(head.bytes_before, 0u);
  EXPECT_EQ(head.bytes_after, m.weights.lm_head.bytes());
  EXPECT_EQ(r.bytes_after, r.bytes_before + m.weights.lm_head.bytes());

  // Both quantized, differently: two buffers, each from the original values.
  ModelData m2 = testing::tiny_model(cfg, DType::F32);
  o.default_spec = QuantSpec::parse("int4:g32");
  quant::compress_model(m2, o);
  EXPECT_EQ(m2.weights.tok_embeddings.dtype, DType::Q4);
  EXPECT_EQ(m2.weights.lm_head.dtype, DType::Q8);
  EXPECT_NE(m2.weights.lm_head.data, m2.weights.tok_embeddings.data);
  EXPECT_LT(test::rel_l2(test::dequantized(m2.weights.lm_head), test::dequantized(ref.weights.tok_embeddings)), 0.02);

  // Only the embedding changes: lm_head keeps the original table, which it now owns alone.
  ModelData m3 = testing::tiny_model(cfg, DType::F32);
  const void* table = m3.weights.tok_embeddings.data;
  CompressOptions o3 = with_default("keep");
  o3.rules = {QuantRule::parse("tok_embeddings=int8")};
  const quant::CompressReport r3 = quant::compress_model(m3, o3);
  EXPECT_EQ(m3.weights.lm_head.data, table);
  EXPECT_EQ(m3.weights.tok_embeddings.dtype, DType::Q8);
  EXPECT_EQ(test::find_report(r3, "lm_head").bytes_after, m3.weights.lm_head.bytes());
  EXPECT_EQ(r3.bytes_after, r3.bytes_before + m3.weights.tok_embeddings.bytes());

  const std::vector<int> tokens = test::some_tokens(16, cfg.vocab_size);
  EXPECT_LT(test::rel_l2(test::logits_of(m, tokens), test::logits_of(ref, tokens)), 0.05);
  EXPECT_LT(test::rel_l2(test::logits_of(m2, tokens), test::logits_of(ref, tokens)), 0.5);
}

TEST(Compress, QuantizedSourceIsRequantizedOnlyWhenTheSchemeDiffers) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  quant::compress_model(m, with_default("int4:g32"));
  const void* wq = m.weights.layers[0].wq.data;
  const quant::CompressReport same = quant::compress_model(m, with_default("int4:g32"));
  EXPECT_EQ(m.weights.layers[0].wq.data, wq);
  EXPECT_EQ(same.bytes_before, same.bytes_after);
  quant::compress_model(m, with_default("int8"));
  EXPECT_EQ(m.weights.layers[0].wq.dtype, DType::Q8);
}

TEST(Compress, ActivationAwareNeedsFourBitWeightsAndTokens) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  CompressOptions o = with_default("int8");
  o.activation_aware = true;
  o.calibration_tokens = test::some_tokens(32, m.config.vocab_size);
  expect_error([&] { quant::compress_model(m, o); }, {"int4", "nf4", "--calib"});
  o.default_spec = QuantSpec::parse("int4:g32");
  o.calibration_tokens.clear();
  expect_error([&] { quant::compress_model(m, o); }, {"calibration"});
}

TEST(ReportJson, WritesEveryTensor) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  CompressOptions o = with_default("int4:g32");
  o.rules = {QuantRule::parse("lm_head=int8")};
  const quant::CompressReport r = quant::compress_model(m, o);
  test::TempDir dir;
  quant::write_report_json(r, dir.file("report.json"));
  const nlohmann::json j = nlohmann::json::parse(test::read_file(dir.file("report.json")));
  EXPECT_EQ(j["bytes_before"].get<size_t>(), r.bytes_before);
  EXPECT_EQ(j["bytes_after"].get<size_t>(), r.bytes_after);
  ASSERT_EQ(j["tensors"].size(), r.tensors.size());
  EXPECT_EQ(j["tensors"][0]["name"], "tok_embeddings");
  EXPECT_EQ(j["tensors"].back()["name"], "lm_head");
  EXPECT_EQ(j["tensors"].back()["scheme"], "int8");
  EXPECT_DOUBLE_EQ(j["tensors"][1]["relative_error"].get<double>(), r.tensors[1].relative_error);
  EXPECT_FALSE(j["tensors"][1].contains("awq_alpha"));
  expect_error([&] { quant::write_report_json(r, dir.file("no/such/dir/report.json")); }, {"report.json"});
}

// ---- rules files ----

TEST(RulesFile, LoadsDefaultAndRulesInOrder) {
  test::TempDir dir;
  test::write_file(dir.file("rules.json"), R"({"default": "int4:g64",
      "rules": [{"pattern": "lm_head", "scheme": "int8"}, {"pattern": "layers.0.*", "scheme": "bf16"}]})");
  const CompressOptions o = quant::load_rules_file(dir.file("rules.json"));
  EXPECT_EQ(o.default_spec.dtype, DType::Q4);
  EXPECT_EQ(o.default_spec.group, 64);
  ASSERT_EQ(o.rules.size(), 2u);
  EXPECT_EQ(o.rules[0].pattern, "lm_head");
  EXPECT_EQ(o.rules[0].spec.dtype, DType::Q8);
  EXPECT_EQ(o.rules[1].pattern, "layers.0.*");
  EXPECT_EQ(o.rules[1].spec.dtype, DType::BF16);

  test::write_file(dir.file("only_rules.json"), R"({"rules": [{"scheme": "nf4", "pattern": "*.w_down"}]})");
  const CompressOptions o2 = quant::load_rules_file(dir.file("only_rules.json"));
  EXPECT_TRUE(o2.default_spec.keep());
  ASSERT_EQ(o2.rules.size(), 1u);
  EXPECT_EQ(o2.rules[0].spec.dtype, DType::NF4);

  ModelData m = testing::tiny_model(compress_config(), DType::F32);
  CompressOptions run = o;
  run.threads = 1;
  quant::compress_model(m, run);
  EXPECT_EQ(m.weights.lm_head.dtype, DType::Q8);
  EXPECT_EQ(m.weights.layers[0].wo.dtype, DType::BF16);
  EXPECT_EQ(m.weights.layers[1].wo.dtype, DType::Q4);
}

TEST(RulesFile, RejectsBadFilesWithClearErrors) {
  test::TempDir dir;
  const std::string p = dir.file("r.json");
  struct Bad {
    const char* text;
    std::vector<std::string> needles;
  };
  const Bad cases[] = {
      {"{\"default\": \"int4\"", {"unreadable JSON"}},
      {"[1, 2]", {"JSON object"}},
      {R"({"defualt": "int8"})", {"unknown key \"defualt\""}},
      {R"({"default": 8})", {"\"default\""}},
      {R"({"default": "int3"})", {"\"default\"", "int3"}},
      {R"({"rules": {"pattern": "x"}})", {"\"rules\" must be an array"}},
      {R"({"rules": ["lm_head=int8"]})", {"rules[0]", "object"}},
      {R"({"rules": [{"pattern": "lm_head"}]})", {"rules[0]", "\"scheme\""}},
      {R"({"rules": [{"scheme": "int8"}]})", {"rules[0]", "\"pattern\""}},
      {R"({"rules": [{"pattern": "", "scheme": "int8"}]})", {"rules[0]", "\"pattern\""}},
      {R"({"rules": [{"pattern": "a", "scheme": "int8"}, {"pattern": "b", "scheme": "int4:g7"}]})",
       {"rules[1]", "int4:g7"}},
      {R"({"rules": [{"pattern": "a", "scheme": "int8", "group": 32}]})", {"rules[0]", "unknown key \"group\""}},
      {R"({"default": "int8", "default": "int4"})", {"duplicate key \"default\""}},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.text);
    test::write_file(p, b.text);
    std::vector<std::string> needles = b.needles;
    needles.push_back(p);
    expect_error([&] { quant::load_rules_file(p); }, needles);
  }
  expect_error([&] { quant::load_rules_file(dir.file("missing.json")); }, {"missing.json", "cannot read"});
}

// Random weights made on demand: compression makes each as it reaches it and gives the uncompressed bytes back once
// encoded, so the result equals compressing the model made at load while the store never holds all of it. Covers a
// kept weight (made, then kept as is), a whole model and a tensor-parallel shard of a pipeline stage, and pruning of
// the whole model (which reads all of it first).
TEST(Compress, WeightsMadeOnDemandGiveTheSameResultWithoutTheWholeModel) {
  const ModelConfig c = dummy_preset_config("llama-110m");
  ShardRequest q;
  q.tp_size = 2;
  q.tp_rank = 1;
  q.pp_size = 2;
  q.pp_stage = 1;
  const ModelShard shard = plan_shard(c, q);
  for (const ModelShard* s : {static_cast<const ModelShard*>(nullptr), &shard}) {
    for (const bool prune : {false, true}) {
      if (prune && s != nullptr) continue;  // pruning a tensor-parallel shard needs its group's communicator
      SCOPED_TRACE(std::string(s ? s->describe() : "whole model") + (prune ? ", pruned" : ""));
      CompressOptions o = with_default("int4:g32");
      o.rules = {QuantRule::parse("lm_head=int8"), QuantRule::parse("layers.7.*=keep")};
      if (prune) o.prune.default_spec = quant::PruneSpec::parse("magnitude:0.3");
      ModelData at_load = make_dummy_model("llama-110m", DType::BF16, 5, s);
      const size_t uncompressed = at_load.store->allocated_bytes();
      size_t largest = 0;
      for (const Matrix* m : at_load.weights.matrices()) largest = std::max(largest, m->bytes());
      ModelData on_demand = make_dummy_model("llama-110m", DType::BF16, 5, s, DummyFill::kOnDemand);
      EXPECT_FALSE(on_demand.pending.empty());
      EXPECT_EQ(on_demand.store->allocated_bytes(), 0u);
      EXPECT_EQ(on_demand.weight_bytes(), at_load.weight_bytes());

      const quant::CompressReport a = quant::compress_model(at_load, o);
      size_t peak = 0;
      o.progress = [&](size_t, size_t) { peak = std::max(peak, on_demand.store->allocated_bytes()); };
      const quant::CompressReport b = quant::compress_model(on_demand, o);
      EXPECT_TRUE(on_demand.pending.empty());
      EXPECT_GT(b.make_seconds, 0.0);
      EXPECT_EQ(a.make_seconds, 0.0);
      if (prune) {
        EXPECT_GE(peak, uncompressed);  // pruning reads the whole model, so it is made first
      } else {
        // The compressed model plus the one uncompressed tensor in flight (and allocation rounding).
        EXPECT_LE(peak, b.bytes_after + largest + (size_t{1} << 20));
        EXPECT_LT(peak, uncompressed);
      }

      const auto ma = at_load.weights.matrices();
      const auto mb = on_demand.weights.matrices();
      ASSERT_EQ(ma.size(), mb.size());
      for (size_t i = 0; i < ma.size(); ++i) {
        EXPECT_EQ(ma[i]->dtype, mb[i]->dtype) << i;
        ASSERT_EQ(ma[i]->bytes(), mb[i]->bytes()) << i;
        EXPECT_EQ(ma[i]->empty(), mb[i]->empty()) << i;
        if (!ma[i]->empty()) {
          EXPECT_EQ(std::memcmp(ma[i]->data, mb[i]->data, ma[i]->bytes()), 0) << i;
        }
      }
      ASSERT_EQ(a.tensors.size(), b.tensors.size());
      for (size_t i = 0; i < a.tensors.size(); ++i) {
        EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
        EXPECT_EQ(a.tensors[i].scheme, b.tensors[i].scheme);
        EXPECT_EQ(a.tensors[i].relative_error, b.tensors[i].relative_error);
      }
      EXPECT_EQ(a.bytes_after, b.bytes_after);
    }
  }
}

}  // namespace
}  // namespace tessera
