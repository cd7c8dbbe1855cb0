// Shared helpers of the loader tests: where the test models are, scratch directories, files as bytes, and
// checking that a call throws tessera::Error with a message naming the file and the problem.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "engine/core/check.h"

namespace tessera::test {

// $TESSERA_MODELS, else what CTest passes (TESSERA_MODELS_DEFAULT), else the configure-time default.
inline std::string models_dir() {
  if (const char* env = std::getenv("TESSERA_MODELS"); env != nullptr && *env != '\0') return env;
  if (const char* env = std::getenv("TESSERA_MODELS_DEFAULT"); env != nullptr && *env != '\0') return env;
  return TESSERA_MODELS_DIR;
}

// Path of a test model file, or "" (the caller skips) when it is absent.
inline std::string model_file(const std::string& relative) {
  const std::string path = models_dir() + "/" + relative;
  return std::filesystem::is_regular_file(path) ? path : "";
}

#define TESSERA_REQUIRE_MODEL(var, relative)                                                        \
  const std::string var = ::tessera::test::model_file(relative);                                    \
  if (var.empty())                                                                                  \
  GTEST_SKIP() << "test model " << relative << " not found under " << ::tessera::test::models_dir() \
               << " (set TESSERA_MODELS to the shared models folder)"

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tessera-loaders-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

template <typename T>
void append_pod(std::string& out, const T& v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <typename T>
T read_pod(const std::string& bytes, size_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

// Runs f, expecting tessera::Error whose message contains every one of `needles` (e.g. the file and the problem).
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nlacks: " << n;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected tessera::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected tessera::Error, nothing was thrown";
}

}  // namespace tessera::test
