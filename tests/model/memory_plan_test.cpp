// The memory plan (engine/model/memory_plan.h) against what really happens: weights loaded (or generated), cut
// to each rank's shard and compressed hold exactly the planned bytes per scheme; the KV cache LlamaModel makes
// for a shard holds the planned bytes per token; LlamaModel's scratch is the planned activation + RoPE bytes.
#include "engine/model/memory_plan.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/llama_model.h"
#include "loaders/dummy_model.h"
#include "loaders/model_inspect.h"
#include "loaders/model_loader.h"
#include "loaders/shard_weights.h"
#include "quant/compress.h"
#include "tests/loaders/test_util.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

// A tensor-parallel group of which only rank and size are asked (LlamaModel's constructor and make_cache).
class ShapeOnlyGroup final : public Communicator {
 public:
  ShapeOnlyGroup(int rank, int size) : rank_(rank), size_(size) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "shape-only"; }
  void all_reduce_sum(float*, size_t) override { TESSERA_CHECK(false); }
  void all_gather_bytes(const void*, size_t, void*) override { TESSERA_CHECK(false); }
  void send(const void*, size_t, int, int) override { TESSERA_CHECK(false); }
  void recv(void*, size_t, int, int) override { TESSERA_CHECK(false); }
  uint64_t start_send(const void*, size_t, int, int) override { TESSERA_CHECK(false); }
  void wait_send(uint64_t) override { TESSERA_CHECK(false); }
  void broadcast(void*, size_t, int) override { TESSERA_CHECK(false); }
  void barrier() override { TESSERA_CHECK(false); }

 private:
  int rank_, size_;
};

// Dimensions that tp = 2 can split at multiples of 32 and 64 (wo at column 64, FFN 200 -> 128 + 72 or 96 + 104).
ModelConfig plan_config(bool tied, bool qkv_bias) {
  ModelConfig c = testing::tiny_config(4, 2, qkv_bias, tied);
  c.dim = 128;
  c.head_dim = 32;
  c.hidden_dim = 200;
  c.n_layers = 3;
  c.vocab_size = 97;
  c.max_seq_len = 96;
  return c;
}

quant::CompressOptions options_of(const std::string& scheme, const std::vector<std::string>& rules) {
  quant::CompressOptions o;
  if (!scheme.empty()) o.default_spec = quant::QuantSpec::parse(scheme);
  for (const std::string& r : rules) o.rules.push_back(quant::QuantRule::parse(r));
  o.threads = 1;
  return o;
}

// The model's matrices as the plan will see them after compression (what cmd_plan does: loaded dtype for keep).
std::vector<StoredWeight> planned_weights(const ModelDescription& d, const quant::CompressOptions& o) {
  std::vector<std::string> names;
  for (const StoredWeight& w : d.weights) names.push_back(w.name());
  const std::vector<quant::QuantSpec> specs = quant::resolve_quant_specs(o, names, true);
  std::vector<StoredWeight> out = d.weights;
  for (size_t i = 0; i < out.size(); ++i) {
    if (specs[i].keep()) continue;
    out[i].dtype = *specs[i].dtype;
    out[i].group = is_grouped(out[i].dtype) ? specs[i].group : 0;
  }
  return out;
}

// What a rank really holds: distinct matrix storage grouped by (dtype, group), and fp32 vector bytes.
struct Held {
  std::map<std::pair<DType, int>, size_t> matrices;
  size_t vectors = 0;
};

Held held_by(const ModelData& m) {
  Held h;
  std::set<const void*> seen;  // a tied lm_head that shares the embedding table is one storage
  auto add = [&](const Matrix& w) {
    if (w.empty() || !seen.insert(w.data).second) return;
    h.matrices[{w.dtype, is_grouped(w.dtype) ? w.group : 0}] += w.bytes();
  };
  auto vec = [&](const std::vector<float>& v) { h.vectors += v.size() * sizeof(float); };
  add(m.weights.tok_embeddings);
  for (const LayerWeights& l : m.weights.layers) {
    for (const Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) add(*w);
    for (const auto* v : {&l.attn_norm, &l.ffn_norm, &l.bq, &l.bk, &l.bv}) vec(*v);
  }
  vec(m.weights.final_norm);
  add(m.weights.lm_head);
  return h;
}

Held planned(const RankMemory& r) {
  Held h;
  for (const SchemeBytes& s : r.matrices) h.matrices[{s.dtype, s.group}] += s.bytes;
  h.vectors = r.vector_bytes;
  return h;
}

std::string describe(const Held& h) {
  std::string s;
  for (const auto& [k, v] : h.matrices)
    s += std::string(dtype_name(k.first)) + ":g" + std::to_string(k.second) + "=" + std::to_string(v) + " ";
  return s + "vectors=" + std::to_string(h.vectors);
}

// For every rank of tp x pp: load a fresh model, shard it, compress it, and compare with the plan.
void expect_plan_matches(const std::function<ModelData()>& load, int tp, int pp, const std::string& scheme,
                         const std::vector<std::string>& rules = {}) {
  const quant::CompressOptions o = options_of(scheme, rules);
  const ModelDescription d = describe_loaded(load());
  ShardRequest request;
  request.tp_size = tp;
  request.pp_size = pp;
  request.column_align = quant::largest_group(o);
  const std::vector<StoredWeight> weights = planned_weights(d, o);
  const std::vector<RankMemory> plan = plan_memory(d.config, weights, request, WorkspaceOptions{});
  ASSERT_EQ(plan.size(), static_cast<size_t>(tp * pp));
  for (const RankMemory& r : plan) {
    SCOPED_TRACE("tp " + std::to_string(tp) + " x pp " + std::to_string(pp) + ", " + r.shard.describe() + ", " +
                 (scheme.empty() ? "keep" : scheme));
    ModelData m = load();
    if (!r.shard.whole()) shard_weights(m, r.shard);
    if (!scheme.empty() || !rules.empty()) quant::compress_model(m, o);
    const Held want = held_by(m), got = planned(r);
    EXPECT_EQ(got.matrices, want.matrices) << "plan " << describe(got) << "\nheld " << describe(want);
    EXPECT_EQ(got.vectors, want.vectors);
    size_t total = want.vectors;
    for (const auto& [k, v] : want.matrices) total += v;
    EXPECT_EQ(r.weight_bytes(), total);
  }
}

struct Layout {
  int tp, pp;
};
constexpr Layout kLayouts[] = {{1, 1}, {2, 1}, {1, 2}, {2, 2}};

TEST(MemoryPlan, WeightBytesEqualTheCompressedShardsOfATinyModel) {
  for (bool tied : {false, true}) {
    for (bool bias : {false, true}) {
      SCOPED_TRACE(std::string(tied ? "tied" : "untied") + (bias ? ", q/k/v biases" : ""));
      const auto load = [&] { return testing::tiny_model(plan_config(tied, bias), DType::BF16); };
      for (const Layout& l : kLayouts) {
        for (const char* scheme : {"", "bf16", "f32", "int8", "int4:g32", "int4:g64:asym", "nf4:g32"})
          expect_plan_matches(load, l.tp, l.pp, scheme);
        // Mixed precision; the tied lm_head gets storage of its own.
        expect_plan_matches(load, l.tp, l.pp, "int4:g32", {"lm_head=int8", "layers.0.*=bf16", "*.w_down=nf4:g64"});
        // lm_head kept as loaded while the embeddings are quantized.
        expect_plan_matches(load, l.tp, l.pp, "int8", {"lm_head=keep"});
      }
    }
  }
}

TEST(MemoryPlan, WeightBytesEqualTheCompressedShardsOfStories260K) {
  TESSERA_REQUIRE_MODEL(path, "stories260K/stories260K.bin");
  const auto load = [&] { return load_model(path); };
  const ModelDescription d = describe_model(path);
  EXPECT_EQ(d.format, "llama2.c checkpoint");
  EXPECT_TRUE(d.config.tied_embeddings);
  for (const Layout& l : kLayouts)
    for (const char* scheme : {"", "int8", "int4:g32", "nf4:g32"}) expect_plan_matches(load, l.tp, l.pp, scheme);
  expect_plan_matches(load, 2, 1, "int4:g32", {"lm_head=int8", "layers.4.*=bf16"});
}

TEST(MemoryPlan, WeightBytesEqualAGeneratedPresetShard) {
  // The dummy generator builds a rank's shard directly (never the whole model): the plan must agree with it.
  const ModelDescription d = describe_preset("llama-110m", DType::F16);
  EXPECT_EQ(d.config.n_layers, dummy_preset_config("llama-110m").n_layers);
  ShardRequest request;
  request.tp_size = 2;
  request.pp_size = 2;
  request.tp_rank = 1;
  request.pp_stage = 1;
  const ModelShard shard = plan_shard(d.config, request);
  const RankMemory r = plan_rank_memory(d.config, shard, d.weights, WorkspaceOptions{});
  const ModelData m = make_dummy_model("llama-110m", DType::F16, 0, &shard);
  const Held want = held_by(m), got = planned(r);
  EXPECT_EQ(got.matrices, want.matrices) << "plan " << describe(got) << "\nheld " << describe(want);
  EXPECT_EQ(got.vectors, want.vectors);
}

TEST(MemoryPlan, KvBytesPerTokenEqualWhatLlamaModelAllocates) {
  CpuBackend backend(1);
  for (const auto& [heads, kv] : {std::pair{4, 2}, std::pair{4, 4}, std::pair{4, 1}}) {
    for (const Layout& l : kLayouts) {
      ModelConfig c = plan_config(false, false);
      c.n_heads = heads;
      c.n_kv_heads = kv;
      ShardRequest request;
      request.tp_size = l.tp;
      request.pp_size = l.pp;
      for (int stage = 0; stage < l.pp; ++stage) {
        for (int t = 0; t < l.tp; ++t) {
          request.pp_stage = stage;
          request.tp_rank = t;
          const ModelShard shard = plan_shard(c, request);
          SCOPED_TRACE(std::to_string(heads) + " heads, " + std::to_string(kv) + " kv heads, " + shard.describe());
          ModelData m = testing::tiny_model(c, DType::F32);
          if (!shard.whole()) shard_weights(m, shard);
          ShapeOnlyGroup group(t, l.tp);
          LlamaModel model(m, backend, 8, l.tp > 1 ? &group : nullptr);
          for (int capacity : {1, 7, 96}) {
            const KvCache cache = model.make_cache(capacity);
            EXPECT_EQ(kv_bytes_per_token(c, shard) * static_cast<size_t>(capacity), cache.bytes());
          }
        }
      }
    }
  }
}

size_t heap_in_use() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;  // small chunks in use + mmapped chunks
}

// Sanitizers replace malloc, and mallinfo2 then sees none of the allocations.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kMallocReplaced = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kMallocReplaced = true;
#else
constexpr bool kMallocReplaced = false;
#endif
#else
constexpr bool kMallocReplaced = false;
#endif

TEST(MemoryPlan, ActivationAndRopeBytesEqualLlamaModelsScratch) {
  if (kMallocReplaced) GTEST_SKIP() << "a sanitizer replaces malloc: mallinfo2 cannot measure the allocations";
  CpuBackend backend(1);
  ModelConfig c = plan_config(false, false);
  c.max_seq_len = 4096;  // RoPE tables of 2 MiB
  for (const Layout& l : {Layout{1, 1}, Layout{2, 1}}) {
    ShardRequest request;
    request.tp_size = l.tp;
    const ModelShard shard = plan_shard(c, request);
    ModelData m = testing::tiny_model(c, DType::F32);
    if (!shard.whole()) shard_weights(m, shard);
    ShapeOnlyGroup group(0, l.tp);
    WorkspaceOptions o;
    o.max_step_tokens = 2048;  // buffers of 1 MiB and more: a missing one is far outside the tolerance
    const WorkspaceBytes w = workspace_bytes(c, shard, o);
    const size_t before = heap_in_use();
    const LlamaModel model(m, backend, o.max_step_tokens, l.tp > 1 ? &group : nullptr);
    const size_t grown = heap_in_use() - before;
    const size_t want = w.activations + w.rope;
    // malloc adds a header to each block and rounds mapped ones to pages: at most a few KiB over 11 buffers.
    EXPECT_GE(grown, want);
    EXPECT_LE(grown, want + 64 * 1024) << "LlamaModel allocated " << grown << " bytes, the plan says " << want;
  }
}

TEST(MemoryPlan, KvCapacityIsTheMemoryLeftOverBytesPerToken) {
  const ModelConfig c = plan_config(false, false);
  const ModelDescription d{"tiny", "test", c, model_weights(c, DType::BF16)};
  const RankMemory r = plan_rank_memory(c, whole_model_shard(c), d.weights, WorkspaceOptions{});
  EXPECT_EQ(r.kv_per_token, 2u * 3u * 2u * 32u * 4u);
  EXPECT_EQ(r.kv_tokens(r.fixed_bytes()), 0);
  EXPECT_EQ(r.kv_tokens(r.fixed_bytes() / 2), 0);
  EXPECT_EQ(r.kv_tokens(r.fixed_bytes() + 10 * r.kv_per_token + 1), 10);
}

TEST(MemoryPlan, ImpossibleLayoutsAreUserErrors) {
  const ModelConfig c = plan_config(false, false);
  const std::vector<StoredWeight> w = model_weights(c, DType::BF16);
  ShardRequest request;
  request.tp_size = 3;  // does not divide 4 heads
  test::expect_error([&] { plan_memory(c, w, request, WorkspaceOptions{}); }, {"--tp 3", "4 attention heads"});
  request.tp_size = 2;
  request.column_align = 128;  // wo split at column 64
  test::expect_error([&] { plan_memory(c, w, request, WorkspaceOptions{}); }, {"group size 128"});
  request.column_align = 1;
  request.pp_size = 0;
  test::expect_error([&] { plan_memory(c, w, request, WorkspaceOptions{}); }, {"--pp"});
}

}  // namespace
}  // namespace tessera
