// Options shared by the subcommands (which model, which tokenizer, how many threads) and the code that turns
// them into a loaded model.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "engine/model/weights.h"
#include "engine/runtime/tokenizer.h"

namespace tessera::cli {

struct ModelOptions {
  std::string model;      // checkpoint file or HF directory
  std::string tokenizer;  // optional; found beside the model when empty
  bool dummy_weights = false;
  std::string preset;          // with dummy_weights
  std::string dtype = "bf16";  // dummy weight dtype
  uint64_t dummy_seed = 0;
  int threads = 0;  // 0 = all cores

  // Registers --model/--tokenizer/--dummy-weights/--preset/--dtype/--threads on a subcommand.
  void add_to(CLI::App& app, bool with_tokenizer = true);
  // Throws tessera::Error when the combination makes no sense (no model and no preset, both, ...).
  void validate() const;
};

struct LoadedModel {
  ModelData data;
  std::unique_ptr<Tokenizer> tokenizer;  // null for dummy weights without --tokenizer
  double load_seconds = 0.0;
};

LoadedModel load(const ModelOptions& options, bool need_tokenizer);

// Parses "f32" | "f16" | "bf16".
DType parse_dtype(const std::string& name);

}  // namespace tessera::cli
