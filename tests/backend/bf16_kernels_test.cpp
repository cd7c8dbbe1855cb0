// The bf16 x bf16 decode kernels (Kernels::bdot4, bdot1, bdot4x2, bdot2xm of the AVX-512 BF16 set) against their
// portable twin, the exact products of the bf16 values summed in double, and against one another bit for bit (the
// contract batched decode relies on). Skips on CPUs without AVX512_BF16; the backend-level tests
// (cpu_backend_test, matmul_rows_test) cover the drivers on every set.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "engine/backend/cpu/kernels.h"
#include "engine/core/cpu_features.h"
#include "engine/core/dtype.h"
#include "test_util.h"

namespace tessera {
namespace {

std::vector<uint16_t> random_bf16(std::mt19937& rng, size_t n, float scale) {
  const std::vector<float> v = test::random_vec(rng, n, -scale, scale);
  std::vector<uint16_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

// The twin: sum_k x_k * w_k over the bf16 values (each product exact), in double; abs_sum = sum_k |x_k * w_k|.
double twin_dot(const uint16_t* x, const uint16_t* w, int64_t cols, double& abs_sum) {
  double sum = 0;
  abs_sum = 0;
  for (int64_t k = 0; k < cols; ++k) {
    const double p = static_cast<double>(bf16_to_f32(x[k])) * bf16_to_f32(w[k]);
    sum += p;
    abs_sum += std::fabs(p);
  }
  return sum;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

class Bf16Kernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_features().has_avx512_bf16()) GTEST_SKIP() << "CPU lacks AVX512_BF16";
    k_ = &cpu::avx512_bf16_kernels();
  }
  const cpu::Kernels* k_ = nullptr;
  std::mt19937 rng_{4242};
};

constexpr int kWeightRows = 6;  // 4 per call, the rest only named as `next` (prefetch)
constexpr int64_t kColumnCounts[] = {1, 2, 7, 31, 32, 33, 63, 64, 65, 100, 257, 768, 2049};

TEST_F(Bf16Kernels, MatchPortableTwin) {
  constexpr int kX = cpu::kMaxDotTileRows;
  for (const int64_t cols : kColumnCounts) {
    SCOPED_TRACE(::testing::Message() << "cols=" << cols);
    const auto w = random_bf16(rng_, static_cast<size_t>(kWeightRows * cols), 1.0f);
    const auto x = random_bf16(rng_, static_cast<size_t>(kX * cols), 4.0f);
    const void* rows[kWeightRows];
    for (int j = 0; j < kWeightRows; ++j) rows[j] = w.data() + j * cols;
    // Each lane adds cols / 32 pairs in fp32, then 16 lanes are reduced by a tree: a bound on fp32 rounding.
    const double eps = (static_cast<double>(cols) / 16 + 8) * 6e-8;
    const auto check = [&](int i, int j, float got) {
      double abs_sum = 0;
      const double want = twin_dot(x.data() + i * cols, w.data() + j * cols, cols, abs_sum);
      EXPECT_LE(std::fabs(got - want), eps * abs_sum + 1e-30) << "x row " << i << " weight row " << j;
    };
    for (int i = 0; i < kX; ++i) {
      for (int j = 0; j < 4; ++j) check(i, j, k_->bdot1(x.data() + i * cols, rows[j], cols));
    }
    float out4[4];
    k_->bdot4(x.data(), rows, rows + 2, cols, out4);
    for (int j = 0; j < 4; ++j) check(0, j, out4[j]);
    float tile[kX * 2];
    k_->bdot2xm(x.data(), cols, kX, rows, rows + 4, cols, tile, 2);
    for (int i = 0; i < kX; ++i) {
      for (int j = 0; j < 2; ++j) check(i, j, tile[i * 2 + j]);
    }
  }
}

// Every kernel gives each (x row, weight row) the bits bdot1 gives it, for every tile height and with or without
// rows to prefetch: a sequence's decode result cannot depend on the batch around it.
TEST_F(Bf16Kernels, AllKernelsAgreeBitForBit) {
  constexpr int kX = cpu::kMaxDotTileRows + 1;  // tiles start at every row, the last one ragged
  for (const int64_t cols : kColumnCounts) {
    SCOPED_TRACE(::testing::Message() << "cols=" << cols);
    const auto w = random_bf16(rng_, static_cast<size_t>(kWeightRows * cols), 1.0f);
    const auto x = random_bf16(rng_, static_cast<size_t>(kX * cols), 2.0f);
    const void* rows[kWeightRows];
    for (int j = 0; j < kWeightRows; ++j) rows[j] = w.data() + j * cols;
    float one[kX][4];
    for (int i = 0; i < kX; ++i) {
      for (int j = 0; j < 4; ++j) one[i][j] = k_->bdot1(x.data() + i * cols, rows[j], cols);
    }
    for (int i = 0; i < kX; ++i) {
      float out4[4];
      k_->bdot4(x.data() + i * cols, rows, i % 2 ? rows + 2 : nullptr, cols, out4);
      for (int j = 0; j < 4; ++j) EXPECT_TRUE(same_bits(out4[j], one[i][j])) << "bdot4 x row " << i << " w " << j;
      if (i + 1 < kX) {
        float out8[2 * 4];
        k_->bdot4x2(x.data() + i * cols, cols, rows, i % 2 ? nullptr : rows + 2, cols, out8, 4);
        for (int e = 0; e < 2; ++e) {
          for (int j = 0; j < 4; ++j) {
            EXPECT_TRUE(same_bits(out8[e * 4 + j], one[i + e][j])) << "bdot4x2 x row " << i + e << " w " << j;
          }
        }
      }
    }
    for (int m = 1; m <= cpu::kMaxDotTileRows; ++m) {
      for (int i = 0; i + m <= kX; i += m) {
        float tile[cpu::kMaxDotTileRows * 2];
        k_->bdot2xm(x.data() + i * cols, cols, m, rows + 2, m % 2 ? rows + 4 : nullptr, cols, tile, 2);
        for (int e = 0; e < m; ++e) {
          for (int j = 0; j < 2; ++j) {
            EXPECT_TRUE(same_bits(tile[e * 2 + j], one[i + e][2 + j])) << "bdot2xm m=" << m << " x row " << i + e;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace tessera
