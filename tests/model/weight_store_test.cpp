// WeightStore::release_if_unused: what load-time compression relies on to give replaced weights' memory back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/model/weights.h"

namespace tessera {
namespace {

Matrix view(const void* data, int64_t rows, int64_t cols) {
  Matrix m;
  m.data = data;
  m.dtype = DType::F32;
  m.rows = rows;
  m.cols = cols;
  return m;
}

TEST(WeightStore, FreesABufferOnlyWhenNoLiveViewPointsIntoIt) {
  WeightStore store;
  ModelWeights live;
  uint8_t* a = store.allocate(4096);
  uint8_t* b = store.allocate(size_t{4} << 20);  // a mapped buffer
  const size_t total = store.allocated_bytes();
  live.tok_embeddings = view(a, 8, 128);
  live.lm_head = view(b + 1024, 16, 128);  // a view into the middle of b

  EXPECT_EQ(store.release_if_unused(view(a, 8, 128), live), 0u);  // still tok_embeddings
  EXPECT_EQ(store.release_if_unused(view(b, 4, 16), live), 0u);   // lm_head points into the same buffer
  EXPECT_EQ(store.allocated_bytes(), total);

  live.lm_head = live.tok_embeddings;
  EXPECT_EQ(store.release_if_unused(view(b, 4, 16), live), size_t{4} << 20);
  EXPECT_EQ(store.allocated_bytes(), total - (size_t{4} << 20));
  EXPECT_EQ(store.release_if_unused(view(b, 4, 16), live), 0u);             // already given back
  EXPECT_EQ(static_cast<const float*>(live.tok_embeddings.data)[0], 0.0f);  // a is untouched
}

TEST(WeightStore, DropsTheResidentPagesOfAReplacedFileViewAndTheFileStillReads) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("tessera_weight_store_" + std::to_string(::getpid()))).string();
  std::vector<float> values(256 * 1024);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i);
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(values.data(), sizeof(float), values.size(), f), values.size());
    std::fclose(f);
  }
  WeightStore store;
  const MappedFile& file = store.add_file(MappedFile(path));
  std::filesystem::remove(path);
  const auto* data = reinterpret_cast<const float*>(file.data());
  ModelWeights live;
  // Two tensors: the first half and the second half of the file.
  const Matrix first = view(data, 512, 256), second = view(data + 512 * 256, 512, 256);
  live.tok_embeddings = first;
  live.lm_head = second;
  EXPECT_EQ(store.release_if_unused(first, live), 0u);
  live.tok_embeddings = second;
  EXPECT_EQ(store.release_if_unused(first, live), first.bytes());  // page-aligned here: every page of it
  EXPECT_EQ(data[12345], 12345.0f);                                // read from the file again
  EXPECT_EQ(store.release_if_unused(second, live), 0u);
}

}  // namespace
}  // namespace tessera
