// The AVX2 row quantizers against the reference ones: byte-identical rows for every format and group size, on
// ordinary weights and on the inputs the vector code hands back to the reference (ragged blocks, non-finite values,
// fp16 range edges, signed zeros, Q4's near-tied candidate scales).
#include "quant/quantize_simd.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/cpu_features.h"
#include "engine/core/dtype.h"
#include "quant/blocks.h"
#include "quant/quant_traits.h"

namespace tessera::quant {
namespace {

using SimdRowFn = bool (*)(const float* x, int64_t cols, int group, const float* importance, void* row);

struct Format {
  DType dtype;
  SimdRowFn simd;
};
const Format kFormats[] = {{DType::Q8, avx2::q8_quantize_row},
                           {DType::Q4, avx2::q4_quantize_row},
                           {DType::Q4A, avx2::q4a_quantize_row},
                           {DType::NF4, avx2::nf4_quantize_row}};

// Rows of `cols` values from a generator of one value (given the rng and the column).
using Gen = std::function<float(std::mt19937&, int64_t)>;

// Quantizes x with the AVX2 function, the traits' quantize_row and the reference; expects identical bytes.
void expect_same_rows(const Format& f, const std::vector<float>& x, int group, const std::string& what) {
  const auto cols = static_cast<int64_t>(x.size());
  const size_t bytes = dtype_row_bytes(f.dtype, cols, group);
  std::vector<uint8_t> ref(bytes, 0xAB), simd(bytes, 0xCD), fast(bytes, 0xEF);
  const QuantTraits& tr = quant_traits(f.dtype);
  tr.reference_quantize_row(x.data(), cols, group, nullptr, ref.data());
  ASSERT_TRUE(f.simd(x.data(), cols, group, nullptr, simd.data()));
  tr.quantize_row(x.data(), cols, group, nullptr, fast.data());
  for (size_t i = 0; i < bytes; ++i) {
    ASSERT_EQ(simd[i], ref[i]) << tr.name << " g" << group << " cols " << cols << " (" << what << "): byte " << i
                               << " of " << bytes;
  }
  ASSERT_EQ(fast, ref) << tr.name << " g" << group << " cols " << cols << " (" << what << ")";
}

class QuantizeSimd : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_features().has_avx2_fma()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C: the reference quantizers run alone";
  }

  // Every format and group size over rows of several lengths, full and ragged.
  void check_all(const Gen& gen, const std::string& what, int rows_per_shape = 3) {
    std::mt19937 rng(1234);
    for (const Format& f : kFormats) {
      for (int group : {32, 64, 128}) {
        if (f.dtype == DType::Q8 && group != 32) continue;
        for (int64_t cols : {1, 7, 8, 31, 32, 33, 64, 100, 128, 129, 300, 2048 + 17}) {
          for (int r = 0; r < rows_per_shape; ++r) {
            std::vector<float> x(static_cast<size_t>(cols));
            for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(c)] = gen(rng, c);
            expect_same_rows(f, x, group, what);
            if (HasFatalFailure()) return;
          }
        }
      }
    }
  }
};

TEST_F(QuantizeSimd, GaussianAndUniformWeights) {
  check_all([](std::mt19937& rng, int64_t) { return std::normal_distribution<float>(0.0f, 0.02f)(rng); }, "gaussian",
            20);
  check_all([](std::mt19937& rng, int64_t) { return std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng); },
            "uniform", 5);
  check_all([](std::mt19937& rng, int64_t) { return std::uniform_real_distribution<float>(0.5f, 3.0f)(rng); },
            "all positive", 5);
  check_all([](std::mt19937& rng, int64_t) { return std::uniform_real_distribution<float>(-3.0f, -0.5f)(rng); },
            "all negative", 5);
}

TEST_F(QuantizeSimd, OutliersAndRepeatedExtremes) {
  // A few values 50x the rest; and groups where +amax and -amax both occur (Q4 keeps the first one's sign).
  check_all(
      [](std::mt19937& rng, int64_t) {
        const float v = std::normal_distribution<float>(0.0f, 0.02f)(rng);
        return rng() % 37 == 0 ? 50.0f * v : v;
      },
      "outliers", 10);
  check_all(
      [](std::mt19937& rng, int64_t) {
        const unsigned k = rng() % 8;
        return k == 0 ? 0.5f : k == 1 ? -0.5f : std::uniform_real_distribution<float>(-0.4f, 0.4f)(rng);
      },
      "+-amax repeated", 10);
}

TEST_F(QuantizeSimd, GridValuesAndConstantGroups) {
  // Values on a quantization grid make both Q4 candidates' errors zero or equal (ties go to the reference).
  check_all([](std::mt19937& rng, int64_t) { return 0.125f * static_cast<float>(static_cast<int>(rng() % 16) - 8); },
            "grid");
  check_all([](std::mt19937&, int64_t) { return 0.3f; }, "constant +");
  check_all([](std::mt19937&, int64_t) { return -0.3f; }, "constant -");
  check_all([](std::mt19937&, int64_t) { return 0.0f; }, "zeros");
  check_all([](std::mt19937& rng, int64_t c) { return (c / 32) % 2 == 0 ? 0.0f : static_cast<float>(rng() % 3); },
            "zero groups between others");
}

TEST_F(QuantizeSimd, Nf4ValuesOnTheMidpointsBetweenLevels) {
  // With the group maximum 1 (d = 1), x / d is exactly a midpoint; the reference gives ties to the lower level.
  check_all(
      [](std::mt19937& rng, int64_t c) {
        if (c % 32 == 0) return 1.0f;
        const int k = static_cast<int>(rng() % 15);
        return 0.5f * (kNf4Levels[k] + kNf4Levels[k + 1]);
      },
      "NF4 midpoints");
}

TEST_F(QuantizeSimd, SignedZeros) {
  // Q4A stores fp16(min rounded down): a minimum of -0.0 and one of +0.0 are different bytes.
  check_all([](std::mt19937& rng, int64_t) { return rng() % 2 ? 0.0f : -0.0f; }, "signed zeros");
  check_all(
      [](std::mt19937& rng, int64_t) {
        const unsigned k = rng() % 4;
        return k == 0 ? -0.0f : k == 1 ? 0.0f : std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
      },
      "non-negative with signed zeros", 10);
}

TEST_F(QuantizeSimd, ScalesAcrossTheFp16Range) {
  // Tiny groups (fp16 subnormal and underflowing scales, float subnormal values) and large ones (up to and past
  // where the vector code hands blocks to the reference).
  for (float scale : {1e-40f, 1e-30f, 1e-12f, 3e-8f, 1e-7f, 6e-5f, 1e-3f, 1e2f, 5e3f, 1e4f, 2e4f, 7e4f, 1e30f}) {
    check_all(
        [scale](std::mt19937& rng, int64_t) { return scale * std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng); },
        "scale " + std::to_string(scale), 2);
    if (HasFatalFailure()) return;
  }
}

TEST_F(QuantizeSimd, NonFiniteValues) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (float bad : {inf, -inf, nan}) {
    check_all([bad](std::mt19937& rng,
                    int64_t c) { return c % 45 == 3 ? bad : std::normal_distribution<float>(0.0f, 0.02f)(rng); },
              "non-finite", 2);
    if (HasFatalFailure()) return;
  }
}

// Q4 and NF4 with importance weights (activation-aware quantization): the 17- and 11-candidate searches against the
// reference's.
TEST_F(QuantizeSimd, Q4AndNf4WithImportanceWeights) {
  std::mt19937 rng(31);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  using WeightGen = std::function<float(std::mt19937&, int64_t)>;
  const std::pair<const char*, WeightGen> weights[] = {
      {"activation-like", [](std::mt19937& r, int64_t) { return std::exp(std::normal_distribution<float>(0, 2)(r)); }},
      {"uniform", [](std::mt19937&, int64_t) { return 1.0f; }},
      {"some zero", [](std::mt19937& r, int64_t) { return r() % 3 == 0 ? 0.0f : 0.5f; }},
      {"all zero", [](std::mt19937&, int64_t) { return 0.0f; }},
      {"huge", [](std::mt19937& r, int64_t) { return r() % 50 == 0 ? 1e30f : 1.0f; }},
      {"negative", [](std::mt19937& r, int64_t) { return r() % 40 == 0 ? -1.0f : 1.0f; }},
      {"non-finite", [&](std::mt19937& r, int64_t) { return r() % 60 == 0 ? (r() % 2 ? inf : nan) : 1.0f; }},
  };
  for (const Format& f : {kFormats[1], kFormats[3]}) {
    for (const auto& [name, wgen] : weights) {
      for (int group : {32, 64, 128}) {
        for (int64_t cols : {1, 31, 32, 33, 128, 129, 300, 1024 + 7}) {
          for (int r = 0; r < 12; ++r) {
            std::vector<float> x(static_cast<size_t>(cols)), w(static_cast<size_t>(cols));
            for (int64_t c = 0; c < cols; ++c) {
              const float v = std::normal_distribution<float>(0.0f, 0.02f)(rng);
              const unsigned k = rng() % 8;
              // Gaussian with outliers; grid values; +-amax repeated (near-tied candidates).
              x[static_cast<size_t>(c)] = r < 5    ? (rng() % 37 == 0 ? 20.0f * v : v)
                                          : r == 5 ? 0.125f * static_cast<float>(static_cast<int>(rng() % 16) - 8)
                                          : k == 0 ? 0.5f
                                          : k == 1 ? -0.5f
                                                   : 20.0f * v;
              w[static_cast<size_t>(c)] = wgen(rng, c);
            }
            const size_t bytes = dtype_row_bytes(f.dtype, cols, group);
            std::vector<uint8_t> ref(bytes, 0xAB), simd(bytes, 0xCD), fast(bytes, 0xEF);
            const QuantTraits& tr = quant_traits(f.dtype);
            tr.reference_quantize_row(x.data(), cols, group, w.data(), ref.data());
            ASSERT_TRUE(f.simd(x.data(), cols, group, w.data(), simd.data()));
            tr.quantize_row(x.data(), cols, group, w.data(), fast.data());
            ASSERT_EQ(simd, ref) << tr.name << " " << name << " g" << group << " cols " << cols << " row " << r;
            ASSERT_EQ(fast, ref) << tr.name << " " << name << " g" << group << " cols " << cols << " row " << r;
          }
        }
      }
    }
  }
}

TEST_F(QuantizeSimd, Q8WithAGivenRowMaximum) {
  // Tensor-parallel shards quantize part of a row with the whole row's maximum (>= their own).
  std::mt19937 rng(99);
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t cols : {1, 5, 32, 33, 100, 2048 + 3}) {
    for (float factor : {1.0f, 1.0001f, 1.5f, 40.0f, inf}) {
      std::vector<float> x(static_cast<size_t>(cols));
      for (auto& v : x) v = std::normal_distribution<float>(0.0f, 0.02f)(rng);
      float own = 0.0f;
      for (float v : x) own = std::max(own, std::fabs(v));
      const float amax = own * factor;
      const size_t bytes = dtype_row_bytes(DType::Q8, cols, 0);
      std::vector<uint8_t> ref(bytes, 0xAB), simd(bytes, 0xCD), fast(bytes, 0xEF);
      reference::q8_row_with_amax(x.data(), cols, amax, ref.data());
      avx2::q8_quantize_row_with_amax(x.data(), cols, amax, simd.data());
      quantize_q8_row_with_amax(x.data(), cols, amax, fast.data());
      EXPECT_EQ(simd, ref) << "cols " << cols << " amax " << amax;
      EXPECT_EQ(fast, ref) << "cols " << cols << " amax " << amax;
    }
  }
}

TEST_F(QuantizeSimd, UnknownGroupIsLeftToTheReference) {
  std::vector<float> x(96, 0.5f);
  std::vector<uint8_t> row(dtype_row_bytes(DType::Q4, 96, 48), 0x5A);
  EXPECT_FALSE(avx2::q4_quantize_row(x.data(), 96, 48, nullptr, row.data()));
  EXPECT_FALSE(avx2::q4a_quantize_row(x.data(), 96, 48, nullptr, row.data()));
  EXPECT_FALSE(avx2::nf4_quantize_row(x.data(), 96, 48, nullptr, row.data()));
  // Importance-weighted searches are the reference's, except Q4's and NF4's.
  const std::vector<float> w(96, 1.0f);
  EXPECT_FALSE(avx2::q8_quantize_row(x.data(), 96, 0, w.data(), row.data()));
  EXPECT_FALSE(avx2::q4a_quantize_row(x.data(), 96, 32, w.data(), row.data()));
  EXPECT_EQ(row, std::vector<uint8_t>(row.size(), 0x5A)) << "nothing written";
}

}  // namespace
}  // namespace tessera::quant
