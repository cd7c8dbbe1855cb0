#include "engine/core/mapped_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/core/check.h"

namespace tessera {
namespace {

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("tessera_mf_" + std::to_string(::getpid()) + "_" + name);
}

TEST(MappedFile, MapsContents) {
  const auto path = temp_path("data");
  { std::ofstream(path, std::ios::binary) << "hello tessera"; }
  MappedFile f(path.string());
  ASSERT_EQ(f.size(), 13u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.data()), f.size()), "hello tessera");
  MappedFile moved(std::move(f));
  EXPECT_EQ(moved.size(), 13u);
  EXPECT_EQ(f.data(), nullptr);
  std::filesystem::remove(path);
}

TEST(MappedFile, EmptyFileHasNoData) {
  const auto path = temp_path("empty");
  { std::ofstream(path, std::ios::binary); }
  MappedFile f(path.string());
  EXPECT_EQ(f.size(), 0u);
  std::filesystem::remove(path);
}

TEST(MappedFile, MissingFileNamesThePath) {
  try {
    MappedFile f("/nonexistent/tessera/model.bin");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tessera/model.bin"), std::string::npos) << e.what();
  }
}

TEST(MappedFile, DirectoryIsRejected) {
  EXPECT_THROW(MappedFile(std::filesystem::temp_directory_path().string()), Error);
}

}  // namespace
}  // namespace tessera
