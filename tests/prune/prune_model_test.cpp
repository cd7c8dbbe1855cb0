// prune_model and its place in the compression pipeline, on small random models: exact sparsity per tensor and
// dtype kept; rules; Wanda's mask against activation norms recorded here independently; SparseGPT's lower output
// error; structured pruning equal to the dense model with the removed channels / heads zeroed (an independent
// construction of the same function); 2:4 pruning + int8/int4 stored in the compressed types.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/core/check.h"
#include "quant/compress.h"
#include "quant/prune.h"
#include "tests/compress/compress_test_util.h"

namespace tessera {
namespace {

using test::compress_config;
using test::dequantized;
using test::logits_of;
using test::rel_l2;
using test::some_tokens;

quant::PruneOptions options(const std::string& spec, std::vector<std::string> rules = {}, int multiple = 2) {
  quant::PruneOptions o;
  o.default_spec = quant::PruneSpec::parse(spec);
  for (const auto& r : rules) o.rules.push_back(quant::PruneRule::parse(r));
  o.multiple = multiple;
  return o;
}

const quant::PruneTensorReport* find(const quant::PruneReport& r, const std::string& name) {
  for (const auto& t : r.tensors)
    if (t.name == name) return &t;
  return nullptr;
}

double zero_fraction(const Matrix& m) {
  const std::vector<float> w = dequantized(m);
  return static_cast<double>(std::count(w.begin(), w.end(), 0.0f)) / static_cast<double>(w.size());
}

TEST(PruneModel, MagnitudeHitsTheSparsityOfEveryProjectionAndKeepsSurvivorsExact) {
  ModelData m = testing::tiny_model(compress_config(), DType::BF16, 4);
  const ModelData orig = testing::tiny_model(compress_config(), DType::BF16, 4);
  ThreadPool pool(2);
  const quant::PruneReport r = quant::prune_model(m, options("magnitude:0.6"), {}, pool);
  EXPECT_EQ(r.tensors.size(), 14u);  // 2 layers x 7 projections; lm_head only through a rule
  for (size_t l = 0; l < 2; ++l) {
    const auto& a = m.weights.layers[l];
    const auto& b = orig.weights.layers[l];
    const Matrix* pa[] = {&a.wq, &a.wk, &a.wv, &a.wo, &a.w_gate, &a.w_up, &a.w_down};
    const Matrix* pb[] = {&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down};
    for (int p = 0; p < 7; ++p) {
      EXPECT_EQ(pa[p]->dtype, DType::BF16);
      const double n = static_cast<double>(pa[p]->rows * pa[p]->cols);
      EXPECT_NEAR(zero_fraction(*pa[p]), 0.6, 0.51 / n);
      const std::vector<float> wa = dequantized(*pa[p]), wb = dequantized(*pb[p]);
      float kept_min = INFINITY, removed_max = 0.0f;
      for (size_t i = 0; i < wa.size(); ++i) {
        if (wa[i] != 0.0f) {
          EXPECT_EQ(wa[i], wb[i]);
          kept_min = std::min(kept_min, std::fabs(wb[i]));
        } else {
          removed_max = std::max(removed_max, std::fabs(wb[i]));
        }
      }
      EXPECT_LE(removed_max, kept_min);
    }
  }
  EXPECT_TRUE(test::same_bytes(m.weights.lm_head, orig.weights.lm_head));
  const auto* t = find(r, "layers.1.w_down");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->spec, "magnitude:0.6");
  EXPECT_NEAR(t->zeros_after, 0.6, 1e-3);
  EXPECT_GT(t->relative_change, 0.1);
}

TEST(PruneModel, RulesOverrideTheDefaultAndTyposAreErrors) {
  ThreadPool pool(2);
  {
    ModelData m = testing::tiny_model(compress_config(), DType::F32, 5);
    const ModelData orig = testing::tiny_model(compress_config(), DType::F32, 5);
    const auto r =
        quant::prune_model(m, options("magnitude:0.5", {"layers.0.*=none", "lm_head=magnitude:4:8"}), {}, pool);
    EXPECT_TRUE(test::same_bytes(m.weights.layers[0].wq, orig.weights.layers[0].wq));
    EXPECT_NEAR(zero_fraction(m.weights.layers[1].wq), 0.5, 1e-3);
    EXPECT_NEAR(zero_fraction(m.weights.lm_head), 0.5, 1e-3);
    EXPECT_NE(find(r, "lm_head"), nullptr);
  }
  for (const char* bad : {"layers.9.*=magnitude:0.5", "layers.0.wq=structured:0.5", "layers.*.ffn=wanda:0.5"}) {
    ModelData m = testing::tiny_model(compress_config(), DType::F32, 5);
    EXPECT_THROW(quant::prune_model(m, options("none", {bad}), {}, pool), Error) << bad;
  }
  ModelData m = testing::tiny_model(compress_config(), DType::F32, 5);
  EXPECT_THROW(quant::prune_model(m, options("wanda:0.5"), {}, pool), Error);  // no calibration text
}

// Records the rows of one layer input during a forward pass (independent of the pruning code's observer).
class Recorder final : public ActivationObserver {
 public:
  Recorder(int layer, LinearInput which) : layer_(layer), which_(which) {}
  void observe(int layer, LinearInput which, const float* x, int n, int cols) override {
    if (layer != layer_ || which != which_) return;
    rows.insert(rows.end(), x, x + static_cast<size_t>(n) * cols);
    this->cols = cols;
  }
  std::vector<float> rows;
  int cols = 0;

 private:
  int layer_;
  LinearInput which_;
};

Recorder record(const ModelData& m, const std::vector<int>& tokens, int layer, LinearInput which) {
  ReferenceBackend be;
  LlamaModel model(m, be, 512);
  Recorder rec(layer, which);
  model.set_observer(&rec);
  KvCache cache(m.config, static_cast<int>(tokens.size()));
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kLast, logits.data());
  return rec;
}

TEST(PruneModel, WandaRemovesTheSmallestWeightTimesInputNormOfEveryRow) {
  const ModelData orig = testing::tiny_model(compress_config(), DType::F32, 6);
  ModelData m = testing::tiny_model(compress_config(), DType::F32, 6);
  const std::vector<int> tokens = some_tokens(60, compress_config().vocab_size);
  ThreadPool pool(2);
  quant::prune_model(m, options("wanda:0.5"), tokens, pool);
  // Layer 0's inputs do not depend on any pruned weight: record them on the original model.
  const Recorder rec = record(orig, tokens, 0, LinearInput::kFfnIn);
  std::vector<double> norm(static_cast<size_t>(rec.cols));
  for (size_t i = 0; i < rec.rows.size(); ++i) norm[i % norm.size()] += static_cast<double>(rec.rows[i]) * rec.rows[i];
  for (double& v : norm) v = std::sqrt(v);
  const std::vector<float> before = dequantized(orig.weights.layers[0].w_gate);
  const std::vector<float> after = dequantized(m.weights.layers[0].w_gate);
  const int64_t cols = rec.cols;
  for (int64_t r = 0; r < orig.weights.layers[0].w_gate.rows; ++r) {
    std::vector<std::pair<double, int64_t>> s;
    for (int64_t c = 0; c < cols; ++c) s.emplace_back(std::fabs(before[r * cols + c]) * norm[c], c);
    std::sort(s.begin(), s.end());
    for (int64_t i = 0; i < cols; ++i) {
      const int64_t c = s[static_cast<size_t>(i)].second;
      EXPECT_EQ(after[r * cols + c], i < cols / 2 ? 0.0f : before[r * cols + c]) << "row " << r << " col " << c;
    }
  }
}

TEST(PruneModel, SparseGptHasLowerLayerOutputErrorThanMagnitudeAndWanda) {
  const ModelData orig = testing::tiny_model(compress_config(), DType::F32, 7);
  const std::vector<int> tokens = some_tokens(90, compress_config().vocab_size, 5);
  ThreadPool pool(2);
  const Recorder rec = record(orig, tokens, 0, LinearInput::kAttnIn);
  const std::vector<float> w0 = dequantized(orig.weights.layers[0].wq);
  auto error_of = [&](const std::string& spec) {
    ModelData m = testing::tiny_model(compress_config(), DType::F32, 7);
    quant::prune_model(m, options(spec), tokens, pool);
    const std::vector<float> w = dequantized(m.weights.layers[0].wq);
    const int64_t rows = m.weights.layers[0].wq.rows, cols = rec.cols;
    const int64_t n = static_cast<int64_t>(rec.rows.size()) / cols;
    double e = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t r = 0; r < rows; ++r) {
        double d = 0;
        for (int64_t c = 0; c < cols; ++c)
          d += static_cast<double>(rec.rows[i * cols + c]) * (w[r * cols + c] - w0[r * cols + c]);
        e += d * d;
      }
    return e;
  };
  for (const char* s : {"0.5", "2:4"}) {
    const double sg = error_of(std::string("sparsegpt:") + s), wa = error_of(std::string("wanda:") + s),
                 mg = error_of(std::string("magnitude:") + s);
    EXPECT_LT(sg, wa) << s;
    EXPECT_LT(sg, mg) << s;
  }
}

TEST(PruneModel, StructuredFfnEqualsZeroingTheRemovedChannels) {
  for (bool calibrated : {false, true}) {
    const ModelData orig = testing::tiny_model(compress_config(), DType::F16, 8);
    ModelData m = testing::tiny_model(compress_config(), DType::F16, 8);
    ModelData zeroed = testing::tiny_model(compress_config(), DType::F16, 8);
    const std::vector<int> tokens = some_tokens(40, compress_config().vocab_size);
    ThreadPool pool(2);
    const auto r = quant::prune_model(m, options("structured-ffn:0.3"), calibrated ? tokens : std::vector<int>{}, pool);
    EXPECT_EQ(m.config.hidden_dim, 140);  // 200 * 0.7
    for (size_t l = 0; l < 2; ++l) {
      EXPECT_EQ(m.weights.layers[l].w_gate.rows, 140);
      EXPECT_EQ(m.weights.layers[l].w_up.rows, 140);
      EXPECT_EQ(m.weights.layers[l].w_down.cols, 140);
      EXPECT_EQ(m.weights.layers[l].w_down.dtype, DType::F16);
      const auto* t = find(r, "layers." + std::to_string(l) + ".w_down");
      ASSERT_NE(t, nullptr);
      ASSERT_EQ(t->removed_cols.size(), 60u);
      // The same function: the original (its f16 values as f32) with w_down's removed columns zeroed.
      Matrix& wd = zeroed.weights.layers[l].w_down;
      wd.dtype = DType::F32;
      std::vector<float> w = dequantized(orig.weights.layers[l].w_down);
      for (int64_t rr = 0; rr < wd.rows; ++rr)
        for (int c : t->removed_cols) w[static_cast<size_t>(rr * wd.cols + c)] = 0.0f;
      uint8_t* buf = zeroed.store->allocate(w.size() * 4);
      std::memcpy(buf, w.data(), w.size() * 4);
      wd.data = buf;
      for (auto [dst, src] : {std::pair{&zeroed.weights.layers[l].w_gate, &orig.weights.layers[l].w_gate},
                              std::pair{&zeroed.weights.layers[l].w_up, &orig.weights.layers[l].w_up}}) {
        const std::vector<float> v = dequantized(*src);
        uint8_t* b = zeroed.store->allocate(v.size() * 4);
        std::memcpy(b, v.data(), v.size() * 4);
        dst->data = b;
        dst->dtype = DType::F32;
      }
    }
    const std::vector<int> probe = some_tokens(12, compress_config().vocab_size, 9);
    EXPECT_LT(rel_l2(logits_of(m, probe), logits_of(zeroed, probe)), 1e-5) << "calibrated " << calibrated;
  }
}

TEST(PruneModel, StructuredAttentionRemovesWholeKvGroups) {
  const ModelConfig c = test::gqa_compress_config();
  const ModelData orig = testing::tiny_model(c, DType::F32, 9);
  ModelData m = testing::tiny_model(c, DType::F32, 9);
  ThreadPool pool(2);
  const auto r = quant::prune_model(m, options("structured-attn:0.5"), {}, pool);
  EXPECT_EQ(m.config.n_kv_heads, 2);
  EXPECT_EQ(m.config.n_heads, 4);
  EXPECT_EQ(m.weights.layers[0].wq.rows, 48);
  EXPECT_EQ(m.weights.layers[0].wk.rows, 24);
  EXPECT_EQ(m.weights.layers[0].wo.cols, 48);
  EXPECT_EQ(m.weights.layers[0].bq.size(), 48u);
  EXPECT_EQ(m.weights.layers[0].bv.size(), 24u);
  // Same function: the original with the removed heads' wo columns zeroed (their attention output is then unused).
  ModelData zeroed = testing::tiny_model(c, DType::F32, 9);
  for (size_t l = 0; l < 2; ++l) {
    const auto* t = find(r, "layers." + std::to_string(l) + ".wo");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->removed_cols.size(), 48u);
    // Removed columns come in whole KV groups: 2 query heads x 12 channels, aligned.
    for (size_t i = 0; i < t->removed_cols.size(); ++i) EXPECT_EQ(t->removed_cols[i] % 24, static_cast<int>(i % 24));
    Matrix& wo = zeroed.weights.layers[l].wo;
    std::vector<float> w = dequantized(wo);
    for (int64_t rr = 0; rr < wo.rows; ++rr)
      for (int col : t->removed_cols) w[static_cast<size_t>(rr * wo.cols + col)] = 0.0f;
    uint8_t* buf = zeroed.store->allocate(w.size() * 4);
    std::memcpy(buf, w.data(), w.size() * 4);
    wo.data = buf;
  }
  const std::vector<int> probe = some_tokens(12, c.vocab_size, 9);
  EXPECT_LT(rel_l2(logits_of(m, probe), logits_of(zeroed, probe)), 1e-5);
  (void)orig;
}

// Per-layer rules remove different amounts in different layers: each layer keeps its own widths, the config the
// widest, and the model computes what the original does with the removed channels' and heads' outputs zeroed.
TEST(PruneModel, StructuredAmountsMayDifferPerLayer) {
  const ModelConfig c = test::gqa_compress_config();
  ModelData m = testing::tiny_model(c, DType::F32, 10);
  ThreadPool pool(2);
  const auto r = quant::prune_model(
      m,
      options("none", {"layers.0.ffn=structured:0.3", "layers.1.ffn=structured:0.6", "layers.1.attn=structured:0.5"}),
      {}, pool);
  EXPECT_EQ(m.weights.layers[0].w_gate.rows, 140);
  EXPECT_EQ(m.weights.layers[1].w_gate.rows, 80);
  EXPECT_EQ(m.weights.layers[0].wq.rows, 96);  // layer 0's attention untouched
  EXPECT_EQ(m.weights.layers[1].wq.rows, 48);
  EXPECT_EQ(m.weights.layers[1].wk.rows, 24);
  EXPECT_EQ(m.config.hidden_dim, 140);
  EXPECT_EQ(m.config.n_kv_heads, 4);
  EXPECT_EQ(m.config.n_heads, 8);

  ModelData zeroed = testing::tiny_model(c, DType::F32, 10);
  const auto zero_cols = [&](Matrix& w, const std::vector<int>& cols) {
    std::vector<float> v = dequantized(w);
    for (int64_t rr = 0; rr < w.rows; ++rr)
      for (int col : cols) v[static_cast<size_t>(rr * w.cols + col)] = 0.0f;
    uint8_t* buf = zeroed.store->allocate(v.size() * 4);
    std::memcpy(buf, v.data(), v.size() * 4);
    w.data = buf;
  };
  for (int l = 0; l < 2; ++l) {
    const auto* down = find(r, "layers." + std::to_string(l) + ".w_down");
    ASSERT_NE(down, nullptr);
    zero_cols(zeroed.weights.layers[static_cast<size_t>(l)].w_down, down->removed_cols);
  }
  const auto* wo = find(r, "layers.1.wo");
  ASSERT_NE(wo, nullptr);
  EXPECT_EQ(find(r, "layers.0.wo"), nullptr);
  zero_cols(zeroed.weights.layers[1].wo, wo->removed_cols);
  const std::vector<int> probe = some_tokens(12, c.vocab_size, 9);
  EXPECT_LT(rel_l2(logits_of(m, probe), logits_of(zeroed, probe)), 1e-5);
}

TEST(PruneModel, TwoOfFourWithInt8OrInt4IsStoredCompressed) {
  for (const char* scheme : {"int8", "int4:g32"}) {
    ModelData m = testing::tiny_model(compress_config(), DType::F32, 10);
    const ModelData orig = testing::tiny_model(compress_config(), DType::F32, 10);
    quant::CompressOptions o;
    o.default_spec = quant::QuantSpec::parse(scheme);
    o.rules.push_back(quant::QuantRule::parse("lm_head=int8"));
    o.prune = options("magnitude:2:4");
    const quant::CompressReport r = quant::compress_model(m, o);
    const DType want = std::string(scheme) == "int8" ? DType::S24Q8 : DType::S24Q4;
    for (const auto& l : m.weights.layers)
      for (const Matrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) EXPECT_EQ(w->dtype, want);
    EXPECT_EQ(m.weights.lm_head.dtype, DType::Q8);  // not pruned: dense int8
    const auto& t = test::find_report(r, "layers.0.w_up");
    ASSERT_TRUE(t.pruning.has_value());
    EXPECT_EQ(t.scheme, std::string(dtype_name(want)));
    const Matrix& w_up = m.weights.layers[0].w_up;
    const size_t dense =
        static_cast<size_t>(w_up.rows) * dtype_row_bytes(want == DType::S24Q8 ? DType::Q8 : DType::Q4, w_up.cols, 32);
    EXPECT_LT(t.bytes_after, dense) << "2:4 storage must be smaller than the dense scheme";
    // Pruned where magnitude 2:4 prunes, the survivors within the quantization step.
    const std::vector<float> a = dequantized(m.weights.layers[0].w_up), b = dequantized(orig.weights.layers[0].w_up);
    ASSERT_EQ(m.weights.layers[0].w_up.cols % 4, 0);  // rows hold whole groups of 4
    for (size_t g = 0; g < a.size(); g += 4) EXPECT_GE(std::count(a.begin() + g, a.begin() + g + 4, 0.0f), 2) << g;
    EXPECT_LT(rel_l2(a, b), want == DType::S24Q8 ? 0.75 : 0.8);
    // The model runs on the CPU backend like the dense reference (decode uses int8 activation blocks).
    const std::vector<int> probe = some_tokens(10, compress_config().vocab_size, 4);
    CpuBackend cpu(2);
    LlamaModel lm(m, cpu, 64);
    KvCache cache(m.config, 10);
    std::vector<float> logits(10 * static_cast<size_t>(m.config.vocab_size));
    lm.forward(probe, 0, cache, LogitsMode::kAll, logits.data());
    EXPECT_LT(rel_l2(logits, logits_of(m, probe)), 1e-4) << scheme;
  }
}

}  // namespace
}  // namespace tessera
