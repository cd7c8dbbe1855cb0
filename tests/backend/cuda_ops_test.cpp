// Every CudaBackend op and every weight format against the CPU reference ops (engine/backend/cpu/reference_ops.h)
// on fresh random inputs (the seed is printed on failure), ragged shapes, and outputs poisoned with NaN before
// each call so an op that leaves an element unwritten fails. Tolerances are per op and path (relative L2 error):
// fp32 paths near fp32 rounding, the tensor-core and half-precision cuBLAS paths at their operand precision.
// Without a usable GPU every test is skipped with the reason.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/reference_ops.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/cuda/cuda_check.h"
#include "engine/backend/cuda/kernels.h"
#include "engine/backend/cuda/weight_upload.h"
#include "test_util.h"

namespace tessera {
namespace {

using test::near_l2;

// A device copy of a float vector.
struct DevFloats {
  cuda::DeviceBuffer buf;
  size_t n = 0;
  float* p() const { return buf.as<float>(); }
};

DevFloats to_device(const std::vector<float>& v) {
  DevFloats d{cuda::DeviceBuffer(std::max<size_t>(1, v.size()) * sizeof(float)), v.size()};
  if (!v.empty()) TESSERA_CUDA_CHECK(cudaMemcpy(d.p(), v.data(), v.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}

DevFloats poisoned_device(size_t n) {
  return to_device(std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
}

std::vector<float> to_host(CudaBackend& b, const DevFloats& d) {
  b.synchronize();
  std::vector<float> v(d.n);
  if (d.n > 0) TESSERA_CUDA_CHECK(cudaMemcpy(v.data(), d.p(), d.n * sizeof(float), cudaMemcpyDeviceToHost));
  return v;
}

class CudaOpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (cuda_device_count(&skip_reason_) == 0) return;
    try {
      CudaBackendOptions opt;
      opt.pool_bytes = size_t{256} << 20;
      backend_ = std::make_unique<CudaBackend>(opt);
    } catch (const Error& e) {
      skip_reason_ = e.what();
    }
  }
  static void TearDownTestSuite() { backend_.reset(); }

  void SetUp() override {
    if (!backend_) GTEST_SKIP() << "no usable CUDA GPU: " << skip_reason_;
    seed_ = std::random_device{}();
    rng_.seed(seed_);
  }
  std::string trace() const { return "seed " + std::to_string(seed_); }

  CudaBackend& b() { return *backend_; }

  static std::unique_ptr<CudaBackend> backend_;
  static std::string skip_reason_;
  unsigned seed_ = 0;
  std::mt19937 rng_;
  cuda::DeviceWeightStore store_;
};

std::unique_ptr<CudaBackend> CudaOpsTest::backend_;
std::string CudaOpsTest::skip_reason_;

struct Format {
  DType dtype;
  int group;
};

const std::vector<Format>& all_formats() {
  static const std::vector<Format> f = {{DType::F32, 0},   {DType::F16, 0},   {DType::BF16, 0}, {DType::Q8, 0},
                                        {DType::Q4, 32},   {DType::Q4, 64},   {DType::Q4, 128}, {DType::Q4A, 32},
                                        {DType::Q4A, 64},  {DType::Q4A, 128}, {DType::NF4, 32}, {DType::NF4, 128},
                                        {DType::S24Q8, 0}, {DType::S24Q4, 0}};
  return f;
}

std::string describe(const Format& f) {
  return std::string(dtype_name(f.dtype)) + (f.group ? " g" + std::to_string(f.group) : "");
}

// Formats that live in the tiled 4-bit layout on the device and always go through the tensor-core mma_q4 path.
bool tiled_on_device(DType t) {
  return t == DType::Q4 || t == DType::Q4A || t == DType::S24Q4;
}

// Relative L2 tolerance of a matmul path: Q4/Q4A use fp16 tensor cores for every n; otherwise GEMV
// (n <= gemv_max_rows) is fp32 for every format; above it quantized weights use fp16 tensor cores, F16/BF16
// weights cuBLAS on activations rounded to that type, F32 plain cuBLAS.
double matmul_tol(DType t, int n) {
  if (tiled_on_device(t)) return 3e-3;
  if (n <= cuda::gemv_max_rows(t) || t == DType::F32) return 3e-5;
  if (t == DType::BF16) return 6e-3;
  return 3e-3;  // F16 and quantized (fp16 operands)
}

TEST_F(CudaOpsTest, NameNamesTheDevice) {
  EXPECT_EQ(b().name().rfind("cuda(", 0), 0u) << b().name();
}

TEST_F(CudaOpsTest, MatmulEveryFormatRaggedShapes) {
  SCOPED_TRACE(trace());
  const std::vector<std::pair<int, int>> shapes = {{1, 1}, {37, 64}, {130, 200}, {67, 1000}, {256, 4096}};
  for (const Format& f : all_formats()) {
    for (const auto& [rows, cols] : shapes) {
      test::OwnedMatrix w = test::any_matrix(rng_, f.dtype, rows, cols, f.group);
      const Matrix dw = store_.upload_matrix(w.m);
      for (const int n : {1, 2, 3, 8, 9, 16, 17, 67}) {
        {
          const bool with_bias = n % 2 == 1;
          const auto x = test::random_vec(rng_, static_cast<size_t>(n) * cols);
          const auto bias = test::random_vec(rng_, static_cast<size_t>(rows));
          std::vector<float> want(static_cast<size_t>(n) * rows);
          ref::matmul(x.data(), n, w.m, nullptr, want.data());
          const DevFloats dx = to_device(x), dbias = to_device(bias);
          const DevFloats dy = poisoned_device(want.size());
          b().matmul(dx.p(), n, dw, with_bias ? dbias.p() : nullptr, dy.p());
          // The tolerance is relative to the product: with the bias added, a sum that nearly cancels (a 1x1 matrix
          // whose product is close to minus its bias) turns the fp16 paths' 1e-3 into any relative error. The
          // bias is added in fp32, once, so subtracting it again leaves the product to rounding of the sum.
          std::vector<float> got = to_host(b(), dy);
          if (with_bias) {
            for (size_t i = 0; i < got.size(); ++i) got[i] -= bias[i % static_cast<size_t>(rows)];
          }
          EXPECT_TRUE(near_l2(got, want, matmul_tol(f.dtype, n)))
              << describe(f) << " n=" << n << " " << rows << "x" << cols << (with_bias ? " +bias" : "");
        }
      }
    }
  }
}

// The quantized GEMV's (Q8, NF4) variants with several weight rows per warp (chosen by size, so the ragged shapes
// above mostly take one): every variant, for rows that do and do not fill a warp's share, plain and fused.
TEST_F(CudaOpsTest, QuantGemvEveryRowsPerWarp) {
  SCOPED_TRACE(trace());
  struct Reset {
    ~Reset() { cuda::set_gemv_quant_rows_per_warp(0); }
  } reset;
  for (const Format& f : all_formats()) {
    if (!is_quantized(f.dtype) || tiled_on_device(f.dtype)) continue;
    for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{37, 64}, {130, 200}, {67, 1000}}) {
      test::OwnedMatrix w = test::any_matrix(rng_, f.dtype, rows, cols, f.group);
      test::OwnedMatrix up = test::any_matrix(rng_, f.dtype, rows, cols, f.group);
      const Matrix dw = store_.upload_matrix(w.m), du = store_.upload_matrix(up.m);
      for (const int rpw : {1, 2, 4}) {
        cuda::set_gemv_quant_rows_per_warp(rpw);
        for (const int n : {1, 3, 8, 13, 16}) {
          const auto x = test::random_vec(rng_, static_cast<size_t>(n) * cols);
          const auto bias = test::random_vec(rng_, static_cast<size_t>(rows));
          std::vector<float> want(static_cast<size_t>(n) * rows), want_mlp(want.size());
          ref::matmul(x.data(), n, w.m, bias.data(), want.data());
          ref::matmul_silu_mul(x.data(), n, w.m, up.m, want_mlp.data());
          const DevFloats dx = to_device(x), dbias = to_device(bias);
          const DevFloats dy = poisoned_device(want.size()), dmlp = poisoned_device(want.size());
          b().matmul(dx.p(), n, dw, dbias.p(), dy.p());
          b().matmul_silu_mul(dx.p(), n, dw, du, dmlp.p());
          EXPECT_TRUE(near_l2(to_host(b(), dy), want, 3e-5)) << describe(f) << " rpw=" << rpw << " n=" << n;
          EXPECT_TRUE(near_l2(to_host(b(), dmlp), want_mlp, 6e-5)) << describe(f) << " mlp rpw=" << rpw << " n=" << n;
        }
      }
    }
  }
}

// Every path of the tensor-core int4 kernel (cuda::set_mma_q4_path): the default (activations staged in shared
// memory up to 8 rows when they fit, the scale applied after the mma for symmetric groups >= 64), the scale after the
// mma with activations in registers, and the scale per weight. Plain with a bias and fused, for row counts on both
// sides of the kernel's 8- and 16-row switches, unaligned rows (333 columns) and rows long enough that 8 of them
// do not fit in shared memory.
TEST_F(CudaOpsTest, MmaQ4EveryPath) {
  SCOPED_TRACE(trace());
  struct Reset {
    ~Reset() { cuda::set_mma_q4_path(0); }
  } reset;
  const std::vector<Format> formats = {{DType::Q4, 32}, {DType::Q4, 64}, {DType::Q4, 128}, {DType::Q4A, 64}};
  for (const Format& f : formats) {
    for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{37, 64}, {33, 333}, {130, 1000}, {48, 11008}}) {
      test::OwnedMatrix w = test::any_matrix(rng_, f.dtype, rows, cols, f.group);
      test::OwnedMatrix up = test::any_matrix(rng_, f.dtype, rows, cols, f.group);
      const Matrix dw = store_.upload_matrix(w.m), du = store_.upload_matrix(up.m);
      for (const int path : {0, 1, 2}) {
        cuda::set_mma_q4_path(path);
        for (const int n : {1, 3, 8, 9, 16}) {
          const auto x = test::random_vec(rng_, static_cast<size_t>(n) * cols);
          const auto bias = test::random_vec(rng_, static_cast<size_t>(rows));
          std::vector<float> want(static_cast<size_t>(n) * rows), want_mlp(want.size());
          ref::matmul(x.data(), n, w.m, nullptr, want.data());
          ref::matmul_silu_mul(x.data(), n, w.m, up.m, want_mlp.data());
          const DevFloats dx = to_device(x), dbias = to_device(bias);
          const DevFloats dy = poisoned_device(want.size()), dmlp = poisoned_device(want.size());
          b().matmul(dx.p(), n, dw, dbias.p(), dy.p());
          b().matmul_silu_mul(dx.p(), n, dw, du, dmlp.p());
          std::vector<float> got = to_host(b(), dy);
          for (size_t i = 0; i < got.size(); ++i) got[i] -= bias[i % static_cast<size_t>(rows)];
          const std::string what = describe(f) + " path " + std::to_string(path) + " n=" + std::to_string(n) + " " +
                                   std::to_string(rows) + "x" + std::to_string(cols);
          EXPECT_TRUE(near_l2(got, want, 3e-3)) << what;
          EXPECT_TRUE(near_l2(to_host(b(), dmlp), want_mlp, 6e-3)) << what << " mlp";
        }
      }
    }
  }
}

// The int4 kernel starts loading its weights before the previous kernel in the stream has finished (programmatic
// dependent launch); its activations must still be the previous kernel's finished output. A chain of int4
// matmuls, each reading the last one's output with nothing in between, for every path and row count.
TEST_F(CudaOpsTest, MmaQ4ChainReadsThePreviousOutput) {
  SCOPED_TRACE(trace());
  struct Reset {
    ~Reset() { cuda::set_mma_q4_path(0); }
  } reset;
  constexpr int kDim = 1024, kLinks = 4;
  std::vector<test::OwnedMatrix> ws;
  std::vector<Matrix> dws;
  for (int i = 0; i < kLinks; ++i) {
    // Scaled so each link keeps the values near 1 (the kernel rounds activations to fp16).
    ws.push_back(test::any_matrix(rng_, DType::Q4, kDim, kDim, 128, 0.05f));
    dws.push_back(store_.upload_matrix(ws.back().m));
  }
  for (const int path : {0, 1, 2}) {
    cuda::set_mma_q4_path(path);
    for (const int n : {1, 2, 12}) {
      std::vector<float> want = test::random_vec(rng_, static_cast<size_t>(n) * kDim), next(want.size());
      std::vector<DevFloats> dev;
      dev.push_back(to_device(want));
      for (int i = 0; i < kLinks; ++i) {
        dev.push_back(poisoned_device(want.size()));
        b().matmul(dev[i].p(), n, dws[i], nullptr, dev[i + 1].p());
        ref::matmul(want.data(), n, ws[i].m, nullptr, next.data());
        want.swap(next);
      }
      EXPECT_TRUE(near_l2(to_host(b(), dev.back()), want, kLinks * 3e-3)) << "path " << path << " n=" << n;
    }
  }
}

// The tensor-core Q4 matmul splits K over warps and adds their partial sums in a fixed order: a repeated call
// gives the same bits.
TEST_F(CudaOpsTest, MmaQ4IsDeterministic) {
  SCOPED_TRACE(trace());
  for (const DType t : {DType::Q4, DType::Q4A}) {
    test::OwnedMatrix w = test::any_matrix(rng_, t, 200, 4096, 64);
    const Matrix dw = store_.upload_matrix(w.m);
    for (const int n : {1, 16, 40}) {
      const auto x = test::random_vec(rng_, static_cast<size_t>(n) * 4096);
      const DevFloats dx = to_device(x), dy1 = poisoned_device(static_cast<size_t>(n) * 200),
                      dy2 = poisoned_device(static_cast<size_t>(n) * 200);
      b().matmul(dx.p(), n, dw, nullptr, dy1.p());
      b().matmul(dx.p(), n, dw, nullptr, dy2.p());
      EXPECT_EQ(to_host(b(), dy1), to_host(b(), dy2)) << dtype_name(t) << " n=" << n;
    }
  }
}

TEST_F(CudaOpsTest, MatmulZeroColumnsIsBias) {
  SCOPED_TRACE(trace());
  for (const int n : {1, 20}) {
    test::OwnedMatrix w = test::random_matrix(rng_, DType::F32, 5, 0);
    const Matrix dw = store_.upload_matrix(w.m);
    const auto bias = test::random_vec(rng_, 5);
    std::vector<float> want(static_cast<size_t>(n) * 5);
    ref::matmul(nullptr, n, w.m, bias.data(), want.data());
    const DevFloats dbias = to_device(bias), dy = poisoned_device(want.size()), dx = to_device({0.0f});
    b().matmul(dx.p(), n, dw, dbias.p(), dy.p());
    EXPECT_TRUE(near_l2(to_host(b(), dy), want, 0.0)) << "n=" << n;
  }
}

TEST_F(CudaOpsTest, MatmulSiluMulEveryFormat) {
  SCOPED_TRACE(trace());
  for (const Format& f : all_formats()) {
    for (const auto& [hidden, dim] : std::vector<std::pair<int, int>>{{45, 96}, {300, 512}}) {
      test::OwnedMatrix gate = test::any_matrix(rng_, f.dtype, hidden, dim, f.group);
      test::OwnedMatrix up = test::any_matrix(rng_, f.dtype, hidden, dim, f.group);
      const Matrix dg = store_.upload_matrix(gate.m), du = store_.upload_matrix(up.m);
      for (const int n : {1, 5, 8, 9, 16, 17, 40}) {
        const auto x = test::random_vec(rng_, static_cast<size_t>(n) * dim);
        std::vector<float> want(static_cast<size_t>(n) * hidden);
        ref::matmul_silu_mul(x.data(), n, gate.m, up.m, want.data());
        const DevFloats dx = to_device(x), dout = poisoned_device(want.size());
        b().matmul_silu_mul(dx.p(), n, dg, du, dout.p());
        EXPECT_TRUE(near_l2(to_host(b(), dout), want, 2 * matmul_tol(f.dtype, n)))
            << describe(f) << " n=" << n << " " << hidden << "x" << dim;
      }
    }
  }
}

TEST_F(CudaOpsTest, RmsnormAndInPlace) {
  SCOPED_TRACE(trace());
  for (const int dim : {1, 64, 1000, 4099}) {
    for (const int n : {1, 7}) {
      const auto x = test::random_vec(rng_, static_cast<size_t>(n) * dim, -3.0f, 3.0f);
      const auto w = test::random_vec(rng_, static_cast<size_t>(dim));
      std::vector<float> want(x.size());
      ref::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
      const DevFloats dx = to_device(x), dw = to_device(w), dy = poisoned_device(x.size());
      b().rmsnorm(dx.p(), dw.p(), n, dim, 1e-5f, dy.p());
      EXPECT_TRUE(near_l2(to_host(b(), dy), want, 1e-5)) << "dim " << dim << " n " << n;
      b().rmsnorm(dx.p(), dw.p(), n, dim, 1e-5f, dx.p());
      EXPECT_TRUE(near_l2(to_host(b(), dx), want, 1e-5)) << "in place, dim " << dim;
    }
  }
}

TEST_F(CudaOpsTest, AddRmsnormEqualsAddThenRmsnorm) {
  SCOPED_TRACE(trace());
  for (const int dim : {3, 288, 4096}) {
    const int n = 5;
    auto x = test::random_vec(rng_, static_cast<size_t>(n) * dim);
    const auto delta = test::random_vec(rng_, x.size());
    const auto w = test::random_vec(rng_, static_cast<size_t>(dim));
    const DevFloats dx = to_device(x), dd = to_device(delta), dw = to_device(w), dy = poisoned_device(x.size());
    ref::add(x.data(), delta.data(), x.size());
    std::vector<float> want(x.size());
    ref::rmsnorm(x.data(), w.data(), n, dim, 1e-6f, want.data());
    b().add_rmsnorm(dx.p(), dd.p(), dw.p(), n, dim, 1e-6f, dy.p());
    EXPECT_TRUE(near_l2(to_host(b(), dx), x, 0.0)) << "residual, dim " << dim;
    EXPECT_TRUE(near_l2(to_host(b(), dy), want, 1e-5)) << "norm, dim " << dim;
  }
}

TEST_F(CudaOpsTest, RopeBothStyles) {
  SCOPED_TRACE(trace());
  for (const RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalfSplit}) {
    for (const int half : {1, 4, 32, 64}) {
      const int max_pos = 300, n = 11, n_heads = 3;
      const auto cos = test::random_vec(rng_, static_cast<size_t>(max_pos) * half);
      const auto sin = test::random_vec(rng_, cos.size());
      std::vector<int> pos(n);
      for (int& p : pos) p = static_cast<int>(rng_() % max_pos);
      auto x = test::random_vec(rng_, static_cast<size_t>(n) * n_heads * 2 * half);
      const DevFloats dx = to_device(x), dcos = to_device(cos), dsin = to_device(sin);
      ref::rope(x.data(), n, n_heads, pos.data(), RopeTable{cos.data(), sin.data(), half, max_pos, style});
      b().rope(dx.p(), n, n_heads, pos.data(), RopeTable{dcos.p(), dsin.p(), half, max_pos, style});
      EXPECT_TRUE(near_l2(to_host(b(), dx), x, 1e-6)) << "half " << half << " style " << static_cast<int>(style);
    }
  }
}

struct AttnCase {
  int n_heads, n_kv_heads, head_dim, pos0, n;
  float q_scale;
};

TEST_F(CudaOpsTest, AttentionPrefillDecodeGqaSplits) {
  SCOPED_TRACE(trace());
  const std::vector<AttnCase> cases = {
      {4, 4, 8, 0, 37, 1.0f},       // prefill, MHA, tiny head
      {8, 2, 16, 50, 20, 1.0f},     // chunked prefill after a cached prefix, GQA 4
      {32, 8, 128, 0, 70, 1.0f},    // Llama-3-like prefill
      {28, 4, 64, 900, 1, 1.0f},    // decode, group 7 (not a power of two)
      {64, 8, 128, 3000, 1, 1.0f},  // 70B-like decode: key splits
      {4, 1, 256, 700, 3, 1.0f},    // largest head_dim, decode batch of 3 rows
      {48, 2, 32, 100, 5, 1.0f},    // group 24: several head chunks per kv head
      {8, 8, 64, 2000, 1, 30.0f},   // peaked scores (online softmax must stay stable)
      {6, 3, 40, 33, 64, 8.0f},     // head_dim not a multiple of 32
  };
  for (const AttnCase& c : cases) {
    const int kv_dim = c.n_kv_heads * c.head_dim, q_dim = c.n_heads * c.head_dim;
    const int capacity = c.pos0 + c.n + 5;
    auto k = test::random_vec(rng_, static_cast<size_t>(capacity) * kv_dim);
    auto v = test::random_vec(rng_, k.size());
    const auto q = test::random_vec(rng_, static_cast<size_t>(c.n) * q_dim, -c.q_scale, c.q_scale);
    const AttentionShape shape{c.n_heads, c.n_kv_heads, c.head_dim};
    std::vector<float> want(q.size());
    ref::attention(q.data(), c.n, c.pos0, KvLayer{k.data(), v.data(), capacity, kv_dim}, shape, want.data());
    const DevFloats dk = to_device(k), dv = to_device(v), dq = to_device(q), dout = poisoned_device(q.size());
    b().attention(dq.p(), c.n, c.pos0, KvLayer{dk.p(), dv.p(), capacity, kv_dim}, shape, dout.p());
    EXPECT_TRUE(near_l2(to_host(b(), dout), want, 1e-5))
        << c.n_heads << "/" << c.n_kv_heads << " heads, hd " << c.head_dim << ", pos0 " << c.pos0 << ", n " << c.n;
  }
}

TEST_F(CudaOpsTest, AttentionIgnoresRowsBeyondTheCausalBound) {
  SCOPED_TRACE(trace());
  // Cache rows past pos0 + n hold NaN: reading any of them would poison the output.
  const int n_heads = 4, n_kv = 2, hd = 32, pos0 = 40, n = 9, capacity = 200, kv_dim = n_kv * hd;
  auto k = test::random_vec(rng_, static_cast<size_t>(capacity) * kv_dim);
  auto v = test::random_vec(rng_, k.size());
  for (size_t i = static_cast<size_t>(pos0 + n) * kv_dim; i < k.size(); ++i) {
    k[i] = v[i] = std::numeric_limits<float>::quiet_NaN();
  }
  const auto q = test::random_vec(rng_, static_cast<size_t>(n) * n_heads * hd);
  std::vector<float> want(q.size());
  ref::attention(q.data(), n, pos0, KvLayer{k.data(), v.data(), capacity, kv_dim}, {n_heads, n_kv, hd}, want.data());
  const DevFloats dk = to_device(k), dv = to_device(v), dq = to_device(q), dout = poisoned_device(q.size());
  b().attention(dq.p(), n, pos0, KvLayer{dk.p(), dv.p(), capacity, kv_dim}, {n_heads, n_kv, hd}, dout.p());
  EXPECT_TRUE(near_l2(to_host(b(), dout), want, 1e-5));
}

TEST_F(CudaOpsTest, Add) {
  SCOPED_TRACE(trace());
  for (const size_t count : {size_t{1}, size_t{1000}, size_t{100003}}) {
    auto y = test::random_vec(rng_, count);
    const auto x = test::random_vec(rng_, count);
    const DevFloats dy = to_device(y), dx = to_device(x);
    ref::add(y.data(), x.data(), count);
    b().add(dy.p(), dx.p(), count);
    EXPECT_TRUE(near_l2(to_host(b(), dy), y, 0.0)) << count;
  }
}

TEST_F(CudaOpsTest, EmbeddingEveryFormat) {
  SCOPED_TRACE(trace());
  for (const Format& f : all_formats()) {
    for (const int cols : {1, 37, 288}) {
      const int rows = 50, n = 13;
      test::OwnedMatrix table = test::any_matrix(rng_, f.dtype, rows, cols, f.group);
      const Matrix dt = store_.upload_matrix(table.m);
      std::vector<int> tokens(n);
      for (int& t : tokens) t = static_cast<int>(rng_() % rows);
      tokens[0] = rows - 1;
      std::vector<float> want(static_cast<size_t>(n) * cols);
      ref::embedding(table.m, tokens.data(), n, want.data());
      const DevFloats dout = poisoned_device(want.size());
      b().embedding(dt, tokens.data(), n, dout.p());
      EXPECT_TRUE(near_l2(to_host(b(), dout), want, 1e-6)) << describe(f) << " cols " << cols;
    }
  }
}

TEST_F(CudaOpsTest, ArgmaxTiesNansAndInfinities) {
  SCOPED_TRACE(trace());
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (const int n : {1, 31, 1000, 32000, 128256}) {
    auto x = test::random_vec(rng_, static_cast<size_t>(n), -10.0f, 10.0f);
    for (int i = 0; i < n; i += 7) x[static_cast<size_t>(i)] = nan;
    if (n > 2) {
      const int a = static_cast<int>(rng_() % (n / 2)) + 1, c = a + static_cast<int>(rng_() % (n - a));
      x[static_cast<size_t>(a)] = x[static_cast<size_t>(c)] = 50.0f;  // a tie: the first must win
    }
    const DevFloats dx = to_device(x);
    EXPECT_EQ(b().argmax(dx.p(), n), ref::argmax(x.data(), n)) << "n " << n;
  }
  const std::vector<std::vector<float>> special = {
      {nan, nan, nan}, {-inf, -inf}, {nan, -inf, nan}, {1.0f, inf, inf, nan}, {-0.0f, 0.0f}};
  for (const auto& x : special) {
    const DevFloats dx = to_device(x);
    EXPECT_EQ(b().argmax(dx.p(), static_cast<int>(x.size())), ref::argmax(x.data(), static_cast<int>(x.size())));
  }
}

TEST_F(CudaOpsTest, PoolRefusesMoreThanItHolds) {
  cuda::DevicePool pool(size_t{1} << 20);
  cuda::PoolBlock a = pool.allocate(size_t{512} << 10);
  EXPECT_THROW(pool.allocate(size_t{768} << 10), Error);
  a = cuda::PoolBlock();
  EXPECT_NO_THROW(pool.allocate(size_t{1} << 20));
}

TEST_F(CudaOpsTest, BadDeviceIndexIsAnError) {
  CudaBackendOptions opt;
  opt.device = 1000;
  EXPECT_THROW(CudaBackend{opt}, Error);
}

TEST_F(CudaOpsTest, CudaErrorsBecomeErrorsWithFileAndLine) {
  try {
    TESSERA_CUDA_CHECK(cudaSetDevice(-1));  // an invalid argument: reported, not sticky
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda_ops_test.cpp:"), std::string::npos) << e.what();
  }
  cudaGetLastError();
}

}  // namespace
}  // namespace tessera
