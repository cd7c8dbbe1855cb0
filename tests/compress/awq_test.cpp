// Activation-aware quantization: the calibration forward, the statistics, folding the scales (exact before
// quantization), and that the search beats plain round-to-nearest where activations have outlier channels.
#include "quant/awq.h"

#include <gtest/gtest.h>

#include <random>

#include "tests/compress/compress_test_util.h"
#include "tests/loaders/test_util.h"

namespace tessera {
namespace {

using quant::CompressOptions;
using quant::QuantSpec;
using test::compress_config;

std::vector<float> logits_on(const ModelData& m, Backend& be, const std::vector<int>& tokens) {
  LlamaModel model(m, be, 64);
  KvCache cache(m.config, static_cast<int>(tokens.size()));
  std::vector<float> logits(tokens.size() * static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kAll, logits.data());
  return logits;
}

TEST(CalibrationBackend, MatchesTheReferenceBackend) {
  ThreadPool pool(3);
  for (const DType dt : {DType::F32, DType::BF16}) {
    for (const bool bias : {false, true}) {
      const ModelData m = testing::tiny_model(compress_config(false, bias), dt, 11);
      const std::vector<int> tokens = test::some_tokens(30, m.config.vocab_size);
      auto be = quant::make_calibration_backend(pool);
      EXPECT_LT(test::rel_l2(logits_on(m, *be, tokens), test::logits_of(m, tokens)), 1e-5);
    }
  }
  // Quantized weights are expanded through the traits table.
  ModelData q = testing::tiny_model(compress_config(), DType::F32, 11);
  quant::CompressOptions o;
  o.default_spec = QuantSpec::parse("int4:g32");
  quant::compress_model(q, o);
  const std::vector<int> tokens = test::some_tokens(20, q.config.vocab_size);
  auto be = quant::make_calibration_backend(pool);
  EXPECT_LT(test::rel_l2(logits_on(q, *be, tokens), test::logits_of(q, tokens)), 1e-5);
}

// Records every projection input on the reference backend.
class Recorder final : public ActivationObserver {
 public:
  void observe(int layer, LinearInput which, const float* x, int n, int cols) override {
    auto& rows = seen[{layer, static_cast<int>(which)}];
    for (int i = 0; i < n; ++i)
      rows.emplace_back(x + static_cast<size_t>(i) * cols, x + static_cast<size_t>(i + 1) * cols);
  }
  std::map<std::pair<int, int>, std::vector<std::vector<float>>> seen;
};

TEST(CalibrationStats, MeansAndSamplesMatchTheActivations) {
  const ModelData m = testing::tiny_model(compress_config(), DType::F32, 4);
  const std::vector<int> tokens = test::some_tokens(40, m.config.vocab_size, 9);
  ThreadPool pool(2);
  quant::CalibrationOptions co;
  co.max_samples = 16;
  const auto stats = quant::collect_activation_stats(m, tokens, pool, co);

  ReferenceBackend be;
  Recorder rec;
  LlamaModel model(m, be, 64);
  model.set_observer(&rec);
  KvCache cache(m.config, 40);
  std::vector<float> logits(static_cast<size_t>(m.config.vocab_size));
  model.forward(tokens, 0, cache, LogitsMode::kLast, logits.data());

  ASSERT_EQ(stats.size(), 2u);
  const int widths[4] = {m.config.dim, m.config.q_dim(), m.config.dim, m.config.hidden_dim};
  for (int l = 0; l < 2; ++l) {
    for (int w = 0; w < 4; ++w) {
      SCOPED_TRACE("layer " + std::to_string(l) + " input " + std::to_string(w));
      const quant::InputStats& s = stats[static_cast<size_t>(l)].inputs[static_cast<size_t>(w)];
      const auto& rows = rec.seen.at({l, w});
      ASSERT_EQ(s.cols, widths[w]);
      ASSERT_EQ(s.rows_seen, 40);
      ASSERT_EQ(s.n_samples, 16);
      for (int c = 0; c < s.cols; ++c) {
        double a = 0, q = 0;
        for (const auto& r : rows) {
          a += std::fabs(r[static_cast<size_t>(c)]);
          q += static_cast<double>(r[static_cast<size_t>(c)]) * r[static_cast<size_t>(c)];
        }
        EXPECT_NEAR(s.mean_abs[static_cast<size_t>(c)], a / 40, 1e-4 * (a / 40) + 1e-7);
        EXPECT_NEAR(s.mean_sq[static_cast<size_t>(c)], q / 40, 1e-4 * (q / 40) + 1e-7);
      }
      // Every sample is (numerically) one of the rows seen.
      for (int i = 0; i < s.n_samples; ++i) {
        const float* sample = s.samples.data() + static_cast<size_t>(i) * s.cols;
        double best = 1e30;
        for (const auto& r : rows) best = std::min(best, test::rel_l2({sample, r.size()}, r));
        EXPECT_LT(best, 1e-5);
      }
    }
  }
}

TEST(CalibrationStats, LongTextsAreChunkedWithBos) {
  const ModelData m = testing::tiny_model(compress_config(), DType::F32, 4);
  ThreadPool pool(2);
  quant::CalibrationOptions co;
  co.max_chunk_tokens = 16;
  co.max_total_tokens = 50;
  std::vector<size_t> progress;
  const auto stats = quant::collect_activation_stats(m, test::some_tokens(70, m.config.vocab_size), pool, co,
                                                     [&](size_t done, size_t) { progress.push_back(done); });
  // 50 tokens: 16, then BOS + 15 three times (45 more) is 61 > 50 -> 16 + 16 + 16 + (BOS + 4) = 4 chunks, 53 rows.
  EXPECT_EQ(stats[0].inputs[0].rows_seen, 53);
  EXPECT_EQ(progress.back(), 4u);
  test::expect_error([&] { quant::collect_activation_stats(m, std::vector<int>{1}, pool); }, {"at least 2 tokens"});
  test::expect_error([&] { quant::collect_activation_stats(m, std::vector<int>{1, 5000}, pool); }, {"5000"});
}

TEST(Awq, ChannelMagnitudesAreSharedWithinGqaGroups) {
  quant::InputStats s;
  s.cols = 12;  // 2 kv heads x 2 query heads x head_dim 3
  s.mean_abs = {1, 2, 3, 3, 4, 5, 10, 0, 1, 20, 0, 3};
  const std::vector<float> m = quant::channel_magnitudes(s, 2, 3);
  const std::vector<float> want = {2, 3, 4, 2, 3, 4, 15, 0, 2, 15, 0, 2};
  for (size_t i = 0; i < 12; ++i) {
    if (want[i] == 0) {
      EXPECT_FLOAT_EQ(m[i], 15e-4f);  // dead channels are raised to 1e-4 of the largest
    } else {
      EXPECT_FLOAT_EQ(m[i], want[i]) << i;
    }
  }
  const std::vector<float> sc = quant::scales_for_alpha(std::vector<float>{1, 4, 16}, 0.5f);
  EXPECT_FLOAT_EQ(sc[0] * sc[2], 1.0f);
  EXPECT_FLOAT_EQ(sc[1], 1.0f);
  for (float v : quant::scales_for_alpha(std::vector<float>{1, 4, 16}, 0.0f)) EXPECT_EQ(v, 1.0f);
}

// A plan of random positive scales (equal within GQA groups for kAttnOut) for every input of every layer.
std::vector<quant::AwqLayerPlan> random_plan(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<quant::AwqLayerPlan> plan(static_cast<size_t>(c.n_layers));
  const int g = c.n_heads / c.n_kv_heads;
  for (auto& p : plan) {
    const int widths[4] = {c.dim, c.q_dim(), c.dim, c.hidden_dim};
    for (int i = 0; i < 4; ++i) {
      auto& s = p.scale[static_cast<size_t>(i)];
      s.resize(static_cast<size_t>(widths[i]));
      for (float& v : s) v = std::exp2(dist(rng));
      p.alpha[static_cast<size_t>(i)] = 0.5f;
    }
    auto& so = p.scale[static_cast<size_t>(LinearInput::kAttnOut)];
    for (int h = 0; h < c.n_heads; ++h)
      for (int d = 0; d < c.head_dim; ++d)
        so[static_cast<size_t>(h * c.head_dim + d)] = so[static_cast<size_t>((h / g) * g * c.head_dim + d)];
  }
  return plan;
}

TEST(Awq, FoldingScalesWithoutQuantizationKeepsTheFunction) {
  for (const bool bias : {false, true}) {
    for (const char* spec : {"f32", "keep"}) {
      SCOPED_TRACE(std::string(spec) + (bias ? " with qkv bias" : ""));
      const ModelConfig cfg = compress_config(false, bias);
      const ModelData ref = testing::tiny_model(cfg, DType::F32, 21);
      ModelData m = testing::tiny_model(cfg, DType::F32, 21);
      CompressOptions o;
      o.default_spec = QuantSpec::parse(spec);
      const quant::CompressReport r = quant::compress_model_with_plan(m, o, random_plan(cfg, 5));
      // Something did change: the norms and every projection (materialised as f32 even under keep).
      EXPECT_GT(test::rel_l2(m.weights.layers[0].attn_norm, ref.weights.layers[0].attn_norm), 0.1);
      EXPECT_GT(test::rel_l2(m.weights.layers[1].ffn_norm, ref.weights.layers[1].ffn_norm), 0.1);
      EXPECT_GT(test::rel_l2(test::dequantized(m.weights.layers[0].wv), test::dequantized(ref.weights.layers[0].wv)),
                0.1);
      EXPECT_NE(m.weights.layers[1].w_up.data, ref.weights.layers[1].w_up.data);
      EXPECT_EQ(m.weights.layers[1].w_up.dtype, DType::F32);
      if (bias) {
        EXPECT_GT(test::rel_l2(m.weights.layers[0].bv, ref.weights.layers[0].bv), 0.1);
      }
      EXPECT_EQ(test::find_report(r, "layers.0.wq").awq_alpha, 0.5);
      EXPECT_EQ(test::find_report(r, "tok_embeddings").awq_alpha, -1.0);
      // ... but the network computes the same function.
      const std::vector<int> tokens = test::some_tokens(24, cfg.vocab_size);
      EXPECT_LT(test::rel_l2(test::logits_of(m, tokens), test::logits_of(ref, tokens)), 1e-5);
    }
  }
}

// X [n][cols]: unit Gaussian activations with a few outlier channels `boost` times larger.
std::vector<float> outlier_activations(int n, int cols, const std::vector<int>& outliers, float boost, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * cols);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < cols; ++c) x[static_cast<size_t>(i) * cols + c] = dist(rng);
  for (int i = 0; i < n; ++i)
    for (int c : outliers) x[static_cast<size_t>(i) * cols + c] *= boost;
  return x;
}

quant::InputStats stats_of(const std::vector<float>& x, int n, int cols) {
  quant::InputStats s;
  s.cols = cols;
  s.rows_seen = n;
  s.n_samples = n;
  s.samples = x;
  s.mean_abs.assign(static_cast<size_t>(cols), 0.0f);
  s.mean_sq.assign(static_cast<size_t>(cols), 0.0f);
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < cols; ++c) {
      const float v = x[static_cast<size_t>(i) * cols + c];
      s.mean_abs[static_cast<size_t>(c)] += std::fabs(v) / n;
      s.mean_sq[static_cast<size_t>(c)] += v * v / n;
    }
  return s;
}

TEST(Awq, SearchBeatsRoundToNearestOnHeldOutActivationsWithOutliers) {
  const int rows = 96, cols = 256, n = 128;
  ModelData holder;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  Matrix w{DType::F32, rows, cols, nullptr};
  auto* buf = reinterpret_cast<float*>(holder.store->allocate(w.bytes()));
  for (int64_t i = 0; i < rows * cols; ++i) buf[i] = dist(rng);
  w.data = buf;
  const std::vector<int> outliers = {5, 40, 41, 130, 200, 255};
  const std::vector<float> train = outlier_activations(n, cols, outliers, 30.0f, 1);
  const std::vector<float> held = outlier_activations(n, cols, outliers, 30.0f, 2);
  const quant::InputStats st = stats_of(train, n, cols);
  ThreadPool pool(2);
  for (const char* spec_text : {"int4:g32", "int4:g128", "int4:g64:asym", "nf4:g64"}) {
    SCOPED_TRACE(spec_text);
    const QuantSpec spec = QuantSpec::parse(spec_text);
    const quant::AwqMember member{&w, spec};
    const quant::AwqSearchResult r =
        quant::search_scales(std::span<const quant::AwqMember>(&member, 1), st, quant::channel_magnitudes(st), pool);
    EXPECT_GT(r.alpha, 0.0f);
    EXPECT_LT(r.error, r.rtn_error);
    std::vector<float> imp(static_cast<size_t>(cols));
    for (int c = 0; c < cols; ++c) imp[static_cast<size_t>(c)] = st.mean_sq[c] / (r.scale[c] * r.scale[c]);
    const double awq = quant::output_error(w, spec, r.scale, held.data(), n, pool, imp);
    const double rtn = quant::output_error(w, spec, {}, held.data(), n, pool);
    double ref = 0;  // ||X W^T||^2, to print relative errors
    for (int i = 0; i < n; ++i)
      for (int o = 0; o < rows; ++o) {
        double y = 0;
        for (int c = 0; c < cols; ++c)
          y += static_cast<double>(held[static_cast<size_t>(i) * cols + c]) * buf[o * cols + c];
        ref += y * y;
      }
    std::printf("[ awq ] %-14s alpha %.1f  held-out relative output error: AWQ %.4f  RTN %.4f\n", spec_text, r.alpha,
                std::sqrt(awq / ref), std::sqrt(rtn / ref));
    EXPECT_LT(awq, 0.7 * rtn);
  }
}

TEST(Awq, SearchIsDeterministicAcrossThreadCounts) {
  const int rows = 40, cols = 96, n = 64;
  ModelData holder;
  Matrix w{DType::F32, rows, cols, nullptr};
  auto* buf = reinterpret_cast<float*>(holder.store->allocate(w.bytes()));
  std::mt19937_64 rng(8);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  for (int64_t i = 0; i < rows * cols; ++i) buf[i] = dist(rng);
  w.data = buf;
  const quant::InputStats st = stats_of(outlier_activations(n, cols, {3, 50}, 10.0f, 5), n, cols);
  const quant::AwqMember member{&w, QuantSpec::parse("int4:g32")};
  ThreadPool one(1), three(3);
  const auto a =
      quant::search_scales(std::span<const quant::AwqMember>(&member, 1), st, quant::channel_magnitudes(st), one);
  const auto b =
      quant::search_scales(std::span<const quant::AwqMember>(&member, 1), st, quant::channel_magnitudes(st), three);
  EXPECT_EQ(a.alpha, b.alpha);
  EXPECT_EQ(a.error, b.error);
  EXPECT_EQ(a.rtn_error, b.rtn_error);
}

// A tiny model whose normalised activations have outlier channels (large norm weights on a few channels).
ModelData outlier_model(uint64_t seed) {
  ModelData m = testing::tiny_model(compress_config(), DType::F32, seed);
  for (auto& l : m.weights.layers) {
    for (int c : {3, 17, 50, 77}) {
      l.attn_norm[static_cast<size_t>(c)] *= 25.0f;
      l.ffn_norm[static_cast<size_t>(c)] *= 25.0f;
    }
  }
  return m;
}

TEST(Awq, ModelWithOutlierChannelsQuantizesBetterThanRoundToNearest) {
  const ModelData ref = outlier_model(31);
  const std::vector<int> calib = test::some_tokens(160, ref.config.vocab_size, 100);
  const std::vector<int> held_out = test::some_tokens(48, ref.config.vocab_size, 200);
  const std::vector<float> want = test::logits_of(ref, held_out);
  for (const char* spec : {"int4:g32", "int4:g128"}) {
    SCOPED_TRACE(spec);
    ModelData rtn = outlier_model(31), awq = outlier_model(31);
    CompressOptions o;
    o.default_spec = QuantSpec::parse(spec);
    o.rules = {quant::QuantRule::parse("tok_embeddings=keep"), quant::QuantRule::parse("lm_head=keep")};
    o.threads = 2;
    const quant::CompressReport rr = quant::compress_model(rtn, o);
    o.activation_aware = true;
    o.calibration_tokens = calib;
    const quant::CompressReport ra = quant::compress_model(awq, o);
    for (const auto& t : ra.tensors) {
      if (t.name.starts_with("layers.")) {
        EXPECT_GE(t.awq_alpha, 0.0) << t.name;
        EXPECT_LE(t.awq_alpha, 1.0) << t.name;
      } else {
        EXPECT_EQ(t.awq_alpha, -1.0) << t.name;
      }
    }
    for (const auto& t : rr.tensors) EXPECT_EQ(t.awq_alpha, -1.0);
    EXPECT_GT(test::find_report(ra, "layers.0.wq").awq_alpha, 0.0);
    EXPECT_EQ(ra.bytes_after, rr.bytes_after);
    const double e_rtn = test::rel_l2(test::logits_of(rtn, held_out), want);
    const double e_awq = test::rel_l2(test::logits_of(awq, held_out), want);
    std::printf("[ awq ] tiny outlier model %-10s held-out logits relative error: AWQ %.4f  RTN %.4f\n", spec, e_awq,
                e_rtn);
    EXPECT_LT(e_awq, e_rtn);
  }
}

TEST(Awq, KeptConsumersOfFoldedScalesAreMaterialisedAsF32) {
  // w_up kept (bf16) while w_down is int4: w_up's rows carry 1/s of the kFfnMid scale, so it must become f32.
  const ModelData ref = outlier_model(41);
  ModelData m = outlier_model(41);
  CompressOptions o;
  o.default_spec = QuantSpec::parse("int4:g32");
  o.rules = {quant::QuantRule::parse("*.w_up=keep"), quant::QuantRule::parse("*.w_gate=keep"),
             quant::QuantRule::parse("tok_embeddings=keep"), quant::QuantRule::parse("lm_head=keep")};
  o.activation_aware = true;
  o.calibration_tokens = test::some_tokens(100, m.config.vocab_size, 7);
  o.threads = 2;
  const void* gates[2] = {m.weights.layers[0].w_gate.data, m.weights.layers[1].w_gate.data};
  const quant::CompressReport r = quant::compress_model(m, o);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const auto& up = test::find_report(r, p + "w_up");
    const auto& gate = test::find_report(r, p + "w_gate");
    // The gate/up group has no 4-bit member: not searched, but w_up still carries w_down's folded scale.
    EXPECT_EQ(gate.awq_alpha, -1.0);
    EXPECT_GE(test::find_report(r, p + "w_down").awq_alpha, 0.0);
    if (test::find_report(r, p + "w_down").awq_alpha > 0.0) {
      EXPECT_EQ(up.scheme, "f32");
      EXPECT_EQ(m.weights.layers[static_cast<size_t>(l)].w_up.dtype, DType::F32);
    }
    EXPECT_EQ(m.weights.layers[static_cast<size_t>(l)].w_gate.data, gates[l]);  // untouched
  }
  const std::vector<int> tokens = test::some_tokens(32, m.config.vocab_size, 9);
  EXPECT_LT(test::rel_l2(test::logits_of(m, tokens), test::logits_of(ref, tokens)), 0.5);
}

}  // namespace
}  // namespace tessera
