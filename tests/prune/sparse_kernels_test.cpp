// The 2:4 sparse weight types (int8-2:4, int4-2:4): the reference encoder/decoder against independent expectations
// (kept positions = the two largest magnitudes of every group of 4, exact values where representable), and the CPU
// backend's kernels (both kernel sets, 1 and 3 threads, ragged shapes) against
//   (a) an independent dense computation in double: dequantize the weights with the reference decoder, dequantize
//       the int8 activation blocks, dot (decode: the kernels must agree to rounding, 1e-5);
//   (b) ReferenceBackend (dequantize-then-fp32 matmul on the unquantized activations): prefill 1e-5, decode within
//       the int8-activation tolerance of tests/backend/quant_kernels_test.cpp;
//   (c) the portable kernel set (AVX2 only): 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/reference_backend.h"
#include "engine/core/cpu_features.h"
#include "quant/blocks.h"
#include "quant/quant_traits.h"
#include "quant/sparse_formats.h"
#include "tests/backend/kernel_sets.h"
#include "tests/backend/test_util.h"

namespace tessera {
namespace {

using test::near_l2;
using test::random_vec;

constexpr DType kSparseTypes[] = {DType::S24Q8, DType::S24Q4};
constexpr int64_t kCols[] = {1, 3, 4, 31, 32, 33, 63, 64, 65, 100, 128, 129, 200, 256, 300, 520};

std::vector<uint8_t> encode(DType t, const std::vector<float>& x) {
  std::vector<uint8_t> row(dtype_row_bytes(t, static_cast<int64_t>(x.size()), 0));
  quant::quant_traits(t).quantize_row(x.data(), static_cast<int64_t>(x.size()), 0, nullptr, row.data());
  return row;
}
std::vector<float> decode(DType t, const std::vector<uint8_t>& row, int64_t cols) {
  std::vector<float> y(static_cast<size_t>(cols));
  quant::quant_traits(t).dequantize_row(row.data(), cols, 0, y.data());
  return y;
}

TEST(SparseFormat, BlockSizesAndRowBytes) {
  EXPECT_EQ(sizeof(quant::BlockS24Q8), 40u);
  EXPECT_EQ(sizeof(quant::BlockS24Q4), 26u);
  EXPECT_EQ(dtype_row_bytes(DType::S24Q8, 64, 0), 44u);
  EXPECT_EQ(dtype_row_bytes(DType::S24Q8, 65, 0), 84u);
  EXPECT_EQ(dtype_row_bytes(DType::S24Q4, 128, 0), 52u);
  EXPECT_EQ(dtype_row_bytes(DType::S24Q4, 1, 0), 26u);
  // 2:4 int8 stores 5 bits per weight (+ the row scale), int4 3.25: less than dense int8 (8) and int4:g64 (4.25).
  EXPECT_LT(dtype_row_bytes(DType::S24Q8, 2048, 0), dtype_row_bytes(DType::Q8, 2048, 0) * 5 / 8 + 8);
  EXPECT_LT(dtype_row_bytes(DType::S24Q4, 2048, 0), dtype_row_bytes(DType::Q4, 2048, 64));
}

// Every slot maps to a distinct position, inside its own group, and in input order within the group.
TEST(SparseFormat, PositionsDecodeEveryIndexPattern) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    uint8_t idx[8];
    int lo[16], hi[16];
    uint8_t nib[16];
    for (int g = 0; g < 16; ++g) {
      lo[g] = static_cast<int>(rng() % 3);
      hi[g] = lo[g] + 1 + static_cast<int>(rng() % static_cast<unsigned>(3 - lo[g]));
      nib[g] = static_cast<uint8_t>(lo[g] | hi[g] << 2);
    }
    for (int k = 0; k < 8; ++k)
      idx[k] = static_cast<uint8_t>(nib[quant::kSparse24LoGroup[k]] | nib[quant::kSparse24HiGroup[k]] << 4);
    uint8_t off[32];
    quant::sparse24_positions(idx, off);
    for (int g = 0; g < 16; ++g) {
      EXPECT_EQ(off[quant::sparse24_slot(g, 0)], 4 * g + lo[g]);
      EXPECT_EQ(off[quant::sparse24_slot(g, 1)], 4 * g + hi[g]);
    }
  }
}

// Rows already 2:4 whose values are multiples of the scale the encoder will pick decode exactly; the zeros stay
// zero; a dense row loses exactly its two smallest magnitudes of every 4.
TEST(SparseFormat, RoundTripKeepsTheTwoLargestOfEveryFour) {
  std::mt19937 rng(5);
  for (DType t : kSparseTypes) {
    for (int64_t cols : kCols) {
      std::vector<float> x(static_cast<size_t>(cols));
      // Integer levels: int8 uses the row absmax 127 (scale 1), int4 level 7 per block with one -8 (scale 1).
      for (int64_t c = 0; c < cols; c += 4) {
        const int64_t g = std::min<int64_t>(4, cols - c);
        const int keep_a = static_cast<int>(rng() % g), keep_b = static_cast<int>((keep_a + 1 + rng() % 3) % 4);
        for (int64_t i = 0; i < g; ++i) {
          const bool keep = i == keep_a || (i == keep_b && keep_b < g);
          const int level = t == DType::S24Q8 ? static_cast<int>(rng() % 255) - 127 : static_cast<int>(rng() % 15) - 7;
          x[static_cast<size_t>(c + i)] = keep ? static_cast<float>(level == 0 ? 1 : level) : 0.0f;
        }
      }
      // Force the scale: the first group of the row (int8) or of every block (int4) becomes {M, 0, 0, 0}.
      for (int64_t b = 0; b < cols; b += t == DType::S24Q8 ? cols : 64) {
        for (int64_t i = b; i < std::min<int64_t>(b + 4, cols); ++i) x[static_cast<size_t>(i)] = 0.0f;
        x[static_cast<size_t>(b)] = t == DType::S24Q8 ? 127.0f : -8.0f;  // int8: scale 1; int4: M = -8, d = 1
      }
      EXPECT_EQ(decode(t, encode(t, x), cols), x) << dtype_name(t) << " cols " << cols;

      // Dense input: the decoded row is zero exactly at the two smallest magnitudes of every group.
      const std::vector<float> d = random_vec(rng, static_cast<size_t>(cols));
      const std::vector<float> y = decode(t, encode(t, d), cols);
      for (int64_t c = 0; c < cols; c += 4) {
        const int64_t g = std::min<int64_t>(4, cols - c);
        std::vector<int> order(static_cast<size_t>(g));
        for (int i = 0; i < g; ++i) order[static_cast<size_t>(i)] = i;
        std::sort(order.begin(), order.end(), [&](int a, int b) { return std::fabs(d[c + a]) > std::fabs(d[c + b]); });
        for (int64_t r = 0; r < g; ++r) {
          const int i = order[static_cast<size_t>(r)];
          if (r >= 2) {
            EXPECT_EQ(y[static_cast<size_t>(c + i)], 0.0f) << "pruned position must decode to zero";
          } else {
            EXPECT_NEAR(y[static_cast<size_t>(c + i)], d[static_cast<size_t>(c + i)],
                        t == DType::S24Q8 ? 0.005 : 0.126);  // int4: |error| <= d <= absmax / 8
          }
        }
      }
    }
  }
}

// ---- kernels ----

struct Owned {
  std::vector<uint8_t> bytes;
  Matrix m;
};

Owned sparse_matrix(std::mt19937& rng, DType t, int64_t rows, int64_t cols) {
  Owned w;
  const size_t rb = dtype_row_bytes(t, cols, 0);
  w.bytes.resize(static_cast<size_t>(rows) * rb + 1);
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> v = random_vec(rng, static_cast<size_t>(cols));
    quant::quant_traits(t).quantize_row(v.data(), cols, 0, nullptr, w.bytes.data() + static_cast<size_t>(r) * rb);
  }
  w.m = Matrix{t, rows, cols, w.bytes.data(), 0};
  return w;
}

// out[r] = sum_c dequant(w)[r][c] * dequant(xq)[c] in double: what an exact int8-activation kernel computes.
std::vector<float> exact_int8_gemv(const Matrix& w, const std::vector<float>& x) {
  std::vector<quant::BlockQ8Act> xq(static_cast<size_t>((w.cols + 31) / 32));
  quant::quantize_activations(x.data(), w.cols, xq.data());
  std::vector<float> row(static_cast<size_t>(w.cols)), out(static_cast<size_t>(w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    quant::dequantize_matrix_row(w, r, row.data());
    double s = 0;
    for (int64_t c = 0; c < w.cols; ++c)
      s += static_cast<double>(row[static_cast<size_t>(c)]) * xq[static_cast<size_t>(c / 32)].scale *
           xq[static_cast<size_t>(c / 32)].q[c % 32];
    out[static_cast<size_t>(r)] = static_cast<float>(s);
  }
  return out;
}

std::vector<CpuKernels> kernel_sets() {
  std::vector<CpuKernels> s{CpuKernels::kPortable};
  if (cpu_features().has_avx2_fma()) s.push_back(CpuKernels::kAvx2);
  if (cpu_features().has_avx512()) s.push_back(CpuKernels::kAvx512);
  return s;
}

TEST(SparseKernels, DecodeMatchesExactIntegerReference) {
  std::mt19937 rng(11);
  for (DType t : kSparseTypes) {
    for (CpuKernels ks : kernel_sets()) {
      for (int threads : {1, 3}) {
        CpuBackend be(threads, ks);
        for (int64_t cols : kCols) {
          for (int64_t rows : {1, 3, 4, 5, 17, 64}) {
            Owned w = sparse_matrix(rng, t, rows, cols);
            const std::vector<float> x = random_vec(rng, static_cast<size_t>(cols));
            std::vector<float> y = test::poisoned(static_cast<size_t>(rows));
            be.matmul(x.data(), 1, w.m, nullptr, y.data());
            EXPECT_TRUE(near_l2(y, exact_int8_gemv(w.m, x), 1e-5))
                << dtype_name(t) << " " << be.name() << " " << rows << "x" << cols;
          }
        }
      }
    }
  }
}

// The AVX2 prefill entries (dequant, pack) give the portable ones' values bit for bit, at every 64-aligned k0 and
// ragged extents (the GEMM's k blocks), for full and partial row groups.
TEST(SparseKernels, Avx2DequantAndPackEqualPortable) {
  if (!cpu_features().has_avx2_fma()) GTEST_SKIP() << "no AVX2 on this CPU";
  std::mt19937 rng(14);
  const cpu::Kernels &a = cpu::avx2_kernels(), &p = cpu::portable_kernels();
  for (DType t : kSparseTypes) {
    const int dt = static_cast<int>(t);
    for (int64_t cols : {33, 64, 100, 520}) {
      Owned w = sparse_matrix(rng, t, 11, cols);
      const size_t rb = w.m.row_bytes();
      for (int64_t k0 = 0; k0 < cols; k0 += 64) {
        for (int64_t kc : {cols - k0, std::min<int64_t>(64, cols - k0), std::min<int64_t>(5, cols - k0)}) {
          SCOPED_TRACE(::testing::Message() << dtype_name(t) << " cols " << cols << " k0 " << k0 << " kc " << kc);
          std::vector<float> da(static_cast<size_t>(kc), -1.0f), dp = da;
          a.dequant[dt](w.m.row(3), 0, k0, kc, da.data());
          p.dequant[dt](w.m.row(3), 0, k0, kc, dp.data());
          EXPECT_EQ(da, dp);
          for (int nr : {11, 8, 3}) {
            const int width = (nr + 7) / 8 * 8;
            std::vector<float> pa(static_cast<size_t>(kc) * cpu::kGemmNR, -1.0f), pp = pa;
            a.pack[dt](w.m.data, rb, 0, nr, width, k0, kc, pa.data());
            p.pack[dt](w.m.data, rb, 0, nr, width, k0, kc, pp.data());
            EXPECT_EQ(pa, pp) << "nr " << nr;
          }
        }
      }
    }
  }
}

// Against the dense reference on fp32 activations: prefill exactly (dequantized panels), decode within the error
// int8 activation blocks add (2% of the typical dot size, see quant_kernels_test.cpp), bias included.
TEST(SparseKernels, MatmulMatchesDenseReference) {
  std::mt19937 rng(12);
  ReferenceBackend ref;
  for (DType t : kSparseTypes) {
    for (CpuKernels ks : kernel_sets()) {
      CpuBackend be(3, ks);
      for (int64_t cols : {33, 64, 100, 256, 520}) {
        for (int n : {1, 2, 7, 13}) {
          const int64_t rows = 37;
          Owned w = sparse_matrix(rng, t, rows, cols);
          const std::vector<float> x = random_vec(rng, static_cast<size_t>(n * cols));
          const std::vector<float> bias = random_vec(rng, static_cast<size_t>(rows));
          std::vector<float> y = test::poisoned(static_cast<size_t>(n * rows)), want(y.size());
          be.matmul(x.data(), n, w.m, bias.data(), y.data());
          ref.matmul(x.data(), n, w.m, bias.data(), want.data());
          const double tol = n == 1 ? 2e-2 : 1e-5;
          EXPECT_TRUE(near_l2(y, want, tol)) << dtype_name(t) << " " << be.name() << " n " << n << " cols " << cols;
        }
      }
    }
  }
}

TEST(SparseKernels, FusedSiluMulMatchesDenseReference) {
  std::mt19937 rng(13);
  ReferenceBackend ref;
  for (DType t : kSparseTypes) {
    for (CpuKernels ks : kernel_sets()) {
      CpuBackend be(2, ks);
      for (int n : {1, 5}) {
        const int64_t hidden = 45, dim = 130;
        Owned g = sparse_matrix(rng, t, hidden, dim), u = sparse_matrix(rng, t, hidden, dim);
        const std::vector<float> x = random_vec(rng, static_cast<size_t>(n * dim));
        std::vector<float> y = test::poisoned(static_cast<size_t>(n * hidden)), want(y.size());
        be.matmul_silu_mul(x.data(), n, g.m, u.m, y.data());
        ref.matmul_silu_mul(x.data(), n, g.m, u.m, want.data());
        EXPECT_TRUE(near_l2(y, want, n == 1 ? 3e-2 : 1e-5)) << dtype_name(t) << " " << be.name() << " n " << n;
      }
    }
  }
}

TEST(SparseKernels, Avx2MatchesPortableKernelByKernel) {
  if (!cpu_features().has_avx2_fma()) GTEST_SKIP() << "no AVX2+FMA on this CPU: only the portable kernels run";
  const cpu::Kernels& p = cpu::portable_kernels();
  const cpu::Kernels& a = cpu::avx2_kernels();
  std::mt19937 rng(14);
  for (DType t : kSparseTypes) {
    const int dt = static_cast<int>(t);
    ASSERT_NE(a.qdot4[dt], nullptr);
    ASSERT_NE(p.qdot4[dt], nullptr);
    for (int64_t cols : kCols) {
      Owned w = sparse_matrix(rng, t, 4, cols);
      const std::vector<float> x = random_vec(rng, static_cast<size_t>(cols));
      std::vector<quant::BlockQ8Act> xq(static_cast<size_t>((cols + 31) / 32));
      p.quantize_act(x.data(), cols, xq.data());
      const void* rows[4] = {w.m.row(0), w.m.row(1), w.m.row(2), w.m.row(3)};
      std::vector<float> ya(4), yp(4);
      a.qdot4[dt](xq.data(), rows, nullptr, cols, 0, ya.data());
      p.qdot4[dt](xq.data(), rows, nullptr, cols, 0, yp.data());
      EXPECT_TRUE(near_l2(ya, yp, 1e-5)) << dtype_name(t) << " cols " << cols;
      for (int j = 0; j < 4; ++j)
        EXPECT_NEAR(a.qdot1[dt](xq.data(), rows[j], cols, 0), yp[static_cast<size_t>(j)],
                    1e-4 * (1 + std::fabs(yp[j])));
    }
  }
}

// The AVX-512 decode kernels (two rows per zmm, vpdpbusd) give the AVX2 ones' floats bit for bit: eight-, four- and
// one-row calls, ragged widths (a row ending inside a block's first activation block included), with prefetch rows.
TEST(SparseKernels, Avx512DecodeBitIdenticalToAvx2) {
  if (const std::string why = test::missing_cpu_features(CpuKernels::kAvx512); !why.empty()) GTEST_SKIP() << why;
  const cpu::Kernels& a = cpu::avx2_kernels();
  const cpu::Kernels& v = cpu::avx512_kernels();
  std::mt19937 rng(16);
  for (DType t : kSparseTypes) {
    const int dt = static_cast<int>(t);
    ASSERT_NE(v.qdot8[dt], nullptr);
    for (int64_t cols : kCols) {
      Owned w = sparse_matrix(rng, t, 16, cols);
      const std::vector<float> x = random_vec(rng, static_cast<size_t>(cols));
      std::vector<quant::BlockQ8Act> xq(static_cast<size_t>((cols + 31) / 32));
      a.quantize_act(x.data(), cols, xq.data());
      const void* rows[16];
      for (int j = 0; j < 16; ++j) rows[j] = w.m.row(j);
      std::vector<float> ya(8), y8(8), y4(8);
      a.qdot4[dt](xq.data(), rows, rows + 4, cols, 0, ya.data());
      a.qdot4[dt](xq.data(), rows + 4, nullptr, cols, 0, ya.data() + 4);
      v.qdot8[dt](xq.data(), rows, rows + 8, cols, 0, y8.data());
      v.qdot4[dt](xq.data(), rows, rows + 4, cols, 0, y4.data());
      v.qdot4[dt](xq.data(), rows + 4, nullptr, cols, 0, y4.data() + 4);
      EXPECT_EQ(y8, ya) << dtype_name(t) << " cols " << cols;
      EXPECT_EQ(y4, ya) << dtype_name(t) << " cols " << cols;
      for (int j = 0; j < 8; ++j)
        EXPECT_EQ(v.qdot1[dt](xq.data(), rows[j], cols, 0), a.qdot1[dt](xq.data(), rows[j], cols, 0))
            << dtype_name(t) << " cols " << cols << " row " << j;
    }
  }
}

TEST(SparseKernels, EmbeddingLookupDecodesRows) {
  std::mt19937 rng(15);
  for (DType t : kSparseTypes) {
    for (CpuKernels ks : kernel_sets()) {
      CpuBackend be(1, ks);
      Owned w = sparse_matrix(rng, t, 9, 130);
      const int tokens[3] = {0, 8, 4};
      std::vector<float> out(3 * 130), want(3 * 130);
      be.embedding(w.m, tokens, 3, out.data());
      for (int i = 0; i < 3; ++i) quant::dequantize_matrix_row(w.m, tokens[i], want.data() + i * 130);
      EXPECT_EQ(out, want) << dtype_name(t);
    }
  }
}

}  // namespace
}  // namespace tessera
