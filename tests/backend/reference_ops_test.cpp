// The reference twins are the oracle for every optimized kernel, so they are checked here against values worked out
// by hand.
#include "engine/backend/cpu/reference_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "engine/backend/cpu/reference_backend.h"
#include "test_util.h"

namespace tessera {
namespace {

TEST(ReferenceOps, MatmulWithBias) {
  // w = [[1, 2, 3], [4, 5, 6]], x rows [1, 0, -1] and [0.5, 1, 2].
  const std::vector<float> w = {1, 2, 3, 4, 5, 6};
  const Matrix m{DType::F32, 2, 3, w.data()};
  const std::vector<float> x = {1, 0, -1, 0.5f, 1, 2};
  const std::vector<float> bias = {10, 20};
  std::vector<float> y(4);
  ref::matmul(x.data(), 2, m, bias.data(), y.data());
  EXPECT_EQ(y, (std::vector<float>{1 - 3 + 10, 4 - 6 + 20, 0.5f + 2 + 6 + 10, 2 + 5 + 12 + 20}));
  ref::matmul(x.data(), 1, m, nullptr, y.data());
  EXPECT_EQ(y[0], -2.0f);
  EXPECT_EQ(y[1], -2.0f);
}

TEST(ReferenceOps, MatmulReadsHalfPrecisionWeights) {
  // 1.5 and -2 are exact in both 16-bit formats.
  const std::vector<uint16_t> bf = {f32_to_bf16(1.5f), f32_to_bf16(-2.0f)};
  const std::vector<uint16_t> hf = {f32_to_f16(1.5f), f32_to_f16(-2.0f)};
  const std::vector<float> x = {2.0f, 1.0f};
  float y = 0;
  ref::matmul(x.data(), 1, Matrix{DType::BF16, 1, 2, bf.data()}, nullptr, &y);
  EXPECT_EQ(y, 1.0f);
  ref::matmul(x.data(), 1, Matrix{DType::F16, 1, 2, hf.data()}, nullptr, &y);
  EXPECT_EQ(y, 1.0f);
}

TEST(ReferenceOps, SiluMul) {
  // gate row [1, 1] and up row [2, 0] against x = [1, 1]: g = 2, u = 2, silu(2) = 2 / (1 + e^-2).
  const std::vector<float> gate = {1, 1}, up = {2, 0}, x = {1, 1};
  float out = 0;
  ref::matmul_silu_mul(x.data(), 1, Matrix{DType::F32, 1, 2, gate.data()}, Matrix{DType::F32, 1, 2, up.data()}, &out);
  EXPECT_FLOAT_EQ(out, static_cast<float>(2.0 / (1.0 + std::exp(-2.0)) * 2.0));
  EXPECT_EQ(ref::silu_mul(0.0, 5.0), 0.0);
}

TEST(ReferenceOps, Rmsnorm) {
  // x = [3, 4]: mean square 12.5; with eps 0 the scale is 1/sqrt(12.5).
  std::vector<float> x = {3, 4};
  const std::vector<float> w = {1, 2};
  ref::rmsnorm(x.data(), w.data(), 1, 2, 0.0f, x.data());  // in place
  EXPECT_FLOAT_EQ(x[0], static_cast<float>(3 / std::sqrt(12.5)));
  EXPECT_FLOAT_EQ(x[1], static_cast<float>(8 / std::sqrt(12.5)));
}

TEST(ReferenceOps, RopePairsPerStyle) {
  // head_dim 4, one position whose angles are 90 degrees (pair 0) and 0 degrees (pair 1).
  const std::vector<float> cs = {0, 1}, sn = {1, 0};
  const int pos = 0;
  {
    std::vector<float> x = {1, 2, 3, 4};  // interleaved pairs (1, 2) and (3, 4)
    ref::rope(x.data(), 1, 1, &pos, RopeTable{cs.data(), sn.data(), 2, 1, RopeStyle::kInterleaved});
    EXPECT_EQ(x, (std::vector<float>{-2, 1, 3, 4}));
  }
  {
    std::vector<float> x = {1, 2, 3, 4};  // half-split pairs (1, 3) and (2, 4)
    ref::rope(x.data(), 1, 1, &pos, RopeTable{cs.data(), sn.data(), 2, 1, RopeStyle::kHalfSplit});
    EXPECT_EQ(x, (std::vector<float>{-3, 2, 1, 4}));
  }
}

TEST(ReferenceOps, RopeUsesRowPosition) {
  // Two positions; row 0 sits at position 1 (90 degrees), row 1 at position 0 (identity).
  const std::vector<float> cs = {1, 0}, sn = {0, 1};
  const std::vector<int> pos = {1, 0};
  std::vector<float> x = {1, 2, 1, 2};
  ref::rope(x.data(), 2, 1, pos.data(), RopeTable{cs.data(), sn.data(), 1, 2, RopeStyle::kInterleaved});
  EXPECT_EQ(x, (std::vector<float>{-2, 1, 1, 2}));
}

TEST(ReferenceOps, AttentionCausalAndGqa) {
  // 2 query heads sharing 1 kv head, head_dim 2; cache rows 0 and 1.
  const AttentionShape shape{2, 1, 2};
  std::vector<float> k = {1, 0, 1, 0};  // equal keys: equal scores for every query
  std::vector<float> v = {2, 4, 6, 8};  // row 0 -> [2, 4], row 1 -> [6, 8]
  const KvLayer kv{k.data(), v.data(), 2, 2};
  const std::vector<float> q = {3, 1, -1, 5, 3, 1, -1, 5};  // rows 0 and 1, two heads each
  std::vector<float> out(8);
  ref::attention(q.data(), 2, 0, kv, shape, out.data());
  // Row 0 sees only cache row 0; row 1 averages rows 0 and 1 (equal scores).
  EXPECT_EQ(out, (std::vector<float>{2, 4, 2, 4, 4, 6, 4, 6}));
}

TEST(ReferenceOps, AttentionSoftmaxWeights) {
  // One head, head_dim 1, q = 1, keys 0 and ln(3) * sqrt(1): weights 1/4 and 3/4.
  const AttentionShape shape{1, 1, 1};
  std::vector<float> k = {0.0f, static_cast<float>(std::log(3.0))};
  std::vector<float> v = {4.0f, 8.0f};
  const float q = 1.0f;
  float out = 0;
  ref::attention(&q, 1, 1, KvLayer{k.data(), v.data(), 2, 1}, shape, &out);
  EXPECT_FLOAT_EQ(out, 0.25f * 4 + 0.75f * 8);
}

TEST(ReferenceOps, AttentionGqaHeadMapping) {
  // 4 query heads, 2 kv heads: heads 0,1 read kv head 0 (value 1), heads 2,3 read kv head 1 (value 2).
  const AttentionShape shape{4, 2, 1};
  std::vector<float> k = {0, 0}, v = {1, 2};
  const std::vector<float> q = {1, 1, 1, 1};
  std::vector<float> out(4);
  ref::attention(q.data(), 1, 0, KvLayer{k.data(), v.data(), 1, 2}, shape, out.data());
  EXPECT_EQ(out, (std::vector<float>{1, 1, 2, 2}));
}

TEST(ReferenceOps, AddEmbeddingArgmax) {
  std::vector<float> y = {1, 2}, x = {0.5f, -2};
  ref::add(y.data(), x.data(), 2);
  EXPECT_EQ(y, (std::vector<float>{1.5f, 0}));

  const std::vector<uint16_t> table = {f32_to_bf16(1), f32_to_bf16(2), f32_to_bf16(-3), f32_to_bf16(0.5f)};
  const std::vector<int> tokens = {1, 0, 1};
  std::vector<float> out(6);
  ref::embedding(Matrix{DType::BF16, 2, 2, table.data()}, tokens.data(), 3, out.data());
  EXPECT_EQ(out, (std::vector<float>{-3, 0.5f, 1, 2, -3, 0.5f}));

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> v = {nan, 1, 3, 3, nan, 2};
  EXPECT_EQ(ref::argmax(v.data(), 6), 2);
  EXPECT_EQ(ref::argmax(v.data(), 1), 0);
}

TEST(ReferenceBackend, ForwardsToTheTwins) {
  ReferenceBackend b;
  EXPECT_EQ(b.name(), "reference");
  const std::vector<float> w = {1, 2, 3, 4};
  const std::vector<float> x = {1, 1};
  std::vector<float> y(2);
  b.matmul(x.data(), 1, Matrix{DType::F32, 2, 2, w.data()}, nullptr, y.data());
  EXPECT_EQ(y, (std::vector<float>{3, 7}));
  EXPECT_EQ(b.argmax(y.data(), 2), 1);
}

}  // namespace
}  // namespace tessera
