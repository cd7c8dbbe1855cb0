// Backend::matmul_rows / matmul_silu_mul_rows: every row's result is bit for bit what matmul gives for that row
// alone, for every weight type and activation mode, every kernel set and any thread count. This is what makes a
// sequence's output independent of the batch it is decoded in.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/reference_backend.h"
#include "engine/core/cpu_features.h"
#include "tests/backend/test_util.h"

namespace tessera {
namespace {

using test::OwnedMatrix;

struct WeightCase {
  DType dtype;
  int group;
  ActQuant act;
  bool bf16_act = false;  // CpuBackend::set_bf16_activations
};

std::vector<WeightCase> weight_cases() {
  std::vector<WeightCase> cases{{DType::F32, 0, ActQuant::kNone},  {DType::F16, 0, ActQuant::kNone},
                                {DType::BF16, 0, ActQuant::kNone}, {DType::BF16, 0, ActQuant::kNone, true},
                                {DType::Q8, 0, ActQuant::kNone},   {DType::Q8, 0, ActQuant::kInt8}};
  for (DType t : {DType::Q4, DType::Q4A, DType::NF4})
    for (int g : {32, 128}) cases.push_back({t, g, ActQuant::kNone});
  return cases;
}

OwnedMatrix weights(std::mt19937& rng, const WeightCase& c, int64_t rows, int64_t cols) {
  return is_quantized(c.dtype) ? test::quantized_matrix(rng, c.dtype, rows, cols, c.group)
                               : test::random_matrix(rng, c.dtype, rows, cols);
}

std::vector<std::unique_ptr<CpuBackend>> backends() {
  std::vector<std::unique_ptr<CpuBackend>> out;
  for (int threads : {1, 3}) {
    out.push_back(std::make_unique<CpuBackend>(threads, CpuKernels::kPortable));
    if (cpu_features().has_avx2_fma()) out.push_back(std::make_unique<CpuBackend>(threads, CpuKernels::kAvx2));
    if (cpu_features().has_avx512()) out.push_back(std::make_unique<CpuBackend>(threads, CpuKernels::kAvx512));
    if (cpu_features().has_avx512_bf16()) {
      out.push_back(std::make_unique<CpuBackend>(threads, CpuKernels::kAvx512Bf16));
    }
  }
  return out;
}

bool same_bits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

TEST(MatmulRows, EachRowAsIfAlone) {
  std::mt19937 rng(31);
  for (auto& be : backends()) {
    for (const WeightCase& c : weight_cases()) {
      be->set_activation_quant(c.act);
      be->set_bf16_activations(c.bf16_act);
      for (int64_t rows : {1, 17, 70}) {
        for (int64_t cols : {7, 33, 256, 300}) {
          const OwnedMatrix w = weights(rng, c, rows, cols);
          const auto bias = test::random_vec(rng, static_cast<size_t>(rows));
          for (int n : {1, 2, 3, 5, 6, 7, 13, 16}) {
            SCOPED_TRACE(::testing::Message()
                         << be->name() << " " << dtype_name(c.dtype) << " g" << c.group
                         << (c.act == ActQuant::kInt8 ? " act-int8" : "") << (c.bf16_act ? " act-bf16" : "") << " "
                         << rows << "x" << cols << " n=" << n);
            const auto x = test::random_vec(rng, static_cast<size_t>(n * cols));
            std::vector<float> got = test::poisoned(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
            be->matmul_rows(x.data(), n, w.m, bias.data(), got.data());
            for (int i = 0; i < n; ++i) {
              test::poison(one);
              be->matmul(x.data() + i * cols, 1, w.m, bias.data(), one.data());
              ASSERT_TRUE(same_bits(got.data() + i * rows, one.data(), one.size())) << "row " << i;
            }
          }
        }
      }
    }
  }
}

TEST(MatmulRows, FusedSiluMulEachRowAsIfAlone) {
  std::mt19937 rng(32);
  for (auto& be : backends()) {
    for (const WeightCase& c : weight_cases()) {
      be->set_activation_quant(c.act);
      be->set_bf16_activations(c.bf16_act);
      const int64_t hidden = 45, dim = 256;
      const OwnedMatrix g = weights(rng, c, hidden, dim), u = weights(rng, c, hidden, dim);
      for (int n : {1, 2, 3, 7, 9, 16}) {
        SCOPED_TRACE(::testing::Message() << be->name() << " " << dtype_name(c.dtype) << " n=" << n);
        const auto x = test::random_vec(rng, static_cast<size_t>(n * dim));
        std::vector<float> got = test::poisoned(static_cast<size_t>(n * hidden)), one(static_cast<size_t>(hidden));
        be->matmul_silu_mul_rows(x.data(), n, g.m, u.m, got.data());
        for (int i = 0; i < n; ++i) {
          test::poison(one);
          be->matmul_silu_mul(x.data() + i * dim, 1, g.m, u.m, one.data());
          ASSERT_TRUE(same_bits(got.data() + i * hidden, one.data(), one.size())) << "row " << i;
        }
      }
    }
  }
}

// Weights the CPU backend keeps in its panel layout (Q4/Q4A after upload): a single x row is decoded over several
// streams of panels (Kernels::qdot_panel4 where the set has it), several rows a panel at a time. Both must give the
// same bits, for row counts that leave panels over after the streams' split (and a last panel cut short).
TEST(MatmulRows, PanelLayoutRowsAsIfAlone) {
  std::mt19937 rng(33);
  for (auto& be : backends()) {
    be->set_activation_quant(ActQuant::kNone);
    be->set_bf16_activations(false);
    for (DType t : {DType::Q4, DType::Q4A}) {
      for (int g : {32, 128}) {
        const WeightCase c{t, g, ActQuant::kNone};
        for (int64_t rows : {8, 44, 264, 1000}) {
          const int64_t cols = 256;
          const OwnedMatrix host = weights(rng, c, rows, cols), host_up = weights(rng, c, rows, cols);
          const Matrix w = be->upload(host.m), up = be->upload(host_up.m);
          ASSERT_EQ(w.layout, MatrixLayout::kPanels8);
          const auto bias = test::random_vec(rng, static_cast<size_t>(rows));
          const int n = 3;
          SCOPED_TRACE(::testing::Message() << be->name() << " " << dtype_name(t) << " g" << g << " rows " << rows);
          const auto x = test::random_vec(rng, static_cast<size_t>(n * cols));
          std::vector<float> got = test::poisoned(static_cast<size_t>(n * rows)), one(static_cast<size_t>(rows));
          be->matmul_rows(x.data(), n, w, bias.data(), got.data());
          std::vector<float> fused = test::poisoned(static_cast<size_t>(n * rows));
          be->matmul_silu_mul_rows(x.data(), n, w, up, fused.data());
          for (int i = 0; i < n; ++i) {
            test::poison(one);
            be->matmul(x.data() + i * cols, 1, w, bias.data(), one.data());
            ASSERT_TRUE(same_bits(got.data() + i * rows, one.data(), one.size())) << "matmul, row " << i;
            test::poison(one);
            be->matmul_silu_mul(x.data() + i * cols, 1, w, up, one.data());
            ASSERT_TRUE(same_bits(fused.data() + i * rows, one.data(), one.size())) << "silu_mul, row " << i;
          }
        }
      }
    }
  }
}

// Under bf16 activations the prefill ops (matmul, matmul_silu_mul with many rows) give every row its single-row
// bits too: a bf16-rounded activation would turn a GEMM-vs-decode last-bit difference into a bf16 step, so a
// sequence's output would depend on how it was chunked or whether it was recomputed after preemption.
TEST(MatmulRows, Bf16ActivationsPrefillRowsAsIfAlone) {
  std::mt19937 rng(34);
  for (auto& be : backends()) {
    be->set_bf16_activations(true);
    const OwnedMatrix w = test::random_matrix(rng, DType::BF16, 70, 300),
                      u = test::random_matrix(rng, DType::BF16, 70, 300);
    for (int n : {2, 7, 40, 130}) {
      SCOPED_TRACE(::testing::Message() << be->name() << " n=" << n);
      const auto x = test::random_vec(rng, static_cast<size_t>(n * 300));
      std::vector<float> got = test::poisoned(static_cast<size_t>(n * 70)), fused = got, one(70), one_fused(70);
      be->matmul(x.data(), n, w.m, nullptr, got.data());
      be->matmul_silu_mul(x.data(), n, w.m, u.m, fused.data());
      for (int i = 0; i < n; ++i) {
        be->matmul(x.data() + i * 300, 1, w.m, nullptr, one.data());
        be->matmul_silu_mul(x.data() + i * 300, 1, w.m, u.m, one_fused.data());
        ASSERT_TRUE(same_bits(got.data() + i * 70, one.data(), 70)) << "row " << i;
        ASSERT_TRUE(same_bits(fused.data() + i * 70, one_fused.data(), 70)) << "fused row " << i;
      }
    }
  }
}

// The base class's loop (what backends without few-row kernels inherit) has the same contract.
TEST(MatmulRows, DefaultImplementationLoopsOverRows) {
  std::mt19937 rng(33);
  ReferenceBackend ref;
  const OwnedMatrix w = test::random_matrix(rng, DType::BF16, 9, 40);
  const auto x = test::random_vec(rng, 4 * 40);
  std::vector<float> got = test::poisoned(4 * 9), one(9);
  ref.matmul_rows(x.data(), 4, w.m, nullptr, got.data());
  for (int i = 0; i < 4; ++i) {
    ref.matmul(x.data() + i * 40, 1, w.m, nullptr, one.data());
    EXPECT_TRUE(same_bits(got.data() + i * 9, one.data(), 9)) << "row " << i;
  }
}

}  // namespace
}  // namespace tessera
