#include "loaders/model_loader.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "engine/core/check.h"
#include "loaders/hf_model.h"
#include "loaders/llama2c_checkpoint.h"
#include "loaders/quantized_checkpoint.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;

// Formats we recognise but do not load, so the user gets a pointed message instead of a size mismatch.
void reject_foreign_file(const std::string& path) {
  if (path.ends_with(".safetensors") || path.ends_with("config.json"))
    throw Error(path + ": pass the Hugging Face model directory (with config.json), not a file inside it");
  char magic[4] = {};
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (f && std::fread(magic, 1, 4, f.get()) == 4 && std::memcmp(magic, "GGUF", 4) == 0)
    throw Error(path + ": GGUF files are not supported yet");
}

}  // namespace

ModelData load_model(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw Error(path + ": no such file or directory");
  if (fs::is_directory(st)) {
    // Tessera's own (quantized) checkpoint: config.json with "tessera_format".
    if (is_quantized_checkpoint(path)) return load_quantized_checkpoint(path);
    if (!fs::exists(fs::path(path) / "config.json"))
      throw Error(path + ": directory has no config.json (expected a Hugging Face model directory)");
    return load_hf_model(path);
  }
  reject_foreign_file(path);
  return load_llama2c_checkpoint(path);  // tells legacy from "ak42" version 1 by the magic
}

}  // namespace tessera
