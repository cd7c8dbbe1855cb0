// Host-side logic of the CUDA backend, checked without a GPU: the device memory arena's bookkeeping and the
// repacking of every weight format into the device layout (every element must decode to exactly the value the
// reference dequantizer gives for the host layout).
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "engine/backend/cuda/device_layout.h"
#include "engine/backend/cuda/device_pool.h"
#include "engine/backend/cuda/weight_upload.h"
#include "quant/quant_traits.h"
#include "test_util.h"

namespace tessera {
namespace {

using cuda::ArenaAllocator;

TEST(CudaArena, AlignsFirstFitAndCoalesces) {
  ArenaAllocator a(4096, 256);
  const auto x = a.allocate(1);
  const auto y = a.allocate(300);
  const auto z = a.allocate(256);
  ASSERT_TRUE(x && y && z);
  EXPECT_EQ(*x, 0u);
  EXPECT_EQ(*y, 256u);  // 1 byte takes one 256-byte unit
  EXPECT_EQ(*z, 768u);  // 300 bytes take two
  EXPECT_EQ(a.used(), 1024u);
  a.free(*y);
  EXPECT_EQ(*a.allocate(512), 256u);  // the hole is reused first-fit
  a.free(256);
  a.free(*x);
  a.free(*z);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.largest_free(), 4096u);  // every range merged back into one
  EXPECT_EQ(*a.allocate(4096), 0u);
}

TEST(CudaArena, ReportsExhaustion) {
  ArenaAllocator a(1024, 256);
  EXPECT_FALSE(a.allocate(2048).has_value());
  const auto x = a.allocate(512), y = a.allocate(256), z = a.allocate(256);
  ASSERT_TRUE(x && y && z);
  EXPECT_FALSE(a.allocate(1).has_value());
  a.free(*x);
  a.free(*z);
  EXPECT_EQ(a.largest_free(), 512u);  // two holes that are not neighbours stay apart
  EXPECT_FALSE(a.allocate(768).has_value());
  a.free(*y);
  EXPECT_EQ(a.largest_free(), 1024u);
}

TEST(CudaArena, RandomAllocFreeKeepsAccounting) {
  std::mt19937 rng(7);
  ArenaAllocator a(1 << 20, 256);
  std::vector<std::pair<size_t, size_t>> live;  // offset, rounded size
  for (int step = 0; step < 2000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const size_t bytes = 1 + rng() % 20000;
      if (const auto off = a.allocate(bytes)) {
        const size_t rounded = (bytes + 255) / 256 * 256;
        for (const auto& [o, s] : live) ASSERT_TRUE(*off + rounded <= o || o + s <= *off) << "overlap";
        ASSERT_EQ(*off % 256, 0u);
        live.emplace_back(*off, rounded);
      }
    } else {
      const size_t i = rng() % live.size();
      a.free(live[i].first);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    size_t used = 0;
    for (const auto& l : live) used += l.second;
    ASSERT_EQ(a.used(), used);
  }
}

struct FormatCase {
  DType dtype;
  int group;
};

class CudaLayoutTest : public ::testing::TestWithParam<FormatCase> {};

// Ragged shapes: columns that end inside a group, a 16-byte unit and a 2:4 block.
TEST_P(CudaLayoutTest, RepackDecodesToReferenceValues) {
  const auto [dtype, group] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(static_cast<int>(dtype) * 131 + group));
  // 1000 and 2500 columns: rows of codes with full lane-interleaved 512-byte runs and a tail after them.
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{
           {1, 1}, {3, 37}, {5, 64}, {4, 200}, {2, 129}, {2, 1000}, {2, 2500}, {17, 200}, {33, 96}}) {
    test::OwnedMatrix w = test::any_matrix(rng, dtype, rows, cols, group);
    const cuda::RepackedMatrix rp = cuda::repack_for_device(w.m);
    const cuda::DeviceLayout& l = rp.layout;
    ASSERT_EQ(rp.bytes.size(), static_cast<size_t>(l.total_bytes()));
    ASSERT_FALSE(is_sparse24(l.dtype));
    if (l.tiled()) {
      EXPECT_EQ(l.codes_bytes(), l.row_tiles() * l.kblocks() * 512);
      EXPECT_EQ(l.scales_offset() % 16, 0);
    } else if (is_quantized(l.dtype)) {
      // 16-byte aligned rows of codes and planes: what the kernels' vector loads rely on.
      EXPECT_EQ(l.code_row_bytes() % 16, 0);
      EXPECT_EQ(l.scales_offset() % 16, 0);
    }
    std::vector<float> ref(static_cast<size_t>(cols));
    for (int r = 0; r < rows; ++r) {
      quant::dequantize_matrix_row(w.m, r, ref.data());
      for (int c = 0; c < cols; ++c) {
        ASSERT_EQ(cuda::device_layout_element(l, rp.bytes.data(), r, c), ref[static_cast<size_t>(c)])
            << dtype_name(dtype) << " g" << group << " " << rows << "x" << cols << " at (" << r << ", " << c << ")";
      }
    }
  }
}

// The lane-interleaved order of code words is a permutation of each row's words, identity after the last full
// run, and puts logical words L, L + 32, L + 64, L + 96 of a run in lane L's 16 bytes.
TEST(CudaLayout, CodeWordPositionsPermuteEachRow) {
  for (const int64_t words : {4, 124, 128, 132, 256, 320, 1376}) {
    std::vector<int> seen(static_cast<size_t>(words), 0);
    for (int64_t w = 0; w < words; ++w) {
      const int64_t p = cuda::code_word_position(words, w);
      ASSERT_TRUE(p >= 0 && p < words) << words << " words, word " << w;
      ++seen[static_cast<size_t>(p)];
      if (w >= words / 128 * 128) {
        EXPECT_EQ(p, w);
      } else {
        const int64_t run = w / 128 * 128, j = w % 128;
        EXPECT_EQ(p, run + 4 * (j % 32) + j / 32) << words << " words, word " << w;
      }
    }
    for (const int k : seen) ASSERT_EQ(k, 1) << words << " words";
  }
}

// The tiled 4-bit layout against the operand fragments of mma.m16n8k16 (PTX ISA): register a_m of lane 4g + t
// holds row g + 8 (m & 1) at k slots 2t + 8 (m >> 1) and one more (low, high half); b0 holds k slots 2t, 2t + 1
// and b1 2t + 8, 2t + 9 of the lane's activation row. mma_q4.cu fills k-tile j of a block with each lane's
// columns 16t + 4j + [0, 4): b0 = x at the first two, b1 = x at the last two, and builds a_m from nibbles m (low)
// and m + 4 (high) of the lane's word j. So a_m must hold row g + 8 (m & 1) at the columns of b_(m >> 1). Every
// code of the padded tile grid has its own position.
TEST(CudaLayout, TiledPositionsAreMmaFragments) {
  cuda::DeviceLayout l;
  l.dtype = DType::Q4;
  l.rows = 40;
  l.cols = 200;
  l.group = 32;
  ASSERT_EQ(l.row_tiles(), 3);
  ASSERT_EQ(l.kblocks(), 4);
  std::vector<int> seen(static_cast<size_t>(l.codes_bytes() * 2), 0);
  for (int64_t r = 0; r < l.row_tiles() * 16; ++r) {
    for (int64_t c = 0; c < l.kblocks() * 64; ++c) {
      int64_t word;
      int shift;
      cuda::tiled_code_position(l, r, c, &word, &shift);
      ASSERT_TRUE(word >= 0 && word < l.codes_bytes() / 4 && shift % 4 == 0 && shift < 32);
      ++seen[static_cast<size_t>(word * 8 + shift / 4)];
    }
  }
  for (const int k : seen) ASSERT_EQ(k, 1);
  for (int64_t rt = 0; rt < l.row_tiles(); ++rt) {
    for (int64_t kt = 0; kt < l.kblocks() * 4; ++kt) {
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const int64_t word = ((rt * l.kblocks() + kt / 4) * 32 + lane) * 4 + kt % 4;
        for (int m = 0; m < 4; ++m) {
          const int64_t r = rt * 16 + g + 8 * (m & 1), c = kt / 4 * 64 + 16 * t + 4 * (kt % 4) + 2 * (m >> 1);
          int64_t w_lo, w_hi;
          int s_lo, s_hi;
          cuda::tiled_code_position(l, r, c, &w_lo, &s_lo);
          cuda::tiled_code_position(l, r, c + 1, &w_hi, &s_hi);
          EXPECT_EQ(w_lo, word);
          EXPECT_EQ(w_hi, word);
          EXPECT_EQ(s_lo, 4 * m);
          EXPECT_EQ(s_hi, 4 * (m + 4));
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllFormats, CudaLayoutTest,
                         ::testing::Values(FormatCase{DType::F32, 0}, FormatCase{DType::F16, 0},
                                           FormatCase{DType::BF16, 0}, FormatCase{DType::Q8, 0},
                                           FormatCase{DType::Q4, 32}, FormatCase{DType::Q4, 64},
                                           FormatCase{DType::Q4, 128}, FormatCase{DType::Q4A, 32},
                                           FormatCase{DType::Q4A, 128}, FormatCase{DType::NF4, 64},
                                           FormatCase{DType::S24Q8, 0}, FormatCase{DType::S24Q4, 0}),
                         [](const auto& info) {
                           std::string s(dtype_name(info.param.dtype));
                           for (char& ch : s) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return s + "_g" + std::to_string(info.param.group);
                         });

TEST(CudaLayout, SparseFormatsBecomeTheirDenseTwins) {
  std::mt19937 rng(3);
  EXPECT_EQ(cuda::repack_for_device(test::any_matrix(rng, DType::S24Q8, 2, 70, 0).m).layout.dtype, DType::Q8);
  const auto s4 = cuda::repack_for_device(test::any_matrix(rng, DType::S24Q4, 2, 70, 0).m).layout;
  EXPECT_EQ(s4.dtype, DType::Q4);
  EXPECT_EQ(s4.group, 64);
}

TEST(CudaLayout, RefusesUnsupportedGroup) {
  std::vector<uint8_t> bytes(64);
  const Matrix m{DType::Q4, 1, 16, bytes.data(), 16};
  EXPECT_THROW(cuda::repack_for_device(m), Error);
}

}  // namespace
}  // namespace tessera
