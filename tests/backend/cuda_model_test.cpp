// The whole model (LlamaModel) on the CUDA backend, against independent references: llama2.c's published greedy
// output of stories260K and the CPU backends on the same weights. Every test GTEST_SKIPs with the reason when no
// GPU is usable or a model file is absent.
//
// Logits are compared with ReferenceBackend (weight-only fp32 arithmetic, what the CUDA kernels compute) as the
// oracle: CpuBackend's int4 decode kernels round activations to int8 blocks, so it is not an fp32 twin for
// quantized weights (it is for f32 and int8). Tolerances (relative L2 over all logits):
//   - decode and short prefill chunks (<= 8 rows: the fp32 GEMV) and F32 prefill (cuBLAS, fp32, no TF32): 1e-4;
//   - int4 at any chunk size and int8 prefill of more than 8 rows: the tensor-core paths round activations and
//     weights to fp16: 2e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/reference_backend.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/model/llama_model.h"
#include "engine/runtime/generator.h"
#include "engine/runtime/model_runner.h"
#include "loaders/model_loader.h"
#include "loaders/tokenizer.h"
#include "quant/compress.h"
#include "tests/loaders/test_util.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

class CudaModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (cuda_device_count(&skip_reason_) == 0) return;
    try {
      backend_ = std::make_unique<CudaBackend>();
    } catch (const Error& e) {
      skip_reason_ = e.what();
    }
  }
  static void TearDownTestSuite() { backend_.reset(); }
  void SetUp() override {
    if (!backend_) GTEST_SKIP() << "no usable CUDA GPU: " << skip_reason_;
  }
  CudaBackend& gpu() { return *backend_; }

  static std::unique_ptr<CudaBackend> backend_;
  static std::string skip_reason_;
};
std::unique_ptr<CudaBackend> CudaModelTest::backend_;
std::string CudaModelTest::skip_reason_;

// Quantizes every linear weight at load, as `--quant SCHEME` does ("" keeps the loaded weights).
void quantize(ModelData& m, const std::string& scheme) {
  if (scheme.empty()) return;
  quant::CompressOptions o;
  o.default_spec = quant::QuantSpec::parse(scheme);
  quant::compress_model(m, o);
}

// Logits of every position: `prefill` tokens in one forward (in chunks of max_batch rows), then one decode step
// for each further token. [tokens][vocab].
std::vector<float> prefill_decode_logits(const ModelData& m, Backend& be, const std::vector<int>& tokens,
                                         size_t prefill, int max_batch) {
  LlamaModel model(m, be, max_batch);
  KvCache cache = model.make_cache(static_cast<int>(tokens.size()));
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  std::vector<float> logits(tokens.size() * V, std::nanf(""));
  model.forward({tokens.data(), prefill}, 0, cache, LogitsMode::kAll, logits.data());
  for (size_t i = prefill; i < tokens.size(); ++i)
    model.forward({&tokens[i], 1}, static_cast<int>(i), cache, LogitsMode::kLast, logits.data() + i * V);
  return logits;
}

double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    num += std::isfinite(got[i]) ? d * d : 1e30;  // a NaN or inf anywhere fails
    den += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<int> some_tokens(int n, int vocab, uint32_t seed) {
  std::vector<int> t{1};
  uint32_t x = seed * 2654435761u + 12345u;
  while (static_cast<int>(t.size()) < n) {
    x = x * 1664525u + 1013904223u;
    t.push_back(3 + static_cast<int>((x >> 8) % static_cast<uint32_t>(vocab - 3)));
  }
  return t;
}

// Greedy generation from BOS through the runtime, as `tessera generate --temperature 0 -n N` runs it.
GenerationResult greedy_from_bos(const ModelData& m, Backend& be, const Tokenizer* tok, int n) {
  LlamaModel model(m, be, 256);
  ModelRunner runner(model);
  Generator gen(runner, tok);
  GenerationRequest req;
  req.prompt = {m.config.bos_id};
  req.max_new_tokens = n;
  req.sampling.temperature = 0.0f;
  req.echo = true;
  std::string streamed;
  std::function<void(std::string_view)> on_text = [&](std::string_view s) { streamed.append(s); };
  GenerationResult r = gen.generate(req, on_text);
  r.text = streamed;
  return r;
}

TEST_F(CudaModelTest, Stories260KGreedyEqualsTheCpuBackendAndLlama2c) {
  TESSERA_REQUIRE_MODEL(path, "stories260K/stories260K.bin");
  TESSERA_REQUIRE_MODEL(tok_path, "stories260K/tok512.bin");
  TESSERA_REQUIRE_MODEL(golden_path, "stories260K/greedy-200.txt");
  const ModelData m = load_model(path);
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(tok_path);
  std::ifstream in(golden_path, std::ios::binary);
  std::stringstream golden;
  golden << in.rdbuf();
  CpuBackend cpu(2);
  const GenerationResult want = greedy_from_bos(m, cpu, tok.get(), 200);
  const GenerationResult got = greedy_from_bos(m, gpu(), tok.get(), 200);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.text, golden.str()) << "llama2.c's greedy-200.txt";
  EXPECT_EQ(want.text, golden.str()) << "the CPU backend itself";
}

struct Case {
  const char* scheme;
  size_t prefill;
  int max_batch;
  double tol;
};

TEST_F(CudaModelTest, Stories260KLogitsMatchTheReferenceForEveryWeightType) {
  TESSERA_REQUIRE_MODEL(path, "stories260K/stories260K.bin");
  for (const char* scheme : {"", "int8", "int4:g32"}) {
    ModelData m = load_model(path);
    quantize(m, scheme);
    const std::vector<int> tokens = some_tokens(40, m.config.vocab_size, 5);
    const bool quantized = *scheme != '\0';
    const bool int4 = scheme == std::string("int4:g32");  // tensor cores (fp16 operands) at every chunk size
    // GEMV only (chunks of 8 rows), then the prefill GEMM (one 32-row chunk) and decode.
    for (const Case& k : {Case{scheme, 20, 8, int4 ? 2e-2 : 1e-4}, Case{scheme, 32, 64, quantized ? 2e-2 : 1e-4}}) {
      SCOPED_TRACE(std::string(*scheme ? scheme : "f32") + ", prefill " + std::to_string(k.prefill) + " in chunks of " +
                   std::to_string(k.max_batch));
      ReferenceBackend ref;
      const std::vector<float> want = prefill_decode_logits(m, ref, tokens, k.prefill, k.max_batch);
      const std::vector<float> got = prefill_decode_logits(m, gpu(), tokens, k.prefill, k.max_batch);
      EXPECT_LT(rel_l2(got, want), k.tol);
      if (!int4) {  // CpuBackend is an fp32 twin for f32 and int8 weights
        CpuBackend cpu(2);
        EXPECT_LT(rel_l2(got, prefill_decode_logits(m, cpu, tokens, k.prefill, k.max_batch)), k.tol) << "CpuBackend";
      }
    }
  }
}

// Greedy tokens of several sequences decoded together (forward_batch: one prefill batch, then every decode step
// as one batch) equal each sequence's greedy tokens run alone.
TEST_F(CudaModelTest, Stories260KBatchEqualsEachSequenceAlone) {
  TESSERA_REQUIRE_MODEL(path, "stories260K/stories260K.bin");
  for (const char* scheme : {"", "int8"}) {
    SCOPED_TRACE(*scheme ? scheme : "f32");
    ModelData m = load_model(path);
    quantize(m, scheme);
    const size_t V = static_cast<size_t>(m.config.vocab_size);
    const std::vector<std::vector<int>> prompts{{1, 403, 261}, {1, 67, 93, 11, 300}, {1}, {1, 99, 98, 97, 96, 95, 94}};
    constexpr int kSteps = 24;
    const auto argmax = [&](const float* row) { return static_cast<int>(std::max_element(row, row + V) - row); };
    LlamaModel model(m, gpu(), 64);

    std::vector<std::vector<int>> alone;
    for (const auto& p : prompts) {
      KvCache cache = model.make_cache(64);
      std::vector<float> logits(V);
      model.forward(p, 0, cache, LogitsMode::kLast, logits.data());
      std::vector<int> out{argmax(logits.data())};
      for (int s = 1; s < kSteps; ++s) {
        const int pos = static_cast<int>(p.size()) + s - 1;
        model.forward({&out.back(), 1}, pos, cache, LogitsMode::kLast, logits.data());
        out.push_back(argmax(logits.data()));
      }
      alone.push_back(out);
    }

    std::vector<KvCache> caches;
    for (size_t i = 0; i < prompts.size(); ++i) caches.push_back(model.make_cache(64));
    std::vector<int> tokens;
    std::vector<SequenceChunk> chunks;
    for (size_t i = 0; i < prompts.size(); ++i) {
      tokens.insert(tokens.end(), prompts[i].begin(), prompts[i].end());
      chunks.push_back({&caches[i], 0, static_cast<int>(prompts[i].size()), true});
    }
    std::vector<float> logits(prompts.size() * V);
    std::vector<std::vector<int>> batched(prompts.size());
    for (int s = 0; s < kSteps; ++s) {
      model.forward_batch(tokens, chunks, logits.data());
      tokens.clear();
      for (size_t i = 0; i < prompts.size(); ++i) {
        batched[i].push_back(argmax(logits.data() + i * V));
        tokens.push_back(batched[i].back());
        chunks[i] = {&caches[i], chunks[i].pos0 + chunks[i].n_tokens, 1, true};
      }
    }
    EXPECT_EQ(batched, alone);
  }
}

// A grouped-query model with q/k/v biases and untied embeddings (random weights): 8 query heads over 2 kv heads.
TEST_F(CudaModelTest, GqaModelLogitsMatchTheReference) {
  ModelConfig c = testing::tiny_config(8, 2, /*qkv_bias=*/true, /*tied=*/false);
  c.dim = 128;
  c.head_dim = 16;
  c.hidden_dim = 344;
  c.vocab_size = 97;
  c.max_seq_len = 96;
  for (const char* scheme : {"", "int8", "int4:g32"}) {
    ModelData m = testing::tiny_model(c, DType::F32, 17);
    quantize(m, scheme);
    const std::vector<int> tokens = some_tokens(30, c.vocab_size, 9);
    const bool quantized = *scheme != '\0';
    const bool int4 = scheme == std::string("int4:g32");  // tensor cores (fp16 operands) at every chunk size
    for (const Case& k : {Case{scheme, 12, 8, int4 ? 2e-2 : 1e-4}, Case{scheme, 24, 32, quantized ? 2e-2 : 1e-4}}) {
      SCOPED_TRACE(std::string(*scheme ? scheme : "f32") + ", prefill " + std::to_string(k.prefill) + " in chunks of " +
                   std::to_string(k.max_batch));
      ReferenceBackend ref;
      EXPECT_LT(rel_l2(prefill_decode_logits(m, gpu(), tokens, k.prefill, k.max_batch),
                       prefill_decode_logits(m, ref, tokens, k.prefill, k.max_batch)),
                k.tol);
    }
  }
}

TEST_F(CudaModelTest, ObserversAreRefused) {
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32, 3);
  LlamaModel model(m, gpu(), 8);
  struct Nothing final : ActivationObserver {
    void observe(int, LinearInput, const float*, int, int) override {}
  } observer;
  EXPECT_THROW(model.set_observer(&observer), Error);
}

}  // namespace
}  // namespace tessera
