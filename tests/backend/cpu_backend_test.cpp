// Every CpuBackend op against its reference twin, for both kernel sets and for 1 and 3 threads, on ragged shapes.
#include "engine/backend/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend/cpu/reference_ops.h"
#include "engine/core/check.h"
#include "engine/core/cpu_features.h"
#include "kernel_sets.h"
#include "test_util.h"

namespace tessera {
namespace {

using test::near_l2;
using test::poison;
using test::random_matrix;
using test::random_vec;

constexpr DType kDtypes[] = {DType::F32, DType::F16, DType::BF16};
constexpr int kRows[] = {1, 3, 17, 65};
constexpr int kCols[] = {1, 7, 33, 100, 257};
constexpr int kNs[] = {1, 2, 5, 31};

using Config = test::BackendConfig;
using test::config_name;
using test::kernels_name;

class CpuBackendTest : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    if (const std::string why = test::missing_cpu_features(GetParam().kernels); !why.empty()) GTEST_SKIP() << why;
    backend_ = std::make_unique<CpuBackend>(GetParam().threads, GetParam().kernels);
  }

  Backend& cpu() { return *backend_; }
  CpuBackend& cpu_backend() { return *backend_; }

  std::mt19937 rng_{1234};

 private:
  std::unique_ptr<CpuBackend> backend_;
};

TEST_P(CpuBackendTest, Name) {
  const std::string name = cpu().name();
  EXPECT_NE(name.find(kernels_name(GetParam().kernels)), std::string::npos) << name;
  EXPECT_NE(name.find(std::to_string(GetParam().threads) + " thread"), std::string::npos) << name;
}

void check_matmul(Backend& cpu, std::mt19937& rng, DType t, int rows, int cols, int n, bool with_bias) {
  SCOPED_TRACE(::testing::Message() << dtype_name(t) << " rows=" << rows << " cols=" << cols << " n=" << n
                                    << " bias=" << with_bias);
  const auto w = random_matrix(rng, t, rows, cols);
  const auto x = random_vec(rng, static_cast<size_t>(n) * cols);
  const auto bias = random_vec(rng, rows);
  std::vector<float> want(static_cast<size_t>(n) * rows), got(want.size());
  ref::matmul(x.data(), n, w.m, with_bias ? bias.data() : nullptr, want.data());
  poison(got);
  cpu.matmul(x.data(), n, w.m, with_bias ? bias.data() : nullptr, got.data());
  EXPECT_TRUE(near_l2(got, want));
}

TEST_P(CpuBackendTest, MatmulRaggedShapes) {
  for (DType t : kDtypes) {
    for (int rows : kRows) {
      for (int cols : kCols) {
        for (int n : kNs) check_matmul(cpu(), rng_, t, rows, cols, n, (rows + cols + n) % 2 == 0);
      }
    }
  }
}

// Shapes that cross the GEMM blocking: several k blocks, an n block boundary, ragged last tiles, many tiles.
TEST_P(CpuBackendTest, MatmulAcrossBlocks) {
  for (DType t : kDtypes) {
    check_matmul(cpu(), rng_, t, 40, 600, 100, true);
    check_matmul(cpu(), rng_, t, 130, 513, 7, false);
    check_matmul(cpu(), rng_, t, 96, 256, 13, true);
    check_matmul(cpu(), rng_, t, 200, 64, 200, false);
    check_matmul(cpu(), rng_, t, 1000, 96, 1, true);
  }
}

TEST_P(CpuBackendTest, MatmulZeroColumnsIsBias) {
  const auto w = random_matrix(rng_, DType::F32, 5, 0);
  const auto bias = random_vec(rng_, 5);
  std::vector<float> got = test::poisoned(10);
  cpu().matmul(nullptr, 2, w.m, bias.data(), got.data());
  EXPECT_TRUE(near_l2(got, {bias[0], bias[1], bias[2], bias[3], bias[4], bias[0], bias[1], bias[2], bias[3], bias[4]}));
}

void check_silu_mul(Backend& cpu, std::mt19937& rng, DType t, int hidden, int cols, int n) {
  SCOPED_TRACE(::testing::Message() << dtype_name(t) << " hidden=" << hidden << " cols=" << cols << " n=" << n);
  // Larger weights so silu sees both tails (large |g|), not only its linear middle.
  const auto gate = random_matrix(rng, t, hidden, cols, 2.0f);
  const auto up = random_matrix(rng, t, hidden, cols);
  const auto x = random_vec(rng, static_cast<size_t>(n) * cols);
  std::vector<float> want(static_cast<size_t>(n) * hidden), got(want.size());
  ref::matmul_silu_mul(x.data(), n, gate.m, up.m, want.data());
  poison(got);
  cpu.matmul_silu_mul(x.data(), n, gate.m, up.m, got.data());
  EXPECT_TRUE(near_l2(got, want));
}

TEST_P(CpuBackendTest, MatmulSiluMul) {
  for (DType t : kDtypes) {
    for (int hidden : kRows) {
      for (int cols : kCols) {
        for (int n : kNs) check_silu_mul(cpu(), rng_, t, hidden, cols, n);
      }
    }
    check_silu_mul(cpu(), rng_, t, 70, 600, 100);
    check_silu_mul(cpu(), rng_, t, 301, 40, 9);
  }
}

// bf16 activations (set_bf16_activations): a BF16 weight's matmuls read x rounded to bf16, on every kernel set (the
// AVX512_BF16 one through its bf16 x bf16 decode kernels, the others through the fp32 kernels on the rounded values).
// The reference is the double-precision matmul of the rounded x; it must also differ measurably from the matmul of
// the unrounded x, or the rounding did not happen.
TEST_P(CpuBackendTest, MatmulBf16Activations) {
  CpuBackend& be = cpu_backend();
  be.set_bf16_activations(true);
  const auto rounded = [](std::vector<float> v) {
    for (float& f : v) f = bf16_to_f32(f32_to_bf16(f));
    return v;
  };
  struct Shape {
    int rows, cols, n;
  };
  for (const Shape& s : {Shape{17, 33, 1}, Shape{65, 257, 1}, Shape{65, 257, 2}, Shape{40, 600, 5}, Shape{130, 513, 16},
                         Shape{96, 256, 31}, Shape{48, 300, 100}}) {
    SCOPED_TRACE(::testing::Message() << s.rows << "x" << s.cols << " n=" << s.n);
    const auto w = random_matrix(rng_, DType::BF16, s.rows, s.cols);
    const auto up = random_matrix(rng_, DType::BF16, s.rows, s.cols);
    const auto x = random_vec(rng_, static_cast<size_t>(s.n) * s.cols);
    const auto bias = random_vec(rng_, s.rows);
    const size_t count = static_cast<size_t>(s.n) * s.rows;
    std::vector<float> want(count), unrounded(count), got = test::poisoned(count);
    ref::matmul(rounded(x).data(), s.n, w.m, bias.data(), want.data());
    ref::matmul(x.data(), s.n, w.m, bias.data(), unrounded.data());
    be.matmul(x.data(), s.n, w.m, bias.data(), got.data());
    EXPECT_TRUE(near_l2(got, want));
    EXPECT_FALSE(near_l2(got, unrounded, 1e-4));
    test::poison(got);
    be.matmul_rows(x.data(), s.n, w.m, bias.data(), got.data());
    EXPECT_TRUE(near_l2(got, want));
    ref::matmul_silu_mul(rounded(x).data(), s.n, w.m, up.m, want.data());
    test::poison(got);
    be.matmul_silu_mul(x.data(), s.n, w.m, up.m, got.data());
    EXPECT_TRUE(near_l2(got, want));
    test::poison(got);
    be.matmul_silu_mul_rows(x.data(), s.n, w.m, up.m, got.data());
    EXPECT_TRUE(near_l2(got, want));
  }
  // Other weight types keep fp32 activations.
  const auto w = random_matrix(rng_, DType::F32, 20, 100);
  const auto x = random_vec(rng_, 3 * 100);
  std::vector<float> want(60), got = test::poisoned(60);
  ref::matmul(x.data(), 3, w.m, nullptr, want.data());
  be.matmul(x.data(), 3, w.m, nullptr, got.data());
  EXPECT_TRUE(near_l2(got, want));
}

TEST_P(CpuBackendTest, Rmsnorm) {
  for (int dim : {1, 7, 33, 100, 257, 4096}) {
    for (int n : kNs) {
      SCOPED_TRACE(::testing::Message() << "dim=" << dim << " n=" << n);
      const auto x = random_vec(rng_, static_cast<size_t>(n) * dim, -3.0f, 3.0f);
      const auto w = random_vec(rng_, dim);
      std::vector<float> want(x.size()), got(x.size());
      ref::rmsnorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
      poison(got);
      cpu().rmsnorm(x.data(), w.data(), n, dim, 1e-5f, got.data());
      EXPECT_TRUE(near_l2(got, want));
      // The interface allows y == x.
      std::vector<float> inplace = x;
      cpu().rmsnorm(inplace.data(), w.data(), n, dim, 1e-5f, inplace.data());
      EXPECT_TRUE(near_l2(inplace, want));
    }
  }
}

TEST_P(CpuBackendTest, RopeBothStyles) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalfSplit}) {
    for (int head_dim : {2, 6, 8, 64, 128}) {
      const int half = head_dim / 2, max_pos = 300;
      // A real table: theta_j = pos / 10000^(2j/d).
      std::vector<float> cs(static_cast<size_t>(max_pos) * half), sn(cs.size());
      for (int p = 0; p < max_pos; ++p) {
        for (int j = 0; j < half; ++j) {
          const double a = p / std::pow(10000.0, 2.0 * j / head_dim);
          cs[static_cast<size_t>(p) * half + j] = static_cast<float>(std::cos(a));
          sn[static_cast<size_t>(p) * half + j] = static_cast<float>(std::sin(a));
        }
      }
      const RopeTable table{cs.data(), sn.data(), half, max_pos, style};
      for (int n_heads : {1, 3}) {
        for (int n : {1, 5, 31, 200}) {
          SCOPED_TRACE(::testing::Message() << "style=" << static_cast<int>(style) << " head_dim=" << head_dim
                                            << " heads=" << n_heads << " n=" << n);
          std::vector<int> pos(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = static_cast<int>(rng_() % max_pos);
          const auto x = random_vec(rng_, static_cast<size_t>(n) * n_heads * head_dim);
          std::vector<float> want = x, got = x;
          ref::rope(want.data(), n, n_heads, pos.data(), table);
          cpu().rope(got.data(), n, n_heads, pos.data(), table);
          EXPECT_TRUE(near_l2(got, want));
        }
      }
    }
  }
}

void check_attention(Backend& cpu, std::mt19937& rng, int n_heads, int n_kv_heads, int head_dim, int pos0, int n,
                     float q_scale = 1.0f) {
  SCOPED_TRACE(::testing::Message() << "heads=" << n_heads << " kv_heads=" << n_kv_heads << " head_dim=" << head_dim
                                    << " pos0=" << pos0 << " n=" << n << " q_scale=" << q_scale);
  const AttentionShape shape{n_heads, n_kv_heads, head_dim};
  const int capacity = pos0 + n + 3;
  const size_t kv_dim = static_cast<size_t>(n_kv_heads) * head_dim;
  // Rows past pos0 + n are NaN: reading beyond the causal window poisons the result.
  std::vector<float> k = random_vec(rng, capacity * kv_dim), v = random_vec(rng, capacity * kv_dim);
  std::fill(k.begin() + static_cast<ptrdiff_t>((pos0 + n) * kv_dim), k.end(), std::numeric_limits<float>::quiet_NaN());
  std::fill(v.begin() + static_cast<ptrdiff_t>((pos0 + n) * kv_dim), v.end(), std::numeric_limits<float>::quiet_NaN());
  const KvLayer kv{k.data(), v.data(), capacity, static_cast<int>(kv_dim)};
  const auto q = random_vec(rng, static_cast<size_t>(n) * n_heads * head_dim, -q_scale, q_scale);
  std::vector<float> want(q.size()), got(q.size());
  ref::attention(q.data(), n, pos0, kv, shape, want.data());
  poison(got);
  cpu.attention(q.data(), n, pos0, kv, shape, got.data());
  EXPECT_TRUE(near_l2(got, want));
}

TEST_P(CpuBackendTest, AttentionGqaPrefillAndDecode) {
  for (int ratio : {1, 2, 4}) {
    for (int n_kv : {1, 2}) {
      for (int head_dim : {7, 16, 64, 100}) {
        for (int pos0 : {0, 5, 70}) {
          for (int n : {1, 2, 31}) check_attention(cpu(), rng_, n_kv * ratio, n_kv, head_dim, pos0, n);
        }
      }
    }
  }
}

// The same cache rows laid out in blocks of a pool, in a scrambled block order with unused blocks in between:
// attention must read exactly the rows it reads contiguously (same result bit for bit), and never a row of a
// block the table does not name (those are NaN).
void check_paged_attention(Backend& cpu, std::mt19937& rng, int n_heads, int n_kv_heads, int head_dim, int pos0, int n,
                           int block_shift) {
  SCOPED_TRACE(::testing::Message() << "heads=" << n_heads << " kv_heads=" << n_kv_heads << " head_dim=" << head_dim
                                    << " pos0=" << pos0 << " n=" << n << " block=" << (1 << block_shift));
  const AttentionShape shape{n_heads, n_kv_heads, head_dim};
  const int block = 1 << block_shift;
  const int capacity = pos0 + n;
  const int n_blocks = (capacity + block - 1) / block;
  const int kv_dim = n_kv_heads * head_dim;
  const size_t row = static_cast<size_t>(kv_dim);
  std::vector<float> k = random_vec(rng, static_cast<size_t>(capacity) * row);
  std::vector<float> v = random_vec(rng, static_cast<size_t>(capacity) * row);
  // Pool of 2 * n_blocks + 1 blocks; logical block b lives in pool block 2 * (n_blocks - 1 - b) + 1.
  const int pool_blocks = 2 * n_blocks + 1;
  std::vector<float> pk(static_cast<size_t>(pool_blocks) * block * row, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> pv = pk;
  std::vector<int> table(static_cast<size_t>(n_blocks));
  for (int b = 0; b < n_blocks; ++b) table[static_cast<size_t>(b)] = 2 * (n_blocks - 1 - b) + 1;
  const KvLayer paged{pk.data(), pv.data(), n_blocks * block, kv_dim, table.data(), block_shift};
  for (int p = 0; p < capacity; ++p) {
    std::copy_n(k.begin() + static_cast<ptrdiff_t>(p * row), row, paged.k_row(p));
    std::copy_n(v.begin() + static_cast<ptrdiff_t>(p * row), row, paged.v_row(p));
  }
  const KvLayer contiguous{k.data(), v.data(), capacity, kv_dim};
  const auto q = random_vec(rng, static_cast<size_t>(n) * n_heads * head_dim);
  std::vector<float> want(q.size()), got(q.size()), ref_contiguous(q.size()), ref_paged(q.size());
  cpu.attention(q.data(), n, pos0, contiguous, shape, want.data());
  poison(got);
  cpu.attention(q.data(), n, pos0, paged, shape, got.data());
  EXPECT_EQ(got, want);
  ref::attention(q.data(), n, pos0, contiguous, shape, ref_contiguous.data());
  ref::attention(q.data(), n, pos0, paged, shape, ref_paged.data());
  EXPECT_EQ(ref_paged, ref_contiguous);
}

TEST_P(CpuBackendTest, AttentionPagedEqualsContiguous) {
  for (int block_shift : {0, 2, 4}) {
    for (int pos0 : {0, 3, 17, 70}) {
      for (int n : {1, 5, 40}) check_paged_attention(cpu(), rng_, 8, 2, 16, pos0, n, block_shift);
    }
  }
  check_paged_attention(cpu(), rng_, 4, 4, 64, 130, 1, 4);
  check_paged_attention(cpu(), rng_, 80, 1, 16, 10, 3, 3);
  // One query per kv head (decode without GQA reads the cache in place): pages shorter than, equal to and longer
  // than its key blocks.
  for (int block_shift : {0, 2, 4, 5}) {
    for (int pos0 : {0, 15, 16, 70}) check_paged_attention(cpu(), rng_, 6, 6, 24, pos0, 1, block_shift);
  }
}

// attention_batch: several sequences' calls of one step, decode rows and prefill chunks mixed, each bit for bit what
// attention() gives it alone.
TEST_P(CpuBackendTest, AttentionBatchEqualsSingleCalls) {
  for (const AttentionShape shape : {AttentionShape{6, 6, 32}, AttentionShape{8, 2, 16}}) {
    SCOPED_TRACE(::testing::Message() << "heads=" << shape.n_heads << " kv_heads=" << shape.n_kv_heads);
    const int kv_dim = shape.n_kv_heads * shape.head_dim, q_dim = shape.n_heads * shape.head_dim;
    const std::vector<std::pair<int, int>> chunks = {{0, 1}, {40, 1}, {3, 4}, {17, 1}, {0, 9}, {90, 1}};  // pos0, n
    std::vector<std::vector<float>> ks, vs, qs, want, got;
    std::vector<AttentionCall> calls;
    for (const auto& [pos0, n] : chunks) {
      const int capacity = pos0 + n;
      ks.push_back(random_vec(rng_, static_cast<size_t>(capacity) * kv_dim));
      vs.push_back(random_vec(rng_, static_cast<size_t>(capacity) * kv_dim));
      qs.push_back(random_vec(rng_, static_cast<size_t>(n) * q_dim));
      want.emplace_back(qs.back().size());
      got.emplace_back(qs.back().size());
      poison(got.back());
      const KvLayer kv{ks.back().data(), vs.back().data(), capacity, kv_dim};
      cpu().attention(qs.back().data(), n, pos0, kv, shape, want.back().data());
    }
    for (size_t i = 0; i < chunks.size(); ++i) {
      const KvLayer kv{ks[i].data(), vs[i].data(), chunks[i].first + chunks[i].second, kv_dim};
      calls.push_back({qs[i].data(), got[i].data(), chunks[i].second, chunks[i].first, kv});
    }
    cpu().attention_batch(calls, shape);
    for (size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(got[i], want[i]) << "call " << i;
  }
}

TEST(KvLayer, PagedRowAddressing) {
  std::vector<float> k(64 * 3), v(64 * 3);
  const std::vector<int> table = {5, 2, 7};
  const KvLayer kv{k.data(), v.data(), 12, 3, table.data(), 2};  // blocks of 4 rows
  EXPECT_EQ(kv.row_offset(0), 5u * 4 * 3);
  EXPECT_EQ(kv.row_offset(3), (5u * 4 + 3) * 3);
  EXPECT_EQ(kv.row_offset(4), 2u * 4 * 3);
  EXPECT_EQ(kv.row_offset(11), (7u * 4 + 3) * 3);
  EXPECT_EQ(kv.contiguous_rows(1, 100), 3);
  EXPECT_EQ(kv.contiguous_rows(4, 2), 2);
  const KvLayer flat{k.data(), v.data(), 12, 3};
  EXPECT_EQ(flat.row_offset(11), 33u);
  EXPECT_EQ(flat.contiguous_rows(1, 100), 100);
}

TEST_P(CpuBackendTest, AttentionLongContextAndPeakedScores) {
  check_attention(cpu(), rng_, 8, 2, 128, 500, 1);
  check_attention(cpu(), rng_, 4, 4, 64, 130, 40);
  // Large scores: the running max changes often and exp underflows for most keys.
  check_attention(cpu(), rng_, 4, 1, 64, 200, 3, 30.0f);
  check_attention(cpu(), rng_, 2, 1, 32, 0, 70, 30.0f);
  // Many kv heads (decode batches span several of them) and a GQA group larger than one kernel batch.
  check_attention(cpu(), rng_, 48, 24, 16, 9, 1);
  check_attention(cpu(), rng_, 80, 1, 16, 10, 3);
  check_attention(cpu(), rng_, 80, 1, 16, 10, 1);
  // A narrower last kv block gets a longer key block than a full one: its scratch must still fit (ASan catches
  // an overflow here). Non-power-of-two head sizes with kv heads that do not divide into blocks.
  for (int threads : {2, 3}) {
    CpuBackend be(threads, GetParam().kernels);
    check_attention(be, rng_, 3, 3, 34, 70, 1);
    check_attention(be, rng_, 5, 5, 34, 70, 1);
    check_attention(be, rng_, 6, 3, 80, 100, 1);
    check_attention(be, rng_, 5, 5, 96, 90, 1);
  }
}

TEST_P(CpuBackendTest, Add) {
  for (size_t count : {size_t{1}, size_t{7}, size_t{33}, size_t{1000}, size_t{100003}}) {
    SCOPED_TRACE(count);
    const auto x = random_vec(rng_, count);
    const auto y0 = random_vec(rng_, count);
    std::vector<float> want = y0, got = y0;
    ref::add(want.data(), x.data(), count);
    cpu().add(got.data(), x.data(), count);
    EXPECT_EQ(got, want);  // one rounding per element either way: bit-exact
  }
}

TEST_P(CpuBackendTest, Embedding) {
  for (DType t : kDtypes) {
    for (int cols : {1, 7, 33, 257}) {
      SCOPED_TRACE(::testing::Message() << dtype_name(t) << " cols=" << cols);
      const auto table = random_matrix(rng_, t, 50, cols);
      const std::vector<int> tokens = {0, 49, 7, 7, 23};
      std::vector<float> want(tokens.size() * cols), got(want.size());
      ref::embedding(table.m, tokens.data(), static_cast<int>(tokens.size()), want.data());
      poison(got);
      cpu().embedding(table.m, tokens.data(), static_cast<int>(tokens.size()), got.data());
      EXPECT_EQ(got, want);  // a conversion, exact
    }
  }
}

TEST_P(CpuBackendTest, Argmax) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (int n : {1, 7, 33, 1000, 32001}) {
    auto x = random_vec(rng_, static_cast<size_t>(n));
    EXPECT_EQ(cpu().argmax(x.data(), n), ref::argmax(x.data(), n)) << n;
    // Ties: the first of equal maxima, wherever it falls (vector body or scalar tail).
    const int a = static_cast<int>(rng_() % n), b = static_cast<int>(rng_() % n);
    x[static_cast<size_t>(a)] = 5.0f;
    x[static_cast<size_t>(b)] = 5.0f;
    EXPECT_EQ(cpu().argmax(x.data(), n), std::min(a, b)) << n;
    // NaNs are never the maximum.
    x[static_cast<size_t>(n / 2)] = nan;
    x[0] = nan;
    EXPECT_EQ(cpu().argmax(x.data(), n), ref::argmax(x.data(), n)) << n;
    x[static_cast<size_t>(n - 1)] = 6.0f;
    EXPECT_EQ(cpu().argmax(x.data(), n), n == 1 ? 0 : n - 1) << n;
  }
  std::vector<float> all_neg_inf(19, -inf);
  EXPECT_EQ(cpu().argmax(all_neg_inf.data(), 19), 0);
  std::vector<float> all_nan(19, nan);
  EXPECT_EQ(cpu().argmax(all_nan.data(), 19), 0);
  std::vector<float> zeros = {-0.0f, 0.0f, -1.0f};
  EXPECT_EQ(cpu().argmax(zeros.data(), 3), ref::argmax(zeros.data(), 3));
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuBackendTest,
                         ::testing::Values(Config{CpuKernels::kPortable, 1}, Config{CpuKernels::kPortable, 3},
                                           Config{CpuKernels::kAvx2, 1}, Config{CpuKernels::kAvx2, 3},
                                           Config{CpuKernels::kAvx512, 1}, Config{CpuKernels::kAvx512, 3},
                                           Config{CpuKernels::kAvx512Bf16, 1}, Config{CpuKernels::kAvx512Bf16, 3}),
                         config_name);

TEST(CpuBackend, AutoPicksBestKernels) {
  CpuBackend auto_backend(2);
  const bool avx2 = cpu_features().has_avx2_fma(), avx512 = cpu_features().has_avx512();
  const bool bf16 = cpu_features().has_avx512_bf16();
  const char* best = bf16 ? "avx512bf16" : avx512 ? "avx512" : avx2 ? "avx2" : "portable";
  EXPECT_NE(auto_backend.name().find(best), std::string::npos) << auto_backend.name();
  EXPECT_EQ(auto_backend.threads(), 2);
  if (!avx2) {
    EXPECT_THROW(CpuBackend(1, CpuKernels::kAvx2), Error);
  }
  if (!avx512) {
    EXPECT_THROW(CpuBackend(1, CpuKernels::kAvx512), Error);
  }
  if (!bf16) {
    EXPECT_THROW(CpuBackend(1, CpuKernels::kAvx512Bf16), Error);
  }
}

TEST(CpuBackend, DefaultThreads) {
  CpuBackend b;
  EXPECT_EQ(b.threads(), ThreadPool::default_threads());
}

}  // namespace
}  // namespace tessera
