#include "loaders/dummy_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "loaders/shard_weights.h"
#include "tests/loaders/test_util.h"

namespace tessera {
namespace {

TEST(LoaderDummy, PresetConfigs) {
  EXPECT_EQ(dummy_preset_names().size(), 5u);
  for (const std::string& name : dummy_preset_names()) {
    const ModelConfig c = dummy_preset_config(name);
    EXPECT_NO_THROW(c.validate(name));
    EXPECT_EQ(c.rope_style, RopeStyle::kHalfSplit);
    EXPECT_FALSE(c.tied_embeddings);
  }
  const ModelConfig t = dummy_preset_config("tinyllama-1.1b");
  EXPECT_EQ(t.dim, 2048);
  EXPECT_EQ(t.hidden_dim, 5632);
  EXPECT_EQ(t.n_layers, 22);
  EXPECT_EQ(t.n_kv_heads, 4);
  EXPECT_EQ(t.head_dim, 64);
  const ModelConfig l3 = dummy_preset_config("llama3-8b");
  EXPECT_EQ(l3.vocab_size, 128256);
  EXPECT_FLOAT_EQ(l3.rope_theta, 500000.0f);
  EXPECT_EQ(dummy_preset_config("llama2-70b").n_layers, 80);
  test::expect_error([] { dummy_preset_config("gpt-5"); }, {"gpt-5", "llama-110m", "llama2-70b"});
}

bool same_matrix(const Matrix& a, const Matrix& b) {
  return a.dtype == b.dtype && a.rows == b.rows && a.cols == b.cols && std::memcmp(a.data, b.data, a.bytes()) == 0;
}

TEST(LoaderDummy, Llama110mBf16ShapesValuesAndDeterminism) {
  const ModelData a = make_dummy_model("llama-110m", DType::BF16, 42);
  const ModelConfig& c = a.config;
  EXPECT_EQ(c.dim, 768);
  EXPECT_EQ(c.hidden_dim, 2048);
  EXPECT_EQ(c.n_layers, 12);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.max_seq_len, 1024);
  const auto& w = a.weights;
  ASSERT_EQ(w.layers.size(), 12u);
  EXPECT_EQ(w.tok_embeddings.rows, 32000);
  EXPECT_EQ(w.lm_head.cols, 768);
  EXPECT_NE(w.lm_head.data, w.tok_embeddings.data);
  const LayerWeights& l = w.layers[11];
  EXPECT_EQ(l.wq.rows, 768);
  EXPECT_EQ(l.wk.rows, 768);
  EXPECT_EQ(l.w_gate.rows, 2048);
  EXPECT_EQ(l.w_down.cols, 2048);
  EXPECT_EQ(l.w_down.dtype, DType::BF16);
  EXPECT_EQ(l.attn_norm, std::vector<float>(768, 1.0f));
  EXPECT_EQ(w.final_norm, std::vector<float>(768, 1.0f));

  // Values finite, inside +-1/sqrt(cols), with both signs and a plausible spread.
  for (const Matrix* m : {&w.tok_embeddings, &l.wq, &l.w_down, &w.lm_head}) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(m->cols)) * 1.01f;
    double sum = 0, sum_sq = 0;
    const int64_t n = std::min<int64_t>(m->rows * m->cols, 200000);
    for (int64_t i = 0; i < n; ++i) {
      const float v = load_as_f32(m->data, m->dtype, static_cast<size_t>(i));
      ASSERT_TRUE(std::isfinite(v));
      ASSERT_LE(std::fabs(v), bound);
      sum += v;
      sum_sq += static_cast<double>(v) * v;
    }
    const double var = sum_sq / static_cast<double>(n), expect_var = bound * bound / 3.0;
    EXPECT_NEAR(sum / static_cast<double>(n), 0.0, 0.02 * bound);
    EXPECT_NEAR(var, expect_var, 0.05 * expect_var);
  }
  EXPECT_FALSE(same_matrix(l.wq, l.wk)) << "tensors must not repeat each other";

  const ModelData b = make_dummy_model("llama-110m", DType::BF16, 42);
  EXPECT_TRUE(same_matrix(a.weights.tok_embeddings, b.weights.tok_embeddings));
  EXPECT_TRUE(same_matrix(a.weights.layers[5].w_up, b.weights.layers[5].w_up));
  EXPECT_TRUE(same_matrix(a.weights.lm_head, b.weights.lm_head));
  const ModelData other = make_dummy_model("llama-110m", DType::BF16, 43);
  EXPECT_FALSE(same_matrix(a.weights.layers[5].w_up, other.weights.layers[5].w_up));
}

TEST(LoaderDummy, DtypesAgree) {
  // The same seed in f32 and f16 gives the same numbers up to f16 rounding.
  const ModelData f32 = make_dummy_model("llama-110m", DType::F32, 7);
  const ModelData f16 = make_dummy_model("llama-110m", DType::F16, 7);
  const Matrix &a = f32.weights.layers[3].wv, &b = f16.weights.layers[3].wv;
  ASSERT_EQ(a.dtype, DType::F32);
  ASSERT_EQ(b.dtype, DType::F16);
  for (size_t i = 0; i < 5000; ++i)
    ASSERT_EQ(f32_to_f16(load_as_f32(a.data, a.dtype, i)), static_cast<const uint16_t*>(b.data)[i]);
}

// A shard generated directly holds exactly the bytes of the whole model cut by shard_weights: the layouts include
// tp 3 (FFN split at odd columns) and two pipeline stages.
TEST(LoaderDummy, ShardGeneratedDirectlyEqualsTheCutWholeModel) {
  const ModelConfig c = dummy_preset_config("llama-110m");
  for (int stage = 0; stage < 2; ++stage) {
    for (int r = 0; r < 3; ++r) {
      ShardRequest q;
      q.tp_size = 3;
      q.tp_rank = r;
      q.pp_size = 2;
      q.pp_stage = stage;
      const ModelShard shard = plan_shard(c, q);
      ModelData cut = make_dummy_model("llama-110m", DType::BF16, 9);
      shard_weights(cut, shard);
      const ModelData direct = make_dummy_model("llama-110m", DType::BF16, 9, &shard);
      SCOPED_TRACE(shard.describe());
      auto same = [](const Matrix& a, const Matrix& b) {
        return a.rows == b.rows && a.cols == b.cols && a.dtype == b.dtype && a.empty() == b.empty() &&
               (a.empty() || std::memcmp(a.data, b.data, a.bytes()) == 0);
      };
      EXPECT_TRUE(same(direct.weights.tok_embeddings, cut.weights.tok_embeddings));
      EXPECT_TRUE(same(direct.weights.lm_head, cut.weights.lm_head));
      EXPECT_EQ(direct.weights.final_norm, cut.weights.final_norm);
      ASSERT_EQ(direct.weights.layers.size(), cut.weights.layers.size());
      for (size_t l = 0; l < cut.weights.layers.size(); ++l) {
        const LayerWeights &a = direct.weights.layers[l], &b = cut.weights.layers[l];
        for (auto m : {&LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo,
                       &LayerWeights::w_gate, &LayerWeights::w_up, &LayerWeights::w_down})
          EXPECT_TRUE(same(a.*m, b.*m)) << "layer " << l;
      }
      EXPECT_EQ(direct.shard.describe(), shard.describe());
    }
  }
}

}  // namespace
}  // namespace tessera
