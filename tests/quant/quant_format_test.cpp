// The quantized weight formats: traits table, reference quantize/dequantize round trips and their error bounds,
// hand-computed blocks, the importance-weighted scale search, activation blocks, and QuantSpec.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/core/check.h"
#include "engine/core/dtype.h"
#include "quant/blocks.h"
#include "quant/quant_spec.h"
#include "quant/quant_traits.h"

namespace tessera::quant {
namespace {

constexpr DType kQuantTypes[] = {DType::Q8, DType::Q4, DType::Q4A, DType::NF4};
constexpr int kCols[] = {1, 7, 33, 100, 172, 257, 4096};

std::vector<float> gaussian(std::mt19937& rng, size_t n, float sigma = 0.02f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

int nibble(const uint8_t* qs, int group, int j) {
  return j < group / 2 ? qs[j] & 0x0f : qs[j - group / 2] >> 4;
}

size_t block_bytes(DType t, int g) {
  return dtype_row_bytes(t, g, g);
}

std::vector<uint8_t> quantize(DType t, const std::vector<float>& x, int group, const float* importance = nullptr) {
  std::vector<uint8_t> row(dtype_row_bytes(t, static_cast<int64_t>(x.size()), group), 0xAB);
  quant_traits(t).quantize_row(x.data(), static_cast<int64_t>(x.size()), group, importance, row.data());
  return row;
}

std::vector<float> dequantize(DType t, const std::vector<uint8_t>& row, int64_t cols, int group) {
  std::vector<float> y(static_cast<size_t>(cols), std::nanf(""));
  quant_traits(t).dequantize_row(row.data(), cols, group, y.data());
  return y;
}

double weighted_error(const std::vector<float>& x, const std::vector<float>& y, const std::vector<float>& w) {
  double e = 0;
  for (size_t i = 0; i < x.size(); ++i)
    e += w[i] * (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
  return e;
}

TEST(QuantTraits, Table) {
  for (DType t : kQuantTypes) {
    const QuantTraits& tr = quant_traits(t);
    EXPECT_EQ(tr.dtype, t);
    EXPECT_EQ(tr.grouped, is_grouped(t));
    EXPECT_EQ(std::string(tr.name), std::string(dtype_name(t)));
    EXPECT_NE(tr.quantize_row, nullptr);
    EXPECT_NE(tr.dequantize_row, nullptr);
  }
  EXPECT_EQ(block_bytes(DType::Q4, 32), sizeof(BlockQ4<32>));
  EXPECT_EQ(block_bytes(DType::Q4, 128), sizeof(BlockQ4<128>));
  EXPECT_EQ(block_bytes(DType::Q4A, 64), sizeof(BlockQ4A<64>));
  EXPECT_EQ(block_bytes(DType::NF4, 64), sizeof(BlockNF4<64>));
}

TEST(QuantTraitsDeathTest, PlainTypeHasNoTraits) {
  EXPECT_DEATH(quant_traits(DType::BF16), "no quantization traits");
}

// ---- Round trips and per-element bounds ----

TEST(QuantRoundTrip, Q8ErrorAtMostHalfScale) {
  std::mt19937 rng(1);
  for (int cols : kCols) {
    SCOPED_TRACE(cols);
    const auto x = gaussian(rng, static_cast<size_t>(cols));
    const auto row = quantize(DType::Q8, x, 0);
    float scale;
    std::memcpy(&scale, row.data(), 4);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    EXPECT_FLOAT_EQ(scale, amax / 127.0f);
    const auto y = dequantize(DType::Q8, row, cols, 0);
    for (int i = 0; i < cols; ++i) ASSERT_LE(std::fabs(x[i] - y[i]), scale * 0.5f * (1 + 1e-5f)) << i;
    for (size_t i = 4 + static_cast<size_t>(cols); i < row.size(); ++i) EXPECT_EQ(row[i], 0) << "padding " << i;
  }
}

// Q4: every element within |d|/2, except values clamped at q = 15 (q4_0's asymmetric range), within |d|.
TEST(QuantRoundTrip, Q4ErrorBound) {
  std::mt19937 rng(2);
  for (int g : kGroupSizes) {
    for (int cols : kCols) {
      SCOPED_TRACE(::testing::Message() << "g=" << g << " cols=" << cols);
      const auto x = gaussian(rng, static_cast<size_t>(cols));
      const auto row = quantize(DType::Q4, x, g);
      ASSERT_EQ(row.size(), static_cast<size_t>((cols + g - 1) / g) * block_bytes(DType::Q4, g));
      const auto y = dequantize(DType::Q4, row, cols, g);
      for (int i = 0; i < cols; ++i) {
        const uint8_t* blk = row.data() + static_cast<size_t>(i / g) * block_bytes(DType::Q4, g);
        const float d = std::fabs(half_at(blk));
        const int q = nibble(blk + 2, g, i % g);
        const float bound = (q == 15 ? d : 0.5f * d) * (1 + 1e-5f) + 1e-12f;
        ASSERT_LE(std::fabs(x[i] - y[i]), bound) << "i=" << i << " q=" << q;
      }
      // The ragged tail of the last block decodes to exactly zero (q = 8).
      if (cols % g != 0) {
        const int64_t padded = (cols + g - 1) / g * g;
        const auto full = dequantize(DType::Q4, row, padded, g);
        for (int64_t i = cols; i < padded; ++i) ASSERT_EQ(full[static_cast<size_t>(i)], 0.0f) << i;
      }
    }
  }
}

// Per group, RTN keeps the better of the two symmetric scale rules (d = max/-8, d = absmax/7).
TEST(QuantRoundTrip, Q4PicksTheBetterScaleRule) {
  std::mt19937 rng(3);
  for (int g : kGroupSizes) {
    for (int rep = 0; rep < 50; ++rep) {
      auto x = gaussian(rng, static_cast<size_t>(g), 1.0f);
      if (rep % 2 == 0) {  // put the opposite extreme near -max so rule (b) has a chance
        size_t im = 0;
        for (size_t i = 0; i < x.size(); ++i) im = std::fabs(x[i]) > std::fabs(x[im]) ? i : im;
        x[(im + 1) % x.size()] = -x[im] * 0.99f;
      }
      const auto y = dequantize(DType::Q4, quantize(DType::Q4, x, g), g, g);
      float amax = 0, maxv = 0;
      for (float v : x) {
        if (std::fabs(v) > amax) {
          amax = std::fabs(v);
          maxv = v;
        }
      }
      const auto sse_of = [&](float d) {
        double e = 0;
        for (float v : x) {
          const int q = std::min(15, std::max(0, static_cast<int>(std::nearbyint(v / d)) + 8));
          e += (v - d * (q - 8)) * (v - d * (q - 8));
        }
        return e;
      };
      const double ea = sse_of(f16_to_f32(f32_to_f16(maxv / -8.0f)));
      const double eb = sse_of(f16_to_f32(f32_to_f16(amax / 7.0f)));
      const double got = weighted_error(x, y, std::vector<float>(x.size(), 1.0f));
      EXPECT_LE(got, std::min(ea, eb) * (1 + 1e-6) + 1e-12) << "g=" << g << " rep=" << rep;
    }
  }
}

TEST(QuantRoundTrip, Q4AErrorBound) {
  std::mt19937 rng(4);
  for (int g : kGroupSizes) {
    for (int cols : kCols) {
      SCOPED_TRACE(::testing::Message() << "g=" << g << " cols=" << cols);
      auto x = gaussian(rng, static_cast<size_t>(cols));
      for (auto& v : x) v += 0.01f;  // groups off-centre
      const auto row = quantize(DType::Q4A, x, g);
      const auto y = dequantize(DType::Q4A, row, cols, g);
      for (int b0 = 0; b0 < cols; b0 += g) {
        const uint8_t* blk = row.data() + static_cast<size_t>(b0 / g) * block_bytes(DType::Q4A, g);
        const float d = half_at(blk);
        float lo = x[b0], hi = x[b0];
        for (int i = b0; i < std::min(cols, b0 + g); ++i) {
          lo = std::min(lo, x[i]);
          hi = std::max(hi, x[i]);
        }
        // m = group minimum rounded down to fp16, d = (max - m) / 15 rounded up: the range is covered.
        const float m = half_at(blk + 2);
        EXPECT_LE(m, lo);
        EXPECT_NEAR(m, lo, std::fabs(lo) / 1024 + 1e-7f);
        EXPECT_GE(d * 15, hi - m);
        EXPECT_NEAR(d, (hi - m) / 15, (hi - m) / 15 / 512 + 1e-7f);
        const float bound = 0.5f * d * (1 + 1e-4f) + 1e-9f;
        for (int i = b0; i < std::min(cols, b0 + g); ++i) ASSERT_LE(std::fabs(x[i] - y[i]), bound) << i;
      }
    }
  }
}

TEST(QuantRoundTrip, Nf4PicksNearestLevel) {
  std::mt19937 rng(5);
  for (int g : kGroupSizes) {
    for (int cols : kCols) {
      SCOPED_TRACE(::testing::Message() << "g=" << g << " cols=" << cols);
      const auto x = gaussian(rng, static_cast<size_t>(cols));
      const auto row = quantize(DType::NF4, x, g);
      const auto y = dequantize(DType::NF4, row, cols, g);
      for (int i = 0; i < cols; ++i) {
        const uint8_t* blk = row.data() + static_cast<size_t>(i / g) * block_bytes(DType::NF4, g);
        const float d = half_at(blk);
        const int q = nibble(blk + 2, g, i % g);
        ASSERT_EQ(y[i], d * kNf4Levels[q]);
        const float v = x[i] / d;
        for (int k = 0; k < 16; ++k) {
          ASSERT_LE(std::fabs(v - kNf4Levels[q]), std::fabs(v - kNf4Levels[k]) + 1e-6f) << "i=" << i << " k=" << k;
        }
      }
      if (cols % g != 0) {
        const int64_t padded = (cols + g - 1) / g * g;
        const auto full = dequantize(DType::NF4, row, padded, g);
        for (int64_t i = cols; i < padded; ++i) ASSERT_EQ(full[static_cast<size_t>(i)], 0.0f) << i;
      }
    }
  }
}

// Typical relative errors on Gaussian weights: a regression guard for the quantizers as a whole.
TEST(QuantRoundTrip, RelativeErrorOnGaussianWeights) {
  std::mt19937 rng(6);
  const auto x = gaussian(rng, 8192);
  const auto rel = [&](DType t, int g) {
    const auto y = dequantize(t, quantize(t, x, g), static_cast<int64_t>(x.size()), g);
    double e = 0, n = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      e += (x[i] - y[i]) * (x[i] - y[i]);
      n += x[i] * x[i];
    }
    return std::sqrt(e / n);
  };
  EXPECT_LT(rel(DType::Q8, 0), 0.012);
  for (DType t : {DType::Q4, DType::Q4A, DType::NF4}) {
    EXPECT_LT(rel(t, 32), 0.095) << dtype_name(t);
    EXPECT_LT(rel(t, 128), 0.11) << dtype_name(t);
    EXPECT_LT(rel(t, 32), rel(t, 128)) << dtype_name(t);
  }
}

// ---- Hand-computed blocks ----

TEST(QuantKnownBlocks, Q8) {
  const std::vector<float> x = {1.27f, -0.634f, 0.0f, 0.005f, -1.0f};
  const auto row = quantize(DType::Q8, x, 0);
  ASSERT_EQ(row.size(), 4u + 8u);
  float scale;
  std::memcpy(&scale, row.data(), 4);
  EXPECT_FLOAT_EQ(scale, 0.01f);
  const int8_t want[8] = {127, -63, 0, 0, -100, 0, 0, 0};  // 0.005 / 0.01 = 0.5 rounds to even (0)
  EXPECT_EQ(std::memcmp(row.data() + 4, want, 8), 0);
}

TEST(QuantKnownBlocks, Q4G32) {
  // Values -8..7 then 16 zeros: rule (a) gives d = -8 / -8 = 1 and the codes are x + 8 exactly.
  std::vector<float> x(32, 0.0f);
  for (int j = 0; j < 16; ++j) x[j] = static_cast<float>(j - 8);
  const auto row = quantize(DType::Q4, x, 32);
  ASSERT_EQ(row.size(), 18u);
  EXPECT_EQ(half_at(row.data()), 1.0f);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(row[2 + j], static_cast<uint8_t>(j | (8 << 4))) << j;
  EXPECT_EQ(dequantize(DType::Q4, row, 32, 32), x);
}

TEST(QuantKnownBlocks, Q4ANegativeOffset) {
  // 0.5 * (j - 4) for j < 16, then 3.5: min -2, max 5.5 -> d = 0.5, m = -2, q = j (then 11).
  std::vector<float> x(32, 3.5f);
  for (int j = 0; j < 16; ++j) x[j] = 0.5f * static_cast<float>(j - 4);
  const auto row = quantize(DType::Q4A, x, 32);
  ASSERT_EQ(row.size(), 20u);
  EXPECT_EQ(half_at(row.data()), 0.5f);
  EXPECT_EQ(half_at(row.data() + 2), -2.0f);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(row[4 + j], static_cast<uint8_t>(j | (11 << 4))) << j;
  EXPECT_EQ(dequantize(DType::Q4A, row, 32, 32), x);
}

TEST(QuantKnownBlocks, Nf4Levels) {
  // d * level for every level (d = 2 is the absmax): codes are the level indices.
  std::vector<float> x(64);
  for (int j = 0; j < 64; ++j) x[j] = 2.0f * kNf4Levels[j % 16];
  const auto row = quantize(DType::NF4, x, 64);
  ASSERT_EQ(row.size(), 34u);
  EXPECT_EQ(half_at(row.data()), 2.0f);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(row[2 + j], static_cast<uint8_t>((j % 16) | ((j % 16) << 4))) << j;
  EXPECT_EQ(dequantize(DType::NF4, row, 64, 64), x);
}

TEST(QuantKnownBlocks, AllZeroGroups) {
  for (DType t : kQuantTypes) {
    const std::vector<float> x(100, 0.0f);
    const int g = is_grouped(t) ? 32 : 0;
    const auto y = dequantize(t, quantize(t, x, g), 100, g);
    EXPECT_EQ(y, x) << dtype_name(t);
  }
}

// ---- Importance-weighted scale search ----

TEST(QuantImportance, NeverIncreasesWeightedError) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (DType t : kQuantTypes) {
    for (int g : kGroupSizes) {
      if (!is_grouped(t) && g != 32) continue;
      double total_plain = 0, total_search = 0;
      for (int cols : kCols) {
        SCOPED_TRACE(::testing::Message() << dtype_name(t) << " g=" << g << " cols=" << cols);
        const auto x = gaussian(rng, static_cast<size_t>(cols));
        std::vector<float> w(static_cast<size_t>(cols));
        for (auto& v : w) v = u(rng) < 0.1f ? 10.0f * u(rng) : 0.1f * u(rng);  // a few salient inputs
        const int group = is_grouped(t) ? g : 0;
        const auto plain = dequantize(t, quantize(t, x, group), cols, group);
        const auto searched = dequantize(t, quantize(t, x, group, w.data()), cols, group);
        const double ep = weighted_error(x, plain, w), es = weighted_error(x, searched, w);
        EXPECT_LE(es, ep * (1 + 1e-9) + 1e-20);
        total_plain += ep;
        total_search += es;
      }
      // The search must actually find something on salient inputs (int8 RTN is already near-optimal).
      if (t != DType::Q8) {
        EXPECT_LT(total_search, total_plain * 0.98) << dtype_name(t) << " g=" << g;
      }
    }
  }
}

TEST(QuantImportance, UniformImportanceKeepsRtnBound) {
  // With equal importance the result is still a valid encoding of the row (bounded error).
  std::mt19937 rng(8);
  const auto x = gaussian(rng, 1000);
  const std::vector<float> w(x.size(), 1.0f);
  for (DType t : kQuantTypes) {
    const int g = is_grouped(t) ? 64 : 0;
    const auto plain = dequantize(t, quantize(t, x, g), 1000, g);
    const auto searched = dequantize(t, quantize(t, x, g, w.data()), 1000, g);
    EXPECT_LE(weighted_error(x, searched, w), weighted_error(x, plain, w) * (1 + 1e-9)) << dtype_name(t);
  }
}

// ---- Activation blocks ----

TEST(QuantActivations, BlocksAndSums) {
  std::mt19937 rng(9);
  for (int n : {1, 7, 32, 33, 100, 257}) {
    SCOPED_TRACE(n);
    const auto x = gaussian(rng, static_cast<size_t>(n), 1.0f);
    std::vector<BlockQ8Act> blocks(static_cast<size_t>((n + 31) / 32));
    quantize_activations(x.data(), n, blocks.data());
    for (size_t b = 0; b < blocks.size(); ++b) {
      float amax = 0;
      for (int i = 0; i < 32 && static_cast<int>(b) * 32 + i < n; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
      EXPECT_FLOAT_EQ(blocks[b].scale, amax / 127.0f);
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        const size_t idx = b * 32 + static_cast<size_t>(i);
        if (idx < static_cast<size_t>(n)) {
          ASSERT_LE(std::fabs(x[idx] - blocks[b].scale * blocks[b].q[i]), blocks[b].scale * 0.5f * (1 + 1e-5f));
          EXPECT_EQ(blocks[b].q[i], static_cast<int>(std::nearbyint(x[idx] * (127.0f / amax))));
        } else {
          ASSERT_EQ(blocks[b].q[i], 0) << "padding";
        }
        sum += blocks[b].q[i];
      }
      EXPECT_FLOAT_EQ(blocks[b].sum, blocks[b].scale * static_cast<float>(sum));
    }
  }
}

TEST(QuantActivations, HandComputed) {
  std::vector<float> x(32, 0.0f);
  x[0] = 1.27f;
  x[1] = -0.635f;  // -63.5 -> -64 (ties to even)
  x[2] = 0.3f;
  BlockQ8Act b;
  quantize_activations(x.data(), 32, &b);
  EXPECT_FLOAT_EQ(b.scale, 0.01f);
  EXPECT_EQ(b.q[0], 127);
  EXPECT_EQ(b.q[1], -64);
  EXPECT_EQ(b.q[2], 30);
  EXPECT_FLOAT_EQ(b.sum, 0.01f * (127 - 64 + 30));
  const std::vector<float> zeros(5, 0.0f);
  quantize_activations(zeros.data(), 5, &b);
  EXPECT_EQ(b.scale, 0.0f);
  EXPECT_EQ(b.sum, 0.0f);
}

// ---- dequantize_matrix_row ----

TEST(QuantMatrixRow, PlainAndQuantized) {
  std::mt19937 rng(10);
  const auto x = gaussian(rng, 3 * 37);
  std::vector<uint16_t> bf(x.size());
  for (size_t i = 0; i < x.size(); ++i) bf[i] = f32_to_bf16(x[i]);
  const Matrix mb{DType::BF16, 3, 37, bf.data()};
  std::vector<float> out(37);
  dequantize_matrix_row(mb, 2, out.data());
  for (int c = 0; c < 37; ++c) EXPECT_EQ(out[c], bf16_to_f32(bf[2 * 37 + c]));
  const Matrix mf{DType::F32, 3, 37, x.data()};
  dequantize_matrix_row(mf, 1, out.data());
  for (int c = 0; c < 37; ++c) EXPECT_EQ(out[c], x[37 + c]);

  const size_t rb = dtype_row_bytes(DType::Q4, 37, 32);
  std::vector<uint8_t> q(3 * rb);
  for (int r = 0; r < 3; ++r)
    quant_traits(DType::Q4).quantize_row(x.data() + r * 37, 37, 32, nullptr, q.data() + r * rb);
  const Matrix mq{DType::Q4, 3, 37, q.data(), 32};
  dequantize_matrix_row(mq, 1, out.data());
  std::vector<float> want(37);
  quant_traits(DType::Q4).dequantize_row(q.data() + rb, 37, 32, want.data());
  EXPECT_EQ(out, want);
}

// ---- QuantSpec ----

TEST(QuantSpecTest, ParsesEveryForm) {
  struct Case {
    const char* text;
    std::optional<DType> dtype;
    int group;
    const char* canonical;
  };
  const Case cases[] = {
      {"int8", DType::Q8, 0, "int8"},
      {"int4", DType::Q4, 128, "int4:g128"},
      {"int4:g32", DType::Q4, 32, "int4:g32"},
      {"int4:g64:asym", DType::Q4A, 64, "int4:g64:asym"},
      {"int4:g128:sym", DType::Q4, 128, "int4:g128"},
      {"int4:asym", DType::Q4A, 128, "int4:g128:asym"},
      {"int4:asym:g32", DType::Q4A, 32, "int4:g32:asym"},
      {"nf4", DType::NF4, 128, "nf4:g128"},
      {"nf4:g64", DType::NF4, 64, "nf4:g64"},
      {"bf16", DType::BF16, 0, "bf16"},
      {"f16", DType::F16, 0, "f16"},
      {"f32", DType::F32, 0, "f32"},
      {"keep", std::nullopt, 0, "keep"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const QuantSpec s = QuantSpec::parse(c.text);
    EXPECT_EQ(s.dtype, c.dtype);
    EXPECT_EQ(s.keep(), !c.dtype.has_value());
    if (c.dtype && is_grouped(*c.dtype)) {
      EXPECT_EQ(s.group, c.group);
    }
    EXPECT_EQ(s.to_string(), c.canonical);
    const QuantSpec again = QuantSpec::parse(s.to_string());  // round trip
    EXPECT_EQ(again.dtype, s.dtype);
    EXPECT_EQ(again.group, s.group);
  }
  for (const char* canonical : {"int4:g32:asym", "int8", "nf4:g64", "bf16", "keep"}) {
    EXPECT_EQ(QuantSpec::parse(canonical).to_string(), canonical);
  }
}

TEST(QuantSpecTest, RejectsWithAcceptedForms) {
  for (const char* bad : {"", "int3", "INT8", "int4:g16", "int4:g32:g64", "int4:sym:asym", "nf4:asym", "int8:g32",
                          "bf16:g32", "int4:", "int4:fast", "keep:g32", "int4:g", "q4_0"}) {
    SCOPED_TRACE(bad);
    try {
      QuantSpec::parse(bad);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("'" + std::string(bad) + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("accepted forms"), std::string::npos) << msg;
      EXPECT_NE(msg.find("int4[:g32|:g64|:g128][:sym|:asym]"), std::string::npos) << msg;
    }
  }
}

}  // namespace
}  // namespace tessera::quant
