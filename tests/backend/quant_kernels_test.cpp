// Quantized weights on the CPU backend: every GEMV/GEMM path (fp32 or int8 activations), the fused MLP op and
// embedding, for both kernel sets and 1 and 3 threads, on ragged shapes, against
//   (a) the portable kernel set with the same activation handling: relative L2 <= 1e-5;
//   (b) ReferenceBackend (dequantize, then fp32 with double accumulation): 1e-5 where activations stay fp32
//       (Q8 by default, Q4/Q4A/NF4 prefill), and kInt8ActTol where they are quantized to int8 blocks (Q8 with
//       ActQuant::kInt8, Q4/Q4A/NF4 decode; NF4 also rounds its levels to int8).
// Q4/Q4A also through CpuBackend::upload (the panel layout, panel8.h) against the same backend on canonical rows.
// Plus kernel-level checks of the individual table entries (AVX2 against portable).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/panel8.h"
#include "engine/backend/cpu/reference_ops.h"
#include "engine/core/cpu_features.h"
#include "engine/core/thread_pool.h"
#include "kernel_sets.h"
#include "quant/blocks.h"
#include "quant/quant_traits.h"
#include "test_util.h"

namespace tessera {
namespace {

using test::near_l2;
using test::OwnedMatrix;
using test::poison;
using test::quantized_matrix;
using test::random_vec;

// int8 activation blocks (scale = absmax / 127 per 32 values) perturb each activation by up to scale / 2, which
// moves a dot product x . w by about ||w|| * scale / sqrt(12), i.e. ~0.4% of the typical size of a dot of random
// vectors, ||x|| ||w|| / sqrt(cols). A single dot can be near zero by cancellation, so the int8-activation checks
// measure the error against that typical size: ||got - want|| <= kInt8ActTol * sqrt(sum over outputs of
// (||x_i|| ||w_r|| / sqrt(cols))^2). 2% leaves room for unlucky rows (and NF4's int8 levels, another ~0.2%)
// without hiding a wrong scale or offset (those give errors of 10% and more).
constexpr double kInt8ActTol = 2e-2;
constexpr double kExactTol = 1e-5;

// Per output (i, r): ||x_i|| * ||dequant(w_r)|| / sqrt(cols).
std::vector<double> typical_dots(const std::vector<float>& x, int n, const Matrix& w) {
  std::vector<double> wn(static_cast<size_t>(w.rows)), out(static_cast<size_t>(n) * w.rows);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t r = 0; r < w.rows; ++r) {
    quant::dequantize_matrix_row(w, r, row.data());
    double s = 0;
    for (float v : row) s += static_cast<double>(v) * v;
    wn[static_cast<size_t>(r)] = std::sqrt(s);
  }
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t c = 0; c < w.cols; ++c) s += static_cast<double>(x[i * w.cols + c]) * x[i * w.cols + c];
    for (int64_t r = 0; r < w.rows; ++r) {
      out[static_cast<size_t>(i * w.rows + r)] = std::sqrt(s) * wn[static_cast<size_t>(r)] / std::sqrt(double(w.cols));
    }
  }
  return out;
}

// ||got - want|| <= tol * ||scale||, failing on any NaN/inf in got.
::testing::AssertionResult near_scaled(const std::vector<float>& got, const std::vector<float>& want,
                                       const std::vector<double>& scale, double tol) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return ::testing::AssertionFailure() << "element " << i << " is " << got[i];
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += scale[i] * scale[i];
  }
  const double rel = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
  if (rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "error " << rel << " of the typical dot size > " << tol;
}

struct QuantCase {
  DType dtype;
  int group;     // 0 for Q8
  ActQuant act;  // matters for Q8 only
};

std::string case_name(const QuantCase& c) {
  std::string s(dtype_name(c.dtype));
  if (c.group) s += ":g" + std::to_string(c.group);
  if (c.dtype == DType::Q8 && c.act == ActQuant::kInt8) s += "+act-int8";
  return s;
}

std::vector<QuantCase> all_cases() {
  std::vector<QuantCase> cases = {{DType::Q8, 0, ActQuant::kNone}, {DType::Q8, 0, ActQuant::kInt8}};
  for (DType t : {DType::Q4, DType::Q4A, DType::NF4}) {
    for (int g : quant::kGroupSizes) cases.push_back({t, g, ActQuant::kNone});
  }
  return cases;
}

// Whether this case computes with int8 activations for n rows.
bool int8_activations(const QuantCase& c, int n) {
  return c.dtype == DType::Q8 ? c.act == ActQuant::kInt8 : n == 1;
}

// An 8-row Q4/Q4A matrix of `cols` columns, its panel-layout copy (p, stored in buf) and one activation row
// quantized to int8 blocks.
struct PanelCase {
  OwnedMatrix w;
  std::vector<uint8_t> buf;
  Matrix p;
  std::vector<quant::BlockQ8Act> xq;
};
PanelCase panel_case(std::mt19937& rng, ThreadPool& pool, DType t, int cols, int g) {
  PanelCase c{quantized_matrix(rng, t, 8, cols, g), {}, {}, {}};
  c.buf.resize(cpu::panel8_bytes(c.w.m));
  c.p = cpu::repack_panel8(c.w.m, c.buf.data(), pool);
  const auto x = random_vec(rng, static_cast<size_t>(cols));
  c.xq.resize(static_cast<size_t>((cols + 31) / 32));
  quant::quantize_activations(x.data(), cols, c.xq.data());
  return c;
}

// The four-panel form of a kernel set: four different panels (four matrices) against one x give, panel by panel,
// the set's one-panel floats, so batch-1 decode over four streams changes no output.
void expect_four_panels_match_one(const cpu::Kernels& k, std::mt19937& rng) {
  ThreadPool pool(1);
  for (DType t : {DType::Q4, DType::Q4A}) {
    const int dt = static_cast<int>(t);
    ASSERT_NE(k.qdot_panel4[dt], nullptr);
    for (int g : quant::kGroupSizes) {
      for (int cols : {1, 33, 100, 257, 2048}) {
        std::vector<PanelCase> pcs;
        for (int s = 0; s < 4; ++s) pcs.push_back(panel_case(rng, pool, t, cols, g));
        const std::vector<quant::BlockQ8Act>& xq = pcs[0].xq;
        std::vector<std::vector<float>> four(4, std::vector<float>(8, std::nanf("")));
        const void* panels[4];
        float* outs[4];
        for (int s = 0; s < 4; ++s) {
          panels[s] = pcs[static_cast<size_t>(s)].p.data;
          outs[s] = four[static_cast<size_t>(s)].data();
        }
        k.qdot_panel4[dt](xq.data(), panels, cols, g, outs);
        for (int s = 0; s < 4; ++s) {
          std::vector<float> one(8, std::nanf(""));
          k.qdot_panel[dt](xq.data(), panels[s], cols, g, one.data());
          EXPECT_EQ(four[static_cast<size_t>(s)], one)
              << dtype_name(t) << " g=" << g << " cols=" << cols << " panel " << s;
        }
      }
    }
  }
}

// kGemmI8MR random activation rows of `cols` values, quantized and expanded for the integer GEMM by two kernel sets,
// each into its own storage: a / b hold kp values per row, sa / sb `blocks` scales per row.
struct ExpandedActs {
  std::vector<int16_t> a, b;
  std::vector<float> sa, sb;
};
ExpandedActs expand_acts(std::mt19937& rng, const cpu::Kernels& ka, const cpu::Kernels& kb, int cols, int64_t blocks,
                         int64_t kp) {
  constexpr int kRowsX = cpu::kGemmI8MR;
  const auto x = random_vec(rng, kRowsX * static_cast<size_t>(cols));
  std::vector<quant::BlockQ8Act> xq(kRowsX * blocks);
  ExpandedActs e{std::vector<int16_t>(kRowsX * kp, 3), std::vector<int16_t>(kRowsX * kp, 3),
                 std::vector<float>(kRowsX * blocks), std::vector<float>(kRowsX * blocks)};
  for (int i = 0; i < kRowsX; ++i) {
    quant::quantize_activations(x.data() + i * cols, cols, xq.data() + i * blocks);
    ka.expand_act(xq.data() + i * blocks, blocks, e.a.data() + i * kp, e.sa.data() + i * blocks);
    kb.expand_act(xq.data() + i * blocks, blocks, e.b.data() + i * kp, e.sb.data() + i * blocks);
  }
  return e;
}

using Config = test::BackendConfig;
using test::config_name;

class QuantBackendTest : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    if (const std::string why = test::missing_cpu_features(GetParam().kernels); !why.empty()) GTEST_SKIP() << why;
    backend_ = std::make_unique<CpuBackend>(GetParam().threads, GetParam().kernels);
    portable_ = std::make_unique<CpuBackend>(1, CpuKernels::kPortable);
  }

  void set_act(ActQuant a) {
    backend_->set_activation_quant(a);
    portable_->set_activation_quant(a);
  }

  void check_matmul(const QuantCase& c, int rows, int cols, int n, bool with_bias) {
    SCOPED_TRACE(::testing::Message() << case_name(c) << " rows=" << rows << " cols=" << cols << " n=" << n
                                      << " bias=" << with_bias);
    set_act(c.act);
    const auto w = quantized_matrix(rng_, c.dtype, rows, cols, c.group);
    const auto x = random_vec(rng_, static_cast<size_t>(n) * cols);
    const auto bias = random_vec(rng_, rows);
    const float* b = with_bias ? bias.data() : nullptr;
    std::vector<float> want(static_cast<size_t>(n) * rows), port(want.size()), got(want.size());
    ref::matmul(x.data(), n, w.m, b, want.data());
    poison(port);
    portable_->matmul(x.data(), n, w.m, b, port.data());
    poison(got);
    backend_->matmul(x.data(), n, w.m, b, got.data());
    EXPECT_TRUE(near_l2(got, port, kExactTol)) << "vs portable";
    if (int8_activations(c, n)) {
      EXPECT_TRUE(near_scaled(got, want, typical_dots(x, n, w.m), kInt8ActTol)) << "vs reference";
    } else {
      EXPECT_TRUE(near_l2(got, want, kExactTol)) << "vs reference";
    }
  }

  void check_silu_mul(const QuantCase& c, int hidden, int cols, int n) {
    SCOPED_TRACE(::testing::Message() << case_name(c) << " hidden=" << hidden << " cols=" << cols << " n=" << n);
    set_act(c.act);
    const auto gate = quantized_matrix(rng_, c.dtype, hidden, cols, c.group, 2.0f);
    const auto up = quantized_matrix(rng_, c.dtype, hidden, cols, c.group);
    const auto x = random_vec(rng_, static_cast<size_t>(n) * cols);
    std::vector<float> want(static_cast<size_t>(n) * hidden), port(want.size()), got(want.size());
    ref::matmul_silu_mul(x.data(), n, gate.m, up.m, want.data());
    poison(port);
    portable_->matmul_silu_mul(x.data(), n, gate.m, up.m, port.data());
    poison(got);
    backend_->matmul_silu_mul(x.data(), n, gate.m, up.m, got.data());
    EXPECT_TRUE(near_l2(got, port, kExactTol)) << "vs portable";
    if (int8_activations(c, n)) {
      // silu(g) * u with both dots perturbed: scale by the product of their typical sizes, twice the tolerance.
      auto scale = typical_dots(x, n, gate.m);
      const auto su = typical_dots(x, n, up.m);
      for (size_t i = 0; i < scale.size(); ++i) scale[i] *= su[i];
      EXPECT_TRUE(near_scaled(got, want, scale, 2 * kInt8ActTol)) << "vs reference";
    } else {
      EXPECT_TRUE(near_l2(got, want, kExactTol)) << "vs reference";
    }
  }

  // Q4/Q4A uploaded into the panel layout against the same backend on the canonical rows: prefill packs the same
  // fp32 panels (bit for bit); decode gives each row the arithmetic of the set's canonical kernels (bit for bit with
  // the portable set; to rounding with AVX2, whose canonical kernel depends on the row count); and both against the
  // reference. matmul and matmul_rows, the fused MLP op, and embedding.
  void check_panels(const QuantCase& c, int rows, int cols, int n) {
    SCOPED_TRACE(::testing::Message() << case_name(c) << " rows=" << rows << " cols=" << cols << " n=" << n);
    const bool portable = GetParam().kernels == CpuKernels::kPortable;
    const auto w = quantized_matrix(rng_, c.dtype, rows, cols, c.group);
    const Matrix p = backend_->upload(w.m);
    ASSERT_EQ(p.layout, MatrixLayout::kPanels8);
    const auto x = random_vec(rng_, static_cast<size_t>(n) * cols);
    const auto bias = random_vec(rng_, rows);
    std::vector<float> want(static_cast<size_t>(n) * rows), canon(want.size()), got(want.size());
    ref::matmul(x.data(), n, w.m, bias.data(), want.data());
    const auto same_or_near = [&](bool int8_act, const std::vector<float>& a, const std::vector<float>& b) {
      if (!int8_act || portable) {
        EXPECT_EQ(a, b);
      } else {
        EXPECT_TRUE(near_l2(a, b, kExactTol));
      }
    };
    for (bool per_row : {false, true}) {
      SCOPED_TRACE(per_row ? "matmul_rows" : "matmul");
      const bool int8_act = per_row || n == 1;
      poison(canon);
      poison(got);
      if (per_row) {
        backend_->matmul_rows(x.data(), n, w.m, bias.data(), canon.data());
        backend_->matmul_rows(x.data(), n, p, bias.data(), got.data());
      } else {
        backend_->matmul(x.data(), n, w.m, bias.data(), canon.data());
        backend_->matmul(x.data(), n, p, bias.data(), got.data());
      }
      same_or_near(int8_act, got, canon);
      if (int8_act) {
        EXPECT_TRUE(near_scaled(got, want, typical_dots(x, n, w.m), kInt8ActTol)) << "vs reference";
      } else {
        EXPECT_TRUE(near_l2(got, want, kExactTol)) << "vs reference";
      }
    }
    const auto up = quantized_matrix(rng_, c.dtype, rows, cols, c.group);
    const Matrix up_p = backend_->upload(up.m);
    for (bool per_row : {false, true}) {
      SCOPED_TRACE(per_row ? "matmul_silu_mul_rows" : "matmul_silu_mul");
      poison(canon);
      poison(got);
      if (per_row) {
        backend_->matmul_silu_mul_rows(x.data(), n, w.m, up.m, canon.data());
        backend_->matmul_silu_mul_rows(x.data(), n, p, up_p, got.data());
      } else {
        backend_->matmul_silu_mul(x.data(), n, w.m, up.m, canon.data());
        backend_->matmul_silu_mul(x.data(), n, p, up_p, got.data());
      }
      same_or_near(per_row || n == 1, got, canon);
    }
    const int tokens[] = {0, rows - 1, rows / 2, rows - 1};
    std::vector<float> emb_want(4 * static_cast<size_t>(cols)), emb_got(emb_want.size());
    ref::embedding(w.m, tokens, 4, emb_want.data());
    poison(emb_got);
    backend_->embedding(p, tokens, 4, emb_got.data());
    EXPECT_EQ(emb_got, emb_want);
  }

  std::mt19937 rng_{4321};
  std::unique_ptr<CpuBackend> backend_, portable_;
};

constexpr int kRows[] = {1, 3, 17, 65};
constexpr int kCols[] = {1, 7, 33, 100, 172, 257};
constexpr int kNs[] = {1, 2, 5, 31};

TEST_P(QuantBackendTest, MatmulRaggedShapes) {
  for (const QuantCase& c : all_cases()) {
    for (int rows : kRows) {
      for (int cols : kCols) {
        for (int n : kNs) check_matmul(c, rows, cols, n, (rows + cols + n) % 2 == 0);
      }
    }
  }
}

// Several k blocks (kKc = 256), an n block boundary (96 rows), ragged tiles, many tiles, wide decode.
TEST_P(QuantBackendTest, MatmulAcrossBlocks) {
  for (const QuantCase& c : all_cases()) {
    check_matmul(c, 40, 600, 100, true);
    check_matmul(c, 130, 513, 7, false);
    check_matmul(c, 96, 256, 13, true);
    check_matmul(c, 200, 64, 200, false);
    check_matmul(c, 1000, 96, 1, true);
    check_matmul(c, 67, 1100, 1, false);
    check_matmul(c, 35, 2080, 3, false);
  }
}

TEST_P(QuantBackendTest, MatmulSiluMul) {
  for (const QuantCase& c : all_cases()) {
    for (int hidden : kRows) {
      for (int cols : kCols) {
        for (int n : kNs) check_silu_mul(c, hidden, cols, n);
      }
    }
    check_silu_mul(c, 70, 600, 100);
    check_silu_mul(c, 301, 40, 9);
    check_silu_mul(c, 91, 700, 1);
  }
}

TEST_P(QuantBackendTest, Embedding) {
  for (const QuantCase& c : all_cases()) {
    for (int cols : kCols) {
      SCOPED_TRACE(::testing::Message() << case_name(c) << " cols=" << cols);
      const auto table = quantized_matrix(rng_, c.dtype, 11, cols, c.group);
      const int tokens[] = {3, 0, 10, 3, 7};
      std::vector<float> want(5 * static_cast<size_t>(cols)), got(want.size());
      ref::embedding(table.m, tokens, 5, want.data());
      poison(got);
      backend_->embedding(table.m, tokens, 5, got.data());
      EXPECT_EQ(got, want);  // dequantization is exact arithmetic on fp16 scales and small integers
    }
  }
}

// The activation mode only changes Q8: grouped types decode with int8 blocks and prefill in fp32 either way.
TEST_P(QuantBackendTest, ActivationModeOnlyAffectsQ8) {
  const auto w = quantized_matrix(rng_, DType::Q4, 33, 300, 64);
  const auto x = random_vec(rng_, 5 * 300);
  std::vector<float> a(5 * 33), b(a.size());
  set_act(ActQuant::kNone);
  backend_->matmul(x.data(), 5, w.m, nullptr, a.data());
  set_act(ActQuant::kInt8);
  backend_->matmul(x.data(), 5, w.m, nullptr, b.data());
  EXPECT_EQ(a, b);
}

// Row counts below, at and past multiples of 8 (padded panels), ragged columns, several k blocks, ragged GEMM tiles.
TEST_P(QuantBackendTest, PanelLayoutMatchesRows) {
  struct Shape {
    int rows, cols, n;
  };
  const Shape shapes[] = {{1, 7, 1},    {3, 33, 2},    {8, 64, 1},    {17, 100, 5},  {16, 257, 31},
                          {65, 257, 1}, {40, 600, 13}, {130, 513, 7}, {67, 1100, 1}, {35, 2080, 3}};
  for (const QuantCase& c : all_cases()) {
    if (c.dtype != DType::Q4 && c.dtype != DType::Q4A) continue;
    for (const Shape& sh : shapes) check_panels(c, sh.rows, sh.cols, sh.n);
  }
}

// Other types are used in place.
TEST_P(QuantBackendTest, UploadLeavesOtherTypesInPlace) {
  for (const QuantCase& c : all_cases()) {
    if (c.dtype == DType::Q4 || c.dtype == DType::Q4A) continue;
    const auto w = quantized_matrix(rng_, c.dtype, 9, 64, c.group);
    const Matrix u = backend_->upload(w.m);
    EXPECT_EQ(u.data, w.m.data);
    EXPECT_EQ(u.layout, MatrixLayout::kRows);
  }
}

TEST_P(QuantBackendTest, ZeroColumnsIsBias) {
  const auto w = quantized_matrix(rng_, DType::Q4, 5, 0, 32);
  const auto bias = random_vec(rng_, 5);
  std::vector<float> got = test::poisoned(10);
  backend_->matmul(nullptr, 2, w.m, bias.data(), got.data());
  EXPECT_TRUE(near_l2(got, {bias[0], bias[1], bias[2], bias[3], bias[4], bias[0], bias[1], bias[2], bias[3], bias[4]}));
}

INSTANTIATE_TEST_SUITE_P(Kernels, QuantBackendTest,
                         ::testing::Values(Config{CpuKernels::kPortable, 1}, Config{CpuKernels::kPortable, 3},
                                           Config{CpuKernels::kAvx2, 1}, Config{CpuKernels::kAvx2, 3},
                                           Config{CpuKernels::kAvx512, 1}, Config{CpuKernels::kAvx512, 3}),
                         config_name);

TEST(QuantBackendDeathTest, SiluMulNeedsMatchingGroups) {
  std::mt19937 rng(1);
  const auto gate = quantized_matrix(rng, DType::Q4, 4, 64, 32);
  const auto up = quantized_matrix(rng, DType::Q4, 4, 64, 64);
  const auto x = random_vec(rng, 64);
  std::vector<float> out(4);
  CpuBackend cpu(1);
  EXPECT_DEATH(cpu.matmul_silu_mul(x.data(), 1, gate.m, up.m, out.data()), "group");
}

// ---- Kernel table entries, AVX2 against portable ----

class QuantKernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = test::missing_cpu_features(CpuKernels::kAvx2); !why.empty()) GTEST_SKIP() << why;
  }
  const cpu::Kernels& port_ = cpu::portable_kernels();
  const cpu::Kernels& avx2_ = cpu::avx2_kernels();
  std::mt19937 rng_{99};
};

TEST_F(QuantKernelTest, QuantizeActivationsBitIdentical) {
  for (int n : {1, 5, 31, 32, 33, 100, 257, 2048}) {
    auto x = random_vec(rng_, static_cast<size_t>(n), -3.0f, 3.0f);
    if (n > 40) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // an all-zero block
    const size_t nb = static_cast<size_t>((n + 31) / 32);
    std::vector<quant::BlockQ8Act> want(nb), a(nb), p(nb);
    quant::quantize_activations(x.data(), n, want.data());
    avx2_.quantize_act(x.data(), n, a.data());
    port_.quantize_act(x.data(), n, p.data());
    EXPECT_EQ(std::memcmp(want.data(), a.data(), nb * sizeof(quant::BlockQ8Act)), 0) << n;
    EXPECT_EQ(std::memcmp(want.data(), p.data(), nb * sizeof(quant::BlockQ8Act)), 0) << n;
  }
}

TEST_F(QuantKernelTest, DequantMatchesReferenceExactly) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8, DType::Q4, DType::Q4A, DType::NF4}) {
    for (int g : quant::kGroupSizes) {
      for (int cols : {1, 7, 33, 100, 257, 600}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(t) << " g=" << g << " cols=" << cols);
        const auto w = test::any_matrix(rng_, t, 2, cols, g);
        std::vector<float> want(static_cast<size_t>(cols));
        quant::dequantize_matrix_row(w.m, 1, want.data());
        const int step = is_grouped(t) ? g : 1;
        for (int k0 : {0, step, 2 * step, 256}) {
          if (k0 >= cols) continue;
          for (const cpu::Kernels* k : {&port_, &avx2_}) {
            std::vector<float> got(static_cast<size_t>(cols - k0), std::nanf(""));
            k->dequant[static_cast<int>(t)](w.m.row(1), w.m.group, k0, cols - k0, got.data());
            EXPECT_EQ(got, std::vector<float>(want.begin() + k0, want.end())) << k->name << " k0=" << k0;
          }
        }
      }
    }
  }
}

TEST_F(QuantKernelTest, PackMatchesPortable) {
  for (DType t : {DType::BF16, DType::Q8, DType::Q4, DType::Q4A, DType::NF4}) {
    for (int g : quant::kGroupSizes) {
      SCOPED_TRACE(::testing::Message() << dtype_name(t) << " g=" << g);
      const int cols = 700;
      const auto w = test::any_matrix(rng_, t, 16, cols, g);
      for (int nr : {16, 11, 3}) {
        for (int64_t k0 : {0, 256, 512}) {
          const int64_t kc = std::min<int64_t>(256, cols - k0);
          std::vector<float> a(static_cast<size_t>(kc) * cpu::kGemmNR, std::nanf(""));
          std::vector<float> p(a.size(), std::nanf(""));
          const int dt = static_cast<int>(t);
          avx2_.pack[dt](w.m.data, w.m.row_bytes(), w.m.group, nr, cpu::kGemmNR, k0, kc, a.data());
          port_.pack[dt](w.m.data, w.m.row_bytes(), w.m.group, nr, cpu::kGemmNR, k0, kc, p.data());
          EXPECT_EQ(a, p) << "nr=" << nr << " k0=" << k0;
        }
      }
    }
  }
}

TEST_F(QuantKernelTest, QdotMatchesPortable) {
  for (DType t : {DType::Q8, DType::Q4, DType::Q4A, DType::NF4}) {
    for (int g : quant::kGroupSizes) {
      if (t == DType::Q8 && g != 32) continue;
      for (int cols : {1, 7, 33, 64, 100, 172, 257, 2048, 5632}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(t) << " g=" << g << " cols=" << cols);
        const auto w = quantized_matrix(rng_, t, 8, cols, g);
        const auto x = random_vec(rng_, static_cast<size_t>(cols));
        std::vector<quant::BlockQ8Act> xq(static_cast<size_t>((cols + 31) / 32));
        quant::quantize_activations(x.data(), cols, xq.data());
        const int dt = static_cast<int>(t);
        const void* rows[4] = {w.m.row(0), w.m.row(1), w.m.row(2), w.m.row(3)};
        const void* next[4] = {w.m.row(4), w.m.row(5), w.m.row(6), w.m.row(7)};
        std::vector<float> a(5), p(5);
        avx2_.qdot4[dt](xq.data(), rows, next, cols, w.m.group, a.data());
        port_.qdot4[dt](xq.data(), rows, nullptr, cols, w.m.group, p.data());
        a[4] = avx2_.qdot1[dt](xq.data(), w.m.row(5), cols, w.m.group);
        p[4] = port_.qdot1[dt](xq.data(), w.m.row(5), cols, w.m.group);
        EXPECT_TRUE(near_l2(a, p, kExactTol));
        for (int j = 0; j < 4; ++j) EXPECT_NEAR(a[j], p[j], 1e-4f * (1 + std::fabs(p[j]))) << j;
        if (avx2_.qdot8[dt] != nullptr) {  // the eight-row kernel against portable single-row dots
          const void* rows8[8];
          for (int j = 0; j < 8; ++j) rows8[j] = w.m.row(j);
          std::vector<float> a8(8, std::nanf("")), p8(8);
          avx2_.qdot8[dt](xq.data(), rows8, rows8, cols, w.m.group, a8.data());
          for (int j = 0; j < 8; ++j) p8[j] = port_.qdot1[dt](xq.data(), w.m.row(j), cols, w.m.group);
          EXPECT_TRUE(near_l2(a8, p8, kExactTol)) << "qdot8";
        }
        if (t == DType::Q8) {  // fp32-activation Q8 dots too
          std::vector<float> fa(5), fp(5);
          avx2_.dot4[dt](x.data(), rows, next, cols, fa.data());
          port_.dot4[dt](x.data(), rows, nullptr, cols, fp.data());
          fa[4] = avx2_.dot1[dt](x.data(), w.m.row(5), cols);
          fp[4] = port_.dot1[dt](x.data(), w.m.row(5), cols);
          EXPECT_TRUE(near_l2(fa, fp, kExactTol));
        }
      }
    }
  }
}

// The panel layout's positions against the canonical rows: every code, scale and minimum of a repacked matrix is
// found where panel8.h says, padding rows are zero.
TEST_F(QuantKernelTest, PanelRepackPlacesEveryValue) {
  ThreadPool pool(2);
  for (DType t : {DType::Q4, DType::Q4A}) {
    for (int g : quant::kGroupSizes) {
      for (int rows : {1, 8, 13}) {
        const int cols = 2 * g + 32;
        SCOPED_TRACE(::testing::Message() << dtype_name(t) << " g=" << g << " rows=" << rows);
        const auto w = quantized_matrix(rng_, t, rows, cols, g);
        std::vector<uint8_t> buf(cpu::panel8_bytes(w.m), 0xAB);
        const Matrix p = cpu::repack_panel8(w.m, buf.data(), pool);
        const int64_t blocks = (cols + g - 1) / g, hdr = t == DType::Q4A ? 4 : 2, block_bytes = hdr + g / 2;
        for (int64_t r = 0; r < (rows + 7) / 8 * 8; ++r) {
          const auto* panel = static_cast<const uint8_t*>(p.row(r / 8 * 8));
          const int j = static_cast<int>(r % 8);
          for (int64_t b = 0; b < blocks; ++b) {
            const uint8_t* block = r < rows ? static_cast<const uint8_t*>(w.m.row(r)) + b * block_bytes : nullptr;
            const auto word = [](const uint8_t* q) { return static_cast<int>(q[0] | q[1] << 8); };
            EXPECT_EQ(word(panel + cpu::panel_scale_pos(t, g, j, b)), block ? word(block) : 0);
            if (t == DType::Q4A) {
              EXPECT_EQ(word(panel + cpu::panel_min_pos(g, j, b)), block ? word(block + 2) : 0);
            }
            for (int k = 0; k < g; ++k) {
              const cpu::PanelCodePos pos = cpu::panel_code_pos(t, g, j, b * g + k);
              const int got = pos.high ? panel[pos.byte] >> 4 : panel[pos.byte] & 15;
              const int want = !block ? 0 : k < g / 2 ? block[hdr + k] & 15 : block[hdr + k - g / 2] >> 4;
              ASSERT_EQ(got, want) << "row " << r << " col " << b * g + k;
            }
          }
        }
      }
    }
  }
}

TEST_F(QuantKernelTest, Q4FourPanelDecodeBitIdenticalToOnePanel) {
  expect_four_panels_match_one(avx2_, rng_);
}

// qdot_panel and pack_panel: AVX2 against portable, and against the canonical kernels on the same rows.
TEST_F(QuantKernelTest, PanelKernelsMatchPortable) {
  ThreadPool pool(1);
  for (DType t : {DType::Q4, DType::Q4A}) {
    for (int g : quant::kGroupSizes) {
      for (int cols : {1, 7, 33, 64, 100, 172, 257, 2048}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(t) << " g=" << g << " cols=" << cols);
        const PanelCase pc = panel_case(rng_, pool, t, cols, g);
        const OwnedMatrix& w = pc.w;
        const Matrix& p = pc.p;
        const std::vector<quant::BlockQ8Act>& xq = pc.xq;
        const int dt = static_cast<int>(t);
        std::vector<float> a(8, std::nanf("")), pp(8, std::nanf("")), canon(8), canon8(8, std::nanf(""));
        avx2_.qdot_panel[dt](xq.data(), p.data, cols, g, a.data());
        port_.qdot_panel[dt](xq.data(), p.data, cols, g, pp.data());
        for (int j = 0; j < 8; ++j) canon[j] = port_.qdot1[dt](xq.data(), w.m.row(j), cols, g);
        EXPECT_EQ(pp, canon) << "portable panel vs portable rows";
        EXPECT_TRUE(near_l2(a, pp, kExactTol)) << "avx2 vs portable";
        if (g == 32) {  // the same arithmetic as the eight-row canonical kernel
          const void* rows8[8];
          for (int j = 0; j < 8; ++j) rows8[j] = w.m.row(j);
          avx2_.qdot8[dt](xq.data(), rows8, nullptr, cols, g, canon8.data());
          EXPECT_EQ(a, canon8) << "avx2 panel vs avx2 qdot8";
        }
        // Packing: every k block the GEMM asks for (k0 a multiple of 256), against the canonical pack.
        for (int64_t k0 = 0; k0 < cols; k0 += 256) {
          const int64_t kc = std::min<int64_t>(256, cols - k0);
          std::vector<float> pa(static_cast<size_t>(kc) * cpu::kGemmNR, std::nanf(""));
          std::vector<float> pport = pa, pcanon(pa.size(), std::nanf(""));
          avx2_.pack_panel[dt](p.data, g, k0, kc, pa.data());
          port_.pack_panel[dt](p.data, g, k0, kc, pport.data());
          port_.pack[dt](w.m.data, w.m.row_bytes(), g, 8, 8, k0, kc, pcanon.data());
          for (size_t i = 0; i < pa.size(); ++i) {
            if (i % cpu::kGemmNR >= 8) continue;  // columns 8..15 are the other half's
            ASSERT_EQ(pa[i], pcanon[i]) << "avx2 pack at " << i;
            ASSERT_EQ(pport[i], pcanon[i]) << "portable pack at " << i;
          }
        }
      }
    }
  }
}

TEST_F(QuantKernelTest, IntegerGemmPiecesMatchPortable) {
  const int cols = 300;  // 10 activation blocks: the last one ragged
  const auto w = quantized_matrix(rng_, DType::Q8, 16, cols, 0);
  const int64_t blocks = 10, kp = 320;
  for (int nr : {16, 9}) {
    for (int64_t k0 : {int64_t{0}, int64_t{64}}) {
      const int64_t kc = kp - k0;
      std::vector<int16_t> pa(static_cast<size_t>(kc) * cpu::kGemmNR, 7), pp(pa.size(), 7);
      std::vector<float> sa(16, -1), sp(16, -1);
      avx2_.pack_i8(w.m.data, w.m.row_bytes(), cols, nr, cpu::kGemmNR, k0, kc, pa.data(), sa.data());
      port_.pack_i8(w.m.data, w.m.row_bytes(), cols, nr, cpu::kGemmNR, k0, kc, pp.data(), sp.data());
      EXPECT_EQ(pa, pp) << "nr=" << nr << " k0=" << k0;
      EXPECT_EQ(sa, sp);
    }
  }
  // Activations widened; then the tile for mr = 1..kGemmI8MR, fresh and accumulating.
  const ExpandedActs e = expand_acts(rng_, avx2_, port_, cols, blocks, kp);
  EXPECT_EQ(e.a, e.b);
  EXPECT_EQ(e.sa, e.sb);
  const std::vector<int16_t>& xp = e.b;
  const std::vector<float>& tp = e.sb;
  std::vector<int16_t> panel(static_cast<size_t>(kp) * cpu::kGemmNR);
  std::vector<float> ws(16);
  port_.pack_i8(w.m.data, w.m.row_bytes(), cols, 16, cpu::kGemmNR, 0, kp, panel.data(), ws.data());
  for (int mr = 1; mr <= cpu::kGemmI8MR; ++mr) {
    for (bool first : {true, false}) {
      std::vector<float> ca(static_cast<size_t>(mr) * 20, 0.5f), cp(ca.size(), 0.5f);
      avx2_.gemm_i8_tile(xp.data(), kp, tp.data(), blocks, mr, panel.data(), kp, first, ca.data(), 20);
      port_.gemm_i8_tile(xp.data(), kp, tp.data(), blocks, mr, panel.data(), kp, first, cp.data(), 20);
      EXPECT_TRUE(near_l2(ca, cp, 1e-6)) << "mr=" << mr << " first=" << first;
      for (int i = 0; i < mr; ++i) {
        for (int j = 16; j < 20; ++j) EXPECT_EQ(ca[i * 20 + j], 0.5f) << "wrote past the tile";
      }
    }
  }
}

// ---- The AVX-512 set's GEMM micro-kernels and GEMVs against their AVX2 twins (bit for bit, but for the fp decode
// kernels, which agree bit for bit among themselves) ----

class Avx512KernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = test::missing_cpu_features(CpuKernels::kAvx512); !why.empty()) GTEST_SKIP() << why;
  }
  const cpu::Kernels& avx2_ = cpu::avx2_kernels();
  const cpu::Kernels& avx512_ = cpu::avx512_kernels();
  std::mt19937 rng_{7};
};

TEST_F(Avx512KernelTest, Fp32TileBitIdenticalToAvx2) {
  const int64_t kc = 37;
  const int64_t ldx = 41, ldc = 20;
  const auto x = random_vec(rng_, cpu::kMaxGemmMR * ldx);
  const auto panel = random_vec(rng_, kc * cpu::kGemmNR);
  const auto init = random_vec(rng_, cpu::kGemmNR);
  const auto c0 = random_vec(rng_, cpu::kMaxGemmMR * ldc);
  ASSERT_EQ(avx512_.gemm_tile_rows, cpu::kMaxGemmMR);
  for (int mr = 1; mr <= avx512_.gemm_tile_rows; ++mr) {
    for (const float* in : {static_cast<const float*>(nullptr), init.data()}) {
      std::vector<float> a = c0, b = c0;
      for (int i = 0; i < mr; i += avx2_.gemm_tile_rows) {  // the taller tile against AVX2's in pieces
        avx2_.gemm_tile(x.data() + i * ldx, ldx, std::min(mr - i, avx2_.gemm_tile_rows), panel.data(), kc, in,
                        a.data() + i * ldc, ldc);
      }
      avx512_.gemm_tile(x.data(), ldx, mr, panel.data(), kc, in, b.data(), ldc);
      EXPECT_EQ(a, b) << "mr=" << mr << " init=" << (in != nullptr);
    }
  }
}

// fp32-activation decode (f32/f16/bf16 weights): the AVX-512 set accumulates 16 lanes per row, so its results
// differ from AVX2's in rounding only; within the set, the batched tile (1..dot_tile_rows x rows) and the two-row
// kernel give every row exactly dot4's bits. Ragged widths, with prefetch rows.
TEST_F(Avx512KernelTest, Fp16xDecodeFormsAgreeBitForBit) {
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const int dt = static_cast<int>(t);
    for (int64_t cols : {1, 7, 8, 9, 16, 31, 40, 64, 100, 777, 2048}) {
      const auto w = test::random_matrix(rng_, t, 8, cols);
      const int64_t ldx = cols + 3;
      const auto x = random_vec(rng_, cpu::kMaxDotTileRows * static_cast<size_t>(ldx));
      const void* rows[4] = {w.m.row(0), w.m.row(1), w.m.row(2), w.m.row(3)};
      const void* next[4] = {w.m.row(4), w.m.row(5), w.m.row(6), w.m.row(7)};
      // dot4 per x row: the reference bits; and AVX2's dot4, equal to rounding.
      std::vector<float> want(4 * cpu::kMaxDotTileRows);
      for (int i = 0; i < cpu::kMaxDotTileRows; ++i) {
        avx512_.dot4[dt](x.data() + i * ldx, rows, next, cols, want.data() + 4 * i);
        std::vector<float> a(4), b(want.begin() + 4 * i, want.begin() + 4 * i + 4);
        avx2_.dot4[dt](x.data() + i * ldx, rows, next, cols, a.data());
        EXPECT_TRUE(near_l2(b, a, 1e-5)) << dtype_name(t) << " cols=" << cols;
      }
      std::vector<float> pair(8, std::nanf(""));
      avx512_.dot4x2[dt](x.data(), ldx, rows, next, cols, pair.data(), 4);
      EXPECT_EQ(pair, std::vector<float>(want.begin(), want.begin() + 8)) << dtype_name(t) << " cols=" << cols;
      ASSERT_EQ(avx512_.dot_tile_rows, cpu::kMaxDotTileRows);
      for (int m = 1; m <= avx512_.dot_tile_rows; ++m) {
        for (int half : {0, 1}) {  // weight rows 0,1 and 2,3
          std::vector<float> got(2 * m, std::nanf(""));
          avx512_.dot2xm[dt](x.data(), ldx, m, rows + 2 * half, next, cols, got.data(), 2);
          for (int i = 0; i < m; ++i) {
            EXPECT_EQ(got[2 * i], want[4 * i + 2 * half]) << dtype_name(t) << " cols=" << cols << " m=" << m;
            EXPECT_EQ(got[2 * i + 1], want[4 * i + 2 * half + 1]) << dtype_name(t) << " cols=" << cols << " m=" << m;
          }
        }
      }
    }
  }
}

TEST_F(Avx512KernelTest, Q8DecodeBitIdenticalToAvx2) {
  for (int cols : {1, 7, 8, 15, 16, 63, 64, 65, 100, 200, 777, 2048}) {
    const auto w = quantized_matrix(rng_, DType::Q8, 8, cols, 0);
    const auto x = random_vec(rng_, static_cast<size_t>(cols));
    const void* rows[4] = {w.m.row(0), w.m.row(1), w.m.row(2), w.m.row(3)};
    const void* next[4] = {w.m.row(4), w.m.row(5), w.m.row(6), w.m.row(7)};
    std::vector<float> a(4), b(4);
    avx2_.dot4[cpu::kQ8](x.data(), rows, next, cols, a.data());
    avx512_.dot4[cpu::kQ8](x.data(), rows, next, cols, b.data());
    EXPECT_EQ(a, b) << "cols=" << cols;
  }
}

// Q8 decode with int8 activations: eight-, four- and one-row calls against AVX2's four- and one-row kernels,
// ragged widths (rows ending inside a 32-value block), with prefetch rows.
TEST_F(Avx512KernelTest, Q8Int8ActDecodeBitIdenticalToAvx2) {
  const int dt = cpu::kQ8;
  ASSERT_NE(avx512_.qdot8[dt], nullptr);
  for (int cols : {1, 7, 31, 32, 33, 64, 100, 200, 777, 2048}) {
    const auto w = quantized_matrix(rng_, DType::Q8, 16, cols, 0);
    const auto x = random_vec(rng_, static_cast<size_t>(cols));
    std::vector<quant::BlockQ8Act> xq(static_cast<size_t>((cols + 31) / 32));
    quant::quantize_activations(x.data(), cols, xq.data());
    const void* rows[16];
    for (int j = 0; j < 16; ++j) rows[j] = w.m.row(j);
    std::vector<float> a(8), b8(8), b4(8);
    avx2_.qdot4[dt](xq.data(), rows, rows + 4, cols, 0, a.data());
    avx2_.qdot4[dt](xq.data(), rows + 4, nullptr, cols, 0, a.data() + 4);
    avx512_.qdot8[dt](xq.data(), rows, rows + 8, cols, 0, b8.data());
    avx512_.qdot4[dt](xq.data(), rows, rows + 4, cols, 0, b4.data());
    avx512_.qdot4[dt](xq.data(), rows + 4, nullptr, cols, 0, b4.data() + 4);
    EXPECT_EQ(a, b8) << "cols=" << cols;
    EXPECT_EQ(a, b4) << "cols=" << cols;
    for (int j = 0; j < 8; ++j)
      EXPECT_EQ(avx2_.qdot1[dt](xq.data(), rows[j], cols, 0), avx512_.qdot1[dt](xq.data(), rows[j], cols, 0))
          << "cols=" << cols << " row " << j;
  }
}

// NF4 rows with int8 activations (four-row calls), every group size, ragged widths.
TEST_F(Avx512KernelTest, Nf4DecodeBitIdenticalToAvx2) {
  const int dt = cpu::kNF4;
  for (int g : quant::kGroupSizes) {
    for (int cols : {1, 7, 33, 64, 100, 172, 257, 2048}) {
      const auto w = quantized_matrix(rng_, DType::NF4, 8, cols, g);
      const auto x = random_vec(rng_, static_cast<size_t>(cols));
      std::vector<quant::BlockQ8Act> xq(static_cast<size_t>((cols + 31) / 32));
      quant::quantize_activations(x.data(), cols, xq.data());
      const void* rows[8];
      for (int j = 0; j < 8; ++j) rows[j] = w.m.row(j);
      std::vector<float> a(4, std::nanf("")), b(4, std::nanf(""));
      avx2_.qdot4[dt](xq.data(), rows, rows + 4, cols, g, a.data());
      avx512_.qdot4[dt](xq.data(), rows, rows + 4, cols, g, b.data());
      EXPECT_EQ(a, b) << "g=" << g << " cols=" << cols;
    }
  }
}

// Q4/Q4A decode over the panel layout, every group size, ragged widths (a last group cut short included).
TEST_F(Avx512KernelTest, Q4PanelDecodeBitIdenticalToAvx2) {
  ThreadPool pool(1);
  for (DType t : {DType::Q4, DType::Q4A}) {
    for (int g : quant::kGroupSizes) {
      for (int cols : {1, 7, 33, 64, 100, 172, 257, 2048}) {
        const PanelCase pc = panel_case(rng_, pool, t, cols, g);
        const Matrix& p = pc.p;
        const std::vector<quant::BlockQ8Act>& xq = pc.xq;
        const int dt = static_cast<int>(t);
        std::vector<float> a(8, std::nanf("")), b(8, std::nanf(""));
        avx2_.qdot_panel[dt](xq.data(), p.data, cols, g, a.data());
        avx512_.qdot_panel[dt](xq.data(), p.data, cols, g, b.data());
        EXPECT_EQ(a, b) << dtype_name(t) << " g=" << g << " cols=" << cols;
      }
    }
  }
}

TEST_F(Avx512KernelTest, Q4FourPanelDecodeBitIdenticalToOnePanel) {
  expect_four_panels_match_one(avx512_, rng_);
}

// The AVX-512 set keeps its own activation and panel formats (vpdpbusd: unsigned activations, int8 quads and
// column sums), so its pieces are checked together: expand + pack + tile must give the AVX2 pieces' floats exactly,
// for ragged row counts and columns, packs split over k like the driver's, and the two half-width packs the fused
// gate/up GEMM makes.
TEST_F(Avx512KernelTest, IntegerGemmBitIdenticalToAvx2) {
  const int cols = 300;  // 10 activation blocks: the last one ragged
  const int64_t blocks = 10, kp = 320;
  const auto w = quantized_matrix(rng_, DType::Q8, 16, cols, 0);
  const auto w2 = quantized_matrix(rng_, DType::Q8, 16, cols, 0);
  // Each set expands into its own storage (int16 pairs for vpmaddwd, unsigned bytes for vpdpbusd); the scales agree.
  const ExpandedActs e = expand_acts(rng_, avx2_, avx512_, cols, blocks, kp);
  EXPECT_EQ(e.sa, e.sb);
  for (int nr : {16, 9}) {
    for (bool halves : {false, true}) {
      // Pack in two k pieces (0..256, 256..320), as the driver does with its kKc blocks.
      std::vector<int16_t> pa(static_cast<size_t>(kp) * cpu::kGemmNR, 5), pb(pa.size(), 5);
      std::vector<float> wa(16, -1), wb(16, -1);
      for (int64_t k0 : {int64_t{0}, int64_t{256}}) {
        const int64_t kc = std::min<int64_t>(256, kp - k0);
        for (const cpu::Kernels* ks : {&avx2_, &avx512_}) {
          int16_t* panel = (ks == &avx2_ ? pa : pb).data() + k0 * cpu::kGemmNR;
          float* scales = (ks == &avx2_ ? wa : wb).data();
          if (halves) {  // gate rows 0..7 and up rows (another matrix) side by side
            ks->pack_i8(w.m.data, w.m.row_bytes(), cols, std::min(nr, 8), 8, k0, kc, panel, scales);
            ks->pack_i8(w2.m.data, w2.m.row_bytes(), cols, std::min(nr, 8), 8, k0, kc, panel + cpu::kGemmNR,
                        scales + 8);
          } else {
            ks->pack_i8(w.m.data, w.m.row_bytes(), cols, nr, cpu::kGemmNR, k0, kc, panel, scales);
          }
        }
      }
      EXPECT_EQ(wa, wb);
      for (int mr = 1; mr <= cpu::kGemmI8MR; ++mr) {
        for (bool first : {true, false}) {
          std::vector<float> ca(static_cast<size_t>(mr) * 20, 0.5f), cb(ca.size(), 0.5f);
          avx2_.gemm_i8_tile(e.a.data(), kp, e.sa.data(), blocks, mr, pa.data(), kp, first, ca.data(), 20);
          avx512_.gemm_i8_tile(e.b.data(), kp, e.sb.data(), blocks, mr, pb.data(), kp, first, cb.data(), 20);
          EXPECT_EQ(ca, cb) << "nr=" << nr << " halves=" << halves << " mr=" << mr << " first=" << first;
        }
      }
    }
  }
}

}  // namespace
}  // namespace tessera
