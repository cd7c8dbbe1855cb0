// The activation-aware search's dot products: the AVX2 path gives the reference's floats bit for bit (so the chosen
// scales cannot depend on the CPU), and both are within rounding of a double-precision dot.
#include "quant/awq_dots.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "engine/core/cpu_features.h"

namespace tessera::quant {
namespace {

struct Rows {
  std::vector<float> a;
  std::vector<std::vector<float>> b;
  const float* ptrs[kMaxDotRows];
};

Rows random_rows(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::lognormal_distribution<float> mag(0.0f, 2.0f);  // activations with outlier channels, as AWQ sees them
  Rows r;
  for (int64_t i = 0; i < n; ++i) r.a.push_back(g(rng) * mag(rng));
  for (int k = 0; k < kMaxDotRows; ++k) {
    r.b.emplace_back();
    for (int64_t i = 0; i < n; ++i) r.b.back().push_back(1e-3f * g(rng));
    r.ptrs[k] = r.b.back().data();
  }
  return r;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(AwqDots, Avx2MatchesReferenceBitForBit) {
  if (!cpu_features().has_avx2_fma()) GTEST_SKIP() << "this CPU has no AVX2/FMA: only the reference path runs";
  std::mt19937 rng(11);
  for (int64_t n : {1, 7, 8, 9, 63, 64, 100, 2048, 2053, 5632}) {
    const Rows r = random_rows(n, rng);
    for (int count = 1; count <= kMaxDotRows; ++count) {
      float ref[kMaxDotRows], simd[kMaxDotRows], dispatched[kMaxDotRows];
      reference::lane8_dots(r.a.data(), r.ptrs, count, n, ref);
      avx2::lane8_dots(r.a.data(), r.ptrs, count, n, simd);
      lane8_dots(r.a.data(), r.ptrs, count, n, dispatched);
      for (int k = 0; k < count; ++k) {
        EXPECT_EQ(bits(simd[k]), bits(ref[k])) << "n " << n << " count " << count << " row " << k;
        EXPECT_EQ(bits(dispatched[k]), bits(ref[k])) << "n " << n << " count " << count << " row " << k;
      }
    }
  }
}

TEST(AwqDots, RowsGroupedOrAloneGiveTheSameSums) {
  std::mt19937 rng(12);
  const Rows r = random_rows(1031, rng);
  float together[kMaxDotRows];
  lane8_dots(r.a.data(), r.ptrs, kMaxDotRows, 1031, together);
  for (int k = 0; k < kMaxDotRows; ++k) {
    float alone;
    lane8_dots(r.a.data(), r.ptrs + k, 1, 1031, &alone);
    EXPECT_EQ(bits(alone), bits(together[k])) << "row " << k;
  }
}

TEST(AwqDots, CloseToADoublePrecisionDot) {
  std::mt19937 rng(13);
  for (int64_t n : {5, 640, 4099}) {
    const Rows r = random_rows(n, rng);
    float got[kMaxDotRows];
    lane8_dots(r.a.data(), r.ptrs, kMaxDotRows, n, got);
    for (int k = 0; k < kMaxDotRows; ++k) {
      double exact = 0.0, magnitude = 0.0;
      for (int64_t i = 0; i < n; ++i) {
        exact += static_cast<double>(r.a[static_cast<size_t>(i)]) * r.b[static_cast<size_t>(k)][static_cast<size_t>(i)];
        magnitude += std::fabs(static_cast<double>(r.a[static_cast<size_t>(i)]) *
                               r.b[static_cast<size_t>(k)][static_cast<size_t>(i)]);
      }
      EXPECT_NEAR(got[k], exact, 1e-6 * magnitude + 1e-30) << "n " << n << " row " << k;
    }
  }
}

}  // namespace
}  // namespace tessera::quant
