// The model run on the optimized CPU backend against the same model on the reference backend, and the
// prefill/decode/chunking equivalences. (End-to-end numbers against an independent NumPy forward pass are in
// tests/integration.)
#include "engine/model/llama_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/reference_backend.h"
#include "engine/core/check.h"
#include "engine/model/rope.h"
#include "tests/model/tiny_model.h"

namespace tessera {
namespace {

double rel_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<float> run_prefill(const ModelData& m, Backend& be, const std::vector<int>& tokens, int max_batch) {
  LlamaModel model(m, be, max_batch);
  KvCache cache(m.config, static_cast<int>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kAll, logits.data());
  return logits;
}

std::vector<float> run_decode(const ModelData& m, Backend& be, const std::vector<int>& tokens) {
  LlamaModel model(m, be, 4);
  KvCache cache(m.config, static_cast<int>(tokens.size()));
  const size_t V = static_cast<size_t>(m.config.vocab_size);
  std::vector<float> logits(tokens.size() * V);
  for (size_t i = 0; i < tokens.size(); ++i)
    model.forward(std::span<const int>(&tokens[i], 1), static_cast<int>(i), cache, LogitsMode::kLast,
                  logits.data() + i * V);
  return logits;
}

struct Case {
  const char* name;
  ModelConfig config;
  DType dtype;
};

class ModelVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(ModelVsReference, PrefillDecodeAndChunksAgree) {
  const Case& c = GetParam();
  const ModelData m = testing::tiny_model(c.config, c.dtype);
  const std::vector<int> tokens{1, 5, 9, 60, 0, 33, 33, 7, 12, 41, 2};
  const size_t V = static_cast<size_t>(c.config.vocab_size);
  ReferenceBackend ref;
  const std::vector<float> expected = run_prefill(m, ref, tokens, 64);
  for (int threads : {1, 3}) {
    CpuBackend cpu(threads);
    const auto prefill = run_prefill(m, cpu, tokens, 64);
    const auto chunked = run_prefill(m, cpu, tokens, 3);
    const auto decode = run_decode(m, cpu, tokens);
    for (size_t i = 0; i < tokens.size(); ++i) {
      EXPECT_LT(rel_l2(&prefill[i * V], &expected[i * V], V), 1e-5) << "prefill pos " << i << " threads " << threads;
      EXPECT_LT(rel_l2(&chunked[i * V], &expected[i * V], V), 1e-5) << "chunked pos " << i;
      EXPECT_LT(rel_l2(&decode[i * V], &expected[i * V], V), 1e-5) << "decode pos " << i;
    }
  }
}

ModelConfig with_rope(ModelConfig c, RopeStyle s) {
  c.rope_style = s;
  return c;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ModelVsReference,
    ::testing::Values(Case{"gqa_f32", testing::tiny_config(4, 2), DType::F32},
                      Case{"mha_bf16", testing::tiny_config(4, 4), DType::BF16},
                      Case{"mqa_f16", testing::tiny_config(4, 1), DType::F16},
                      Case{"bias_tied", testing::tiny_config(4, 2, true, true), DType::F32},
                      Case{"interleaved", with_rope(testing::tiny_config(4, 2), RopeStyle::kInterleaved), DType::F32}),
    [](const ::testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

TEST(LlamaModel, RejectsTokensOutsideVocabAndContext) {
  const ModelData m = testing::tiny_model(testing::tiny_config(), DType::F32);
  ReferenceBackend be;
  LlamaModel model(m, be);
  KvCache cache(m.config, 4);
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size) * 8);
  const std::vector<int> bad{1, 61};
  EXPECT_THROW(model.forward(bad, 0, cache, LogitsMode::kLast, logits.data()), Error);
  const std::vector<int> too_long{1, 2, 3, 4, 5};
  EXPECT_THROW(model.forward(too_long, 0, cache, LogitsMode::kLast, logits.data()), Error);
}

TEST(Rope, Llama3ScalingFollowsThePublishedRule) {
  ModelConfig c = testing::tiny_config();
  c.head_dim = 128;
  c.rope_theta = 500000.0f;
  c.rope_scaling = RopeScaling{true, 8.0f, 1.0f, 4.0f, 8192};
  const auto inv = rope_inverse_frequencies(c);
  ASSERT_EQ(inv.size(), 64u);
  // High frequency (wavelength < 8192/4): unchanged. Low frequency (> 8192): divided by 8.
  EXPECT_DOUBLE_EQ(inv[0], 1.0);
  const double base_last = 1.0 / std::pow(500000.0, 126.0 / 128.0);
  EXPECT_NEAR(inv[63], base_last / 8.0, 1e-15);
  // In between: (1 - s) * f / 8 + s * f with s = (8192 / wavelength - 1) / 3.
  for (int i = 0; i < 64; ++i) {
    const double f = 1.0 / std::pow(500000.0, 2.0 * i / 128.0);
    const double wavelen = 2 * std::numbers::pi / f;
    if (wavelen >= 2048 && wavelen <= 8192) {
      const double s = (8192 / wavelen - 1.0) / 3.0;
      EXPECT_NEAR(inv[i], (1 - s) * f / 8 + s * f, 1e-12 * f) << i;
    }
  }
}

}  // namespace
}  // namespace tessera
